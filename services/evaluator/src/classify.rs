//! `inception classify`: top-k labels of single images with a checkpoint's
//! moving-average weights and the label names stored in it.

use inception_core::{keys, Store};
use inception_model::checkpoint::{self, CheckpointMeta};
use inception_model::precision::Precision;
use inception_model::{images_to_input, InceptionV3, Mode};
use serde::Serialize;
use std::path::Path;
use tch::{nn::VarStore, Device, Kind, Tensor};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Prediction {
    pub label: String,
    pub index: i64,
    pub probability: f64,
}

/// The result for one file: predictions, or why there are none.
#[derive(Debug, Clone, Serialize)]
pub struct Classified {
    pub file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predictions: Option<Vec<Prediction>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The metadata key that `checkpoint` names: `latest`, `best`, or a key.
pub async fn metadata_key(store: &Store, run: &str, checkpoint: &str) -> Result<String, String> {
    match checkpoint {
        "latest" => checkpoint::read_pointer(store, run)
            .await
            .map_err(|e| e.to_string())?
            .map(|p| p.metadata)
            .ok_or_else(|| format!("run {run:?} has no checkpoint ({} not found)", keys::checkpoint_pointer(run))),
        "best" => {
            checkpoint::read_best(store, run).await.map_err(|e| e.to_string())?.map(|p| p.metadata).ok_or_else(|| {
                format!(
                    "run {run:?} has no best checkpoint yet ({} not found: the evaluator writes it)",
                    keys::checkpoint_best(run)
                )
            })
        }
        key => Ok(key.to_string()),
    }
}

pub struct Classifier {
    model: InceptionV3,
    _vs: VarStore,
    meta: CheckpointMeta,
    device: Device,
    /// The evaluation's central crop (`augment.eval_central_fraction`).
    central_fraction: f64,
    /// The forward pass's arithmetic (`eval.precision`, resolved).
    precision: Precision,
}

impl Classifier {
    /// `checkpoint`: `latest` (the run's `checkpoint` pointer), `best` (the
    /// run's `best` pointer, written by the evaluator) or the store key of a
    /// checkpoint's `.json` metadata.
    pub async fn load(store: &Store, run: &str, checkpoint: &str, device: Device) -> Result<Self, String> {
        let key = metadata_key(store, run, checkpoint).await?;
        let (meta, tensors) = checkpoint::read(store, &key).await.map_err(|e| e.to_string())?;
        let vs = VarStore::new(device);
        let (model, _) = checkpoint::inference_model(&vs, &meta.model, &tensors).map_err(|e| format!("{key}: {e}"))?;
        let central_fraction = inception_vision::transform::EVAL_CENTRAL_FRACTION;
        Ok(Self { model, _vs: vs, meta, device, central_fraction, precision: Precision::Fp32 })
    }

    /// Runs the forward pass in `precision` (fp32 until set).
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// Crops the central `fraction` of each side instead of the original's 0.875.
    pub fn with_central_fraction(mut self, fraction: f64) -> Self {
        self.central_fraction = fraction;
        self
    }

    pub fn meta(&self) -> &CheckpointMeta {
        &self.meta
    }

    /// Label name of an output index (0 is the background class).
    pub fn label(&self, index: i64) -> String {
        crate::scores::label_name(&self.meta.labels, index)
    }

    /// Classifies one image file with the evaluation preprocessing.
    pub fn classify_file(&self, path: &Path, top_k: usize, max_pixels: u64) -> Result<Vec<Prediction>, String> {
        let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
        let decoded = inception_vision::decode_rgb(&bytes, max_pixels).map_err(|e| e.to_string())?;
        let size = self.meta.model.image_size;
        let pixels = inception_vision::eval_image_with(&decoded.image, size as u32, self.central_fraction);
        let input = images_to_input(&Tensor::from_slice(&pixels).view([1, size, size, 3]).to_device(self.device));
        let (logits, _) = tch::no_grad(|| self.model.forward_in(self.precision, &input, Mode::Eval));
        let probs = logits.softmax(-1, Kind::Float).squeeze_dim(0);
        let k = top_k.clamp(1, self.meta.model.num_classes as usize) as i64;
        let (values, indices) = probs.topk(k, -1, true, true);
        let values: Vec<f64> =
            Vec::<f32>::try_from(&values).map_err(|e| e.to_string())?.into_iter().map(f64::from).collect();
        let indices: Vec<i64> = Vec::<i64>::try_from(&indices).map_err(|e| e.to_string())?;
        Ok(indices
            .into_iter()
            .zip(values)
            .map(|(index, probability)| Prediction { label: self.label(index), index, probability })
            .collect())
    }

    /// Classifies every file; a bad file gets its error, the rest are still classified.
    pub fn classify_files(&self, files: &[std::path::PathBuf], top_k: usize, max_pixels: u64) -> Vec<Classified> {
        files
            .iter()
            .map(|f| {
                let file = f.display().to_string();
                match self.classify_file(f, top_k, max_pixels) {
                    Ok(p) => Classified { file, predictions: Some(p), error: None },
                    Err(e) => Classified { file, predictions: None, error: Some(e) },
                }
            })
            .collect()
    }
}
