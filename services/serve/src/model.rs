//! One served checkpoint: the network with its moving-average weights, its
//! labels, and the evaluation's preprocessing. Loaded whole (and run once)
//! before it is put into service.

use inception_model::checkpoint::{self, CheckpointMeta};
use inception_model::precision::Precision;
use inception_model::{catch_torch, images_to_input, InceptionV3, Mode, TorchFailure};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Mutex;
use tch::{nn::VarStore, Device, Kind, Tensor};

use crate::ServeError;

/// One label of an image's top-k (never the background class, index 0).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Prediction {
    /// The label's name, from the checkpoint.
    pub label: String,
    /// Its output index (1-based: 0 is the background).
    pub index: i64,
    /// Its softmax probability over every output.
    pub probability: f64,
}

/// Why one image cannot be classified.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// More pixels than `pipeline.max_image_pixels`.
    #[error("{0} (pipeline.max_image_pixels)")]
    TooLarge(inception_vision::VisionError),
    /// Not an image, or a broken one.
    #[error("{0}")]
    Unreadable(inception_vision::VisionError),
}

/// The network and the variables it reads; only the batch worker runs it.
struct Net {
    model: InceptionV3,
    _vs: VarStore,
}

/// A checkpoint in service.
pub struct ServedModel {
    /// Its global step.
    pub step: u64,
    /// The store key of its metadata.
    pub key: String,
    labels: Vec<String>,
    image_size: u32,
    num_classes: i64,
    device: Device,
    /// The arithmetic of its forward pass (`serve.precision`, resolved).
    pub precision: Precision,
    central_fraction: f64,
    // A mutex makes the model shareable between threads (tensors are Send,
    // not Sync); only the batch worker locks it, so it is never contended.
    net: Mutex<Net>,
}

impl ServedModel {
    /// Builds the network of `meta`, loads `tensors` (the moving averages
    /// where present) and runs one image through it in `precision`, so that
    /// a checkpoint that cannot serve is refused before it replaces one that
    /// can.
    pub fn build(
        key: &str,
        meta: CheckpointMeta,
        tensors: HashMap<String, Tensor>,
        device: Device,
        precision: Precision,
        central_fraction: f64,
    ) -> Result<Self, ServeError> {
        let failed = |message: String| ServeError::Checkpoint { key: key.to_string(), message };
        let vs = VarStore::new(device);
        let (model, _) = checkpoint::inference_model(&vs, &meta.model, &tensors).map_err(|e| failed(e.to_string()))?;
        let served = Self {
            step: meta.step,
            key: key.to_string(),
            labels: meta.labels,
            image_size: meta.model.image_size as u32,
            num_classes: meta.model.num_classes,
            device,
            precision,
            central_fraction,
            net: Mutex::new(Net { model, _vs: vs }),
        };
        let blank = vec![0u8; served.pixels_per_image()];
        served.classify(&[&blank], 1).map_err(|f| failed(format!("a trial image failed: {}", f.message)))?;
        Ok(served)
    }

    /// Bytes of one preprocessed image (`image_size`² RGB).
    fn pixels_per_image(&self) -> usize {
        let side = self.image_size as usize;
        side * side * 3
    }

    /// The most labels a top-k can have (every output but the background).
    pub fn labelled_outputs(&self) -> usize {
        usize::try_from(self.num_classes - 1).unwrap_or(0)
    }

    /// Decodes `bytes` (refusing more than `max_pixels`) and applies the
    /// evaluation's central crop and resize to this model's input size.
    pub fn preprocess(&self, bytes: &[u8], max_pixels: u64) -> Result<Vec<u8>, ImageError> {
        let decoded = inception_vision::decode_rgb(bytes, max_pixels).map_err(|e| match e {
            e @ inception_vision::VisionError::TooLarge { .. } => ImageError::TooLarge(e),
            e => ImageError::Unreadable(e),
        })?;
        Ok(inception_vision::eval_image_with(&decoded.image, self.image_size, self.central_fraction))
    }

    /// The top `k` labels of each preprocessed image, in one forward pass
    /// in this model's precision. Autocast is entered on the calling thread
    /// (the batch worker) by `forward_in`, around the pass only; the logits
    /// come back in fp32 and the softmax runs in fp32.
    pub fn classify(&self, images: &[&[u8]], k: usize) -> Result<Vec<Vec<Prediction>>, TorchFailure> {
        let size = i64::from(self.image_size);
        let n = images.len();
        let k = k.clamp(1, self.labelled_outputs().max(1));
        let mut batch = Vec::with_capacity(n * self.pixels_per_image());
        for image in images {
            if image.len() != self.pixels_per_image() {
                return Err(TorchFailure::from_message("an image preprocessed for another model"));
            }
            batch.extend_from_slice(image);
        }
        let (values, indices) = catch_torch(|| {
            let input = Tensor::from_slice(&batch).view([n as i64, size, size, 3]).to_device(self.device);
            let input = images_to_input(&input);
            let net = self.net.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let (logits, _) = tch::no_grad(|| net.model.forward_in(self.precision, &input, Mode::Eval));
            let probabilities = logits.softmax(-1, Kind::Float).to_device(Device::Cpu);
            // Index 0 is the background class: never a prediction.
            let (values, indices) = probabilities.narrow(1, 1, self.num_classes - 1).topk(k as i64, -1, true, true);
            (values.flatten(0, -1), indices.flatten(0, -1))
        })?;
        let failure = |e: tch::TchError| TorchFailure::from_message(&e.to_string());
        let values = Vec::<f32>::try_from(&values).map_err(failure)?;
        let indices = Vec::<i64>::try_from(&indices).map_err(failure)?;
        Ok(values
            .chunks(k)
            .zip(indices.chunks(k))
            .map(|(values, indices)| {
                values
                    .iter()
                    .zip(indices)
                    .map(|(&p, &i)| Prediction { label: self.label(i + 1), index: i + 1, probability: f64::from(p) })
                    .collect()
            })
            .collect())
    }

    /// The name of output `index` (1-based label).
    fn label(&self, index: i64) -> String {
        usize::try_from(index - 1)
            .ok()
            .and_then(|i| self.labels.get(i))
            .cloned()
            .unwrap_or_else(|| format!("label {index}"))
    }
}
