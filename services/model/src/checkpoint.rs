//! Checkpoints: a safetensors file of named tensors (model variables with
//! torchvision names, optimizer slots under `optimizer/…`) and a JSON file of
//! metadata (step, labels, model shape). The JSON is written after the
//! weights, and the run's `checkpoint` pointer after both, so a reader that
//! follows the pointer or an announcement never finds half a checkpoint.
//! The evaluator keeps a second pointer, `best` ([`BestPointer`]), at the
//! run's best evaluated checkpoint; the trainer never prunes that one.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use tch::nn::VarStore;
use tch::Tensor;

use crate::config::ModelConfig;
use crate::inception::InceptionV3;
use inception_core::store::StoreError;
use inception_core::{keys, Store};

pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub format_version: u32,
    pub run: String,
    /// Global step: optimizer updates applied.
    pub step: u64,
    /// Label names; label i+1 is `labels[i]`, 0 is background.
    pub labels: Vec<String>,
    pub model: ModelConfig,
    /// Batch-norm moving-average updates so far (for zero-debiasing).
    pub bn_updates: u64,
    pub examples_seen: u64,
    /// Object key of the safetensors file.
    pub weights: String,
    pub created_unix: i64,
    /// What the checkpoint was trained on, and from which checkpoint
    /// (absent from checkpoints written before lineage was recorded).
    #[serde(default)]
    pub lineage: Lineage,
}

/// Where a checkpoint comes from: its parent checkpoint, and the examples
/// it was trained on by shard, since the parent and since the first
/// checkpoint of its line. Counts are examples (images in trained batches,
/// each draw counted: an image drawn twice counts twice), summed from the
/// batch messages (`BatchReady.shards`). Every list is bounded (see
/// [`inception_core::limits`]): what does not fit is counted, unnamed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Lineage {
    /// Metadata key of the checkpoint this one continued from (resumed, or
    /// the previous one of the same trainer); none for a first checkpoint.
    pub parent: Option<String>,
    /// The parent's step.
    pub parent_step: Option<u64>,
    /// Examples trained on since the parent.
    pub examples: u64,
    /// Of those, by shard, in the order first drawn.
    pub shards: Vec<ShardCount>,
    /// Examples since the parent whose shard is not named (batches from
    /// workers that do not say, or shards beyond the list's bound).
    pub unattributed_examples: u64,
    /// Examples trained on since the first checkpoint of the line (this
    /// one's and every ancestor's, including the parent's).
    pub total_examples: u64,
    /// Of those, by shard.
    pub total_shards: Vec<ShardCount>,
    /// As `unattributed_examples`, since the first checkpoint.
    pub total_unattributed_examples: u64,
    /// The line's earlier checkpoints, oldest first (the parent last): at
    /// most [`inception_core::limits::MAX_LINEAGE_ANCESTORS`].
    pub ancestors: Vec<Ancestor>,
    /// Ancestors older than the first listed one, dropped for the bound.
    pub ancestors_left_out: u64,
}

/// Examples drawn from one shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardCount {
    /// The shard's key (`datasets/<name>/train-…`).
    pub shard: String,
    pub examples: u64,
}

/// An earlier checkpoint of a line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ancestor {
    pub step: u64,
    /// Its metadata key (it may have been pruned since).
    pub metadata: String,
    /// Examples it was trained on since its own parent.
    pub examples: u64,
}

/// The most a checkpoint's metadata file may have: room for
/// [`inception_core::limits::MAX_NUM_CLASSES`] label names of over 300 bytes each.
pub const MAX_METADATA_BYTES: u64 = 32 << 20;

impl CheckpointMeta {
    /// Checks what a model will be built from: the model's shape within its
    /// bounds ([`ModelConfig::validate`]) and one label name per output but
    /// the background. Called before any weight is read.
    pub fn validate(&self) -> Result<(), String> {
        self.model.validate()?;
        if self.labels.len() as u64 + 1 != self.model.num_classes as u64 {
            return Err(format!(
                "{} labels for a model of {} outputs (labels + background)",
                self.labels.len(),
                self.model.num_classes
            ));
        }
        Ok(())
    }
}

/// The `checkpoint` pointer object: which metadata file is the latest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointPointer {
    pub step: u64,
    pub metadata: String,
    /// Older checkpoints still kept, oldest first.
    pub all: Vec<String>,
}

/// The `best` pointer object: the run's evaluated checkpoint with the
/// highest precision@1, ties broken by the lower validation loss. Written
/// whole by the evaluator (one put, so readers see the old or the new one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestPointer {
    pub step: u64,
    /// Key of the checkpoint's metadata (`model.ckpt-<step>.json`).
    pub metadata: String,
    /// Key of the checkpoint's tensors (`model.ckpt-<step>.safetensors`).
    pub weights: String,
    pub precision_at_1: f64,
    /// Mean cross-entropy of the logits on the validation set.
    pub validation_loss: f64,
}

impl BestPointer {
    /// Whether an evaluation scoring `precision_at_1` and `validation_loss`
    /// is better than this one: a higher precision@1, or the same precision@1
    /// with a lower validation loss. An equal one is not better, so
    /// evaluating the same checkpoint again changes nothing.
    pub fn is_beaten_by(&self, precision_at_1: f64, validation_loss: f64) -> bool {
        precision_at_1 > self.precision_at_1
            || (precision_at_1 == self.precision_at_1 && validation_loss < self.validation_loss)
    }

    /// Whether `metadata_key` is the checkpoint this points at.
    pub fn points_at(&self, metadata_key: &str) -> bool {
        metadata_key == self.metadata || step_of(metadata_key) == Some(self.step)
    }
}

/// The `promoted` pointer object: the run's checkpoint to serve, moved by
/// the evaluator's promotion gate. The same JSON as [`BestPointer`], plus
/// when it was promoted and what it replaced; written whole with one put.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromotedPointer {
    pub step: u64,
    /// Key of the checkpoint's metadata (`model.ckpt-<step>.json`).
    pub metadata: String,
    /// Key of the checkpoint's tensors (`model.ckpt-<step>.safetensors`).
    pub weights: String,
    pub precision_at_1: f64,
    /// Mean cross-entropy of the logits on the validation set.
    pub validation_loss: f64,
    /// Validation examples of the evaluation that promoted it.
    #[serde(default)]
    pub examples: u64,
    /// When it was promoted.
    #[serde(default)]
    pub promoted_unix: i64,
    /// The step of the checkpoint it replaced; none for the first.
    #[serde(default)]
    pub previous_step: Option<u64>,
    /// Key of the decision that promoted it (`promotions/step-<step>.json`).
    #[serde(default)]
    pub decision: String,
}

impl PromotedPointer {
    /// Whether `metadata_key` is the checkpoint this points at.
    pub fn points_at(&self, metadata_key: &str) -> bool {
        metadata_key == self.metadata || step_of(metadata_key) == Some(self.step)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint tensors: {0}")]
    Tensors(String),
    #[error("checkpoint metadata: {0}")]
    Metadata(String),
    #[error("checkpoint {key}: {message}")]
    Corrupt { key: String, message: String },
    #[error(transparent)]
    Store(#[from] inception_core::store::StoreError),
    #[error("checkpoint does not fit the model: missing {missing:?}; wrong shape {mismatched:?}")]
    Mismatch { missing: Vec<String>, mismatched: Vec<String> },
}

/// Serialises named tensors (moved to CPU) to safetensors bytes.
pub fn tensors_to_bytes(named: &[(String, Tensor)]) -> Result<Vec<u8>, CheckpointError> {
    let err = |e: String| CheckpointError::Tensors(e);
    let dir = tempfile::tempdir().map_err(|e| err(e.to_string()))?;
    let path = dir.path().join("t.safetensors");
    let cpu: Vec<(String, Tensor)> =
        named.iter().map(|(n, t)| (n.clone(), t.to_device(tch::Device::Cpu).contiguous())).collect();
    Tensor::write_safetensors(&cpu, &path).map_err(|e| err(e.to_string()))?;
    std::fs::read(&path).map_err(|e| err(e.to_string()))
}

pub fn tensors_from_bytes(bytes: &[u8]) -> Result<HashMap<String, Tensor>, CheckpointError> {
    let err = |e: String| CheckpointError::Tensors(e);
    let dir = tempfile::tempdir().map_err(|e| err(e.to_string()))?;
    let path = dir.path().join("t.safetensors");
    std::fs::write(&path, bytes).map_err(|e| err(e.to_string()))?;
    Ok(Tensor::read_safetensors(&path).map_err(|e| err(e.to_string()))?.into_iter().collect())
}

/// Copies `tensors` into the variables of `vs` by name. Every variable must
/// be present with its shape; extra tensors are returned (unexpected keys).
pub fn load_into(vs: &VarStore, tensors: &HashMap<String, Tensor>) -> Result<Vec<String>, CheckpointError> {
    let vars = vs.variables();
    let mut missing = Vec::new();
    let mut mismatched = Vec::new();
    for (name, var) in &vars {
        match tensors.get(name) {
            None => missing.push(name.clone()),
            Some(t) if t.size() != var.size() => mismatched.push(format!("{name}: {:?} vs {:?}", t.size(), var.size())),
            Some(_) => {}
        }
    }
    if !missing.is_empty() || !mismatched.is_empty() {
        missing.sort();
        mismatched.sort();
        return Err(CheckpointError::Mismatch { missing, mismatched });
    }
    tch::no_grad(|| {
        for (name, var) in &vars {
            let mut v = var.shallow_clone();
            v.copy_(&tensors[name]);
        }
    });
    let mut unexpected: Vec<String> = tensors.keys().filter(|k| !vars.contains_key(*k)).cloned().collect();
    unexpected.sort();
    Ok(unexpected)
}

/// Reads a run's `checkpoint` pointer; `None` when the run has none yet.
pub async fn read_pointer(store: &Store, run: &str) -> Result<Option<CheckpointPointer>, CheckpointError> {
    read_json_if_any(store, keys::checkpoint_pointer(run)).await
}

/// Reads a run's `best` pointer; `None` when no evaluation has written one yet.
pub async fn read_best(store: &Store, run: &str) -> Result<Option<BestPointer>, CheckpointError> {
    read_json_if_any(store, keys::checkpoint_best(run)).await
}

/// Reads a run's `promoted` pointer; `None` when nothing was promoted yet.
pub async fn read_promoted(store: &Store, run: &str) -> Result<Option<PromotedPointer>, CheckpointError> {
    read_json_if_any(store, keys::checkpoint_promoted(run)).await
}

/// Reads a checkpoint's metadata alone (no weights), within
/// [`MAX_METADATA_BYTES`], not validated against a model.
pub async fn read_meta(store: &Store, metadata_key: &str) -> Result<CheckpointMeta, CheckpointError> {
    let corrupt = |message: String| CheckpointError::Corrupt { key: metadata_key.to_string(), message };
    let bytes = store.get_at_most(metadata_key, MAX_METADATA_BYTES).await.map_err(|e| match e {
        too_large @ StoreError::TooLarge { .. } => corrupt(too_large.to_string()),
        other => other.into(),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))
}

/// A JSON object of the store; `None` when there is none under `key`.
async fn read_json_if_any<T: serde::de::DeserializeOwned>(
    store: &Store,
    key: String,
) -> Result<Option<T>, CheckpointError> {
    match store.get(&key).await {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| CheckpointError::Corrupt { key, message: e.to_string() }),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Reads a checkpoint's metadata, checks it ([`CheckpointMeta::validate`]),
/// then reads its tensors: metadata out of bounds is refused before any
/// weight is read or model built.
pub async fn read(
    store: &Store,
    metadata_key: &str,
) -> Result<(CheckpointMeta, HashMap<String, Tensor>), CheckpointError> {
    let corrupt = |key: &str, message: String| CheckpointError::Corrupt { key: key.to_string(), message };
    let bytes = store.get_at_most(metadata_key, MAX_METADATA_BYTES).await.map_err(|e| match e {
        too_large @ StoreError::TooLarge { .. } => corrupt(metadata_key, too_large.to_string()),
        other => other.into(),
    })?;
    let meta: CheckpointMeta = serde_json::from_slice(&bytes).map_err(|e| corrupt(metadata_key, e.to_string()))?;
    meta.validate().map_err(|e| corrupt(metadata_key, e))?;
    let bound = max_weights_bytes(&meta.model);
    let bytes = store.get_at_most(&meta.weights, bound).await.map_err(|e| match e {
        too_large @ StoreError::TooLarge { .. } => corrupt(&meta.weights, format!("{too_large} (for its model)")),
        other => other.into(),
    })?;
    let tensors = tensors_from_bytes(&bytes).map_err(|e| corrupt(&meta.weights, e.to_string()))?;
    Ok((meta, tensors))
}

/// Room for a weights file's safetensors header (names and shapes of about
/// 1,500 tensors take well under 1 MiB).
const WEIGHTS_HEADER_BYTES: u64 = 16 << 20;

/// The largest weights file a checkpoint of `cfg` can have: every variable
/// (counted on the model itself), its moving average and two optimizer
/// slots, in fp32, plus the header. A larger object is refused from its
/// size, before it is read.
pub fn max_weights_bytes(cfg: &ModelConfig) -> u64 {
    let vs = VarStore::new(tch::Device::Cpu);
    let _ = tch::no_grad(|| crate::inception::InceptionV3::new(&vs.root(), cfg));
    let elements: i64 = vs.variables().values().map(Tensor::numel).map(|n| n as i64).sum();
    (elements.max(0) as u64).saturating_mul(4 * 4).saturating_add(WEIGHTS_HEADER_BYTES)
}

/// Loads a checkpoint for inference: the moving averages of the weights
/// (`ema/<name>`) where the checkpoint has them, as the original's evaluator
/// restores `…/ExponentialMovingAverage`, else the raw variables. Returns
/// whether averages were used.
pub fn load_for_inference(vs: &VarStore, tensors: &HashMap<String, Tensor>) -> Result<bool, CheckpointError> {
    let names: Vec<String> = vs.variables().into_keys().collect();
    let use_ema = names.iter().all(|n| tensors.contains_key(&format!("ema/{n}")));
    if !use_ema {
        load_into(vs, tensors)?;
        return Ok(false);
    }
    let averaged: HashMap<String, Tensor> =
        names.into_iter().map(|n| (n.clone(), tensors[&format!("ema/{n}")].shallow_clone())).collect();
    load_into(vs, &averaged)?;
    Ok(true)
}

/// The network of `cfg` on `vs`, ready for inference: the checkpoint's
/// weights as [`load_for_inference`] loads them, then batch norm folded into
/// the convolutions ([`InceptionV3::fold_batch_norm`]); what the evaluator,
/// `classify` and `inception-serve` run. Returns it and whether moving
/// averages were used. libtorch's failures come back as errors.
pub fn inference_model(
    vs: &VarStore,
    cfg: &ModelConfig,
    tensors: &HashMap<String, Tensor>,
) -> Result<(InceptionV3, bool), CheckpointError> {
    let failed = |f: crate::TorchFailure| CheckpointError::Tensors(f.message);
    let mut model = crate::catch_torch(|| InceptionV3::new(&vs.root(), cfg)).map_err(failed)?;
    let averaged = load_for_inference(vs, tensors)?;
    crate::catch_torch(|| model.fold_batch_norm()).map_err(failed)?;
    Ok((model, averaged))
}

/// Reads a weights file by its extension: `.safetensors`; `.pth`, `.pt` or
/// `.bin` as written by `torch.save(state_dict)`; anything else as libtorch's
/// own format.
pub fn read_weights_file(path: &std::path::Path) -> Result<HashMap<String, Tensor>, CheckpointError> {
    let err = |e: tch::TchError| CheckpointError::Corrupt { key: path.display().to_string(), message: e.to_string() };
    let named = match path.extension().and_then(|e| e.to_str()) {
        Some("safetensors") => Tensor::read_safetensors(path).map_err(err)?,
        Some("pth" | "pt" | "bin") => Tensor::loadz_multi(path).map_err(err)?,
        _ => Tensor::load_multi(path).map_err(err)?,
    };
    Ok(named.into_iter().collect())
}

/// What loading pretrained weights did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PretrainedReport {
    pub loaded: usize,
    /// Left at their fresh initialisation (fine-tuned logits, a missing aux head).
    pub reinitialised: Vec<String>,
    /// In the file but not in the model (ignored); an own checkpoint's
    /// moving averages and optimizer slots are not counted here.
    pub unexpected: Vec<String>,
    /// The file is one of our checkpoints and its moving averages
    /// (`ema/<name>`) were loaded, not its raw weights.
    pub averaged: bool,
}

/// Of one of our own checkpoints: the moving averages of every variable
/// (the weights its evaluation scored), under the variables' names.
fn moving_averages(vs: &VarStore, tensors: &HashMap<String, Tensor>) -> Option<HashMap<String, Tensor>> {
    vs.variables().into_keys().map(|n| tensors.get(&format!("ema/{n}")).map(|t| (n, t.shallow_clone()))).collect()
}

/// Loads pretrained weights by name (torchvision/timm names). With
/// `fine_tune`, the logits layers (`fc.*`, `AuxLogits.fc.*`) keep their fresh
/// initialisation. A file without the auxiliary head (timm's) leaves it
/// freshly initialised. One of our own checkpoints gives its moving
/// averages, as the evaluator uses them (the original fine-tunes from the
/// restored averages too). Any other missing or mis-shaped variable is an
/// error that names them.
pub fn load_pretrained(
    vs: &VarStore,
    tensors: &HashMap<String, Tensor>,
    fine_tune: bool,
) -> Result<PretrainedReport, CheckpointError> {
    let Some(averages) = moving_averages(vs, tensors) else { return load_pretrained_weights(vs, tensors, fine_tune) };
    let mut report = load_pretrained_weights(vs, &averages, fine_tune)?;
    report.averaged = true;
    let own = |k: &str| k.starts_with("ema/") || k.starts_with("optimizer/") || vs.variables().contains_key(k);
    report.unexpected = tensors.keys().filter(|k| !own(k)).cloned().collect();
    report.unexpected.sort();
    Ok(report)
}

fn load_pretrained_weights(
    vs: &VarStore,
    tensors: &HashMap<String, Tensor>,
    fine_tune: bool,
) -> Result<PretrainedReport, CheckpointError> {
    let is_logits = |n: &str| n.starts_with("fc.") || n.starts_with("AuxLogits.fc.");
    let has_aux = tensors.keys().any(|k| k.starts_with("AuxLogits."));
    let mut report = PretrainedReport::default();
    let mut missing = Vec::new();
    let mut mismatched = Vec::new();
    let vars = vs.variables();
    // Every shape is checked before anything is copied: a file that does not
    // fit leaves the model as it was.
    let mut fitting = Vec::new();
    for (name, var) in &vars {
        if (fine_tune && is_logits(name)) || (!has_aux && name.starts_with("AuxLogits.")) {
            report.reinitialised.push(name.clone());
            continue;
        }
        match tensors.get(name) {
            None => missing.push(name.clone()),
            Some(t) if t.size() != var.size() => {
                let hint = if is_logits(name) { " (other classes: use fine_tune)" } else { "" };
                mismatched.push(format!("{name}: file {:?}, model {:?}{hint}", t.size(), var.size()));
            }
            Some(t) => fitting.push((var, t)),
        }
    }
    if !missing.is_empty() || !mismatched.is_empty() {
        missing.sort();
        mismatched.sort();
        return Err(CheckpointError::Mismatch { missing, mismatched });
    }
    tch::no_grad(|| {
        for (var, t) in &fitting {
            var.shallow_clone().copy_(t);
        }
    });
    report.loaded = fitting.len();
    report.reinitialised.sort();
    report.unexpected = tensors.keys().filter(|k| !vars.contains_key(*k)).cloned().collect();
    report.unexpected.sort();
    Ok(report)
}

/// The step of `model.ckpt-<step>.json` style keys.
pub fn step_of(key: &str) -> Option<u64> {
    let stem = key.rsplit('/').next()?.strip_prefix("model.ckpt-")?;
    stem.split('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inception::InceptionV3;
    use tch::Device;

    fn cfg(classes: i64) -> ModelConfig {
        ModelConfig::tiny(classes)
    }

    #[test]
    fn round_trip_restores_every_variable() {
        let a = VarStore::new(Device::Cpu);
        let _ = InceptionV3::new(&a.root(), &cfg(6));
        let named: Vec<(String, Tensor)> = a.variables().into_iter().collect();
        let bytes = tensors_to_bytes(&named).unwrap();
        let b = VarStore::new(Device::Cpu);
        let _ = InceptionV3::new(&b.root(), &cfg(6));
        let mut tensors = tensors_from_bytes(&bytes).unwrap();
        tensors.insert("optimizer/ms/fc.weight".into(), Tensor::zeros([1], (tch::Kind::Float, Device::Cpu)));
        let unexpected = load_into(&b, &tensors).unwrap();
        assert_eq!(unexpected, vec!["optimizer/ms/fc.weight"]);
        let (va, vb) = (a.variables(), b.variables());
        assert!(va["fc.weight"].equal(&vb["fc.weight"]));
        assert!(va["Mixed_6b.branch7x7_2.conv.weight"].equal(&vb["Mixed_6b.branch7x7_2.conv.weight"]));
    }

    #[test]
    fn another_shape_is_refused_with_names() {
        let a = VarStore::new(Device::Cpu);
        let _ = InceptionV3::new(&a.root(), &cfg(6));
        let bytes = tensors_to_bytes(&a.variables().into_iter().collect::<Vec<_>>()).unwrap();
        let b = VarStore::new(Device::Cpu);
        let _ = InceptionV3::new(&b.root(), &cfg(11));
        let err = load_into(&b, &tensors_from_bytes(&bytes).unwrap()).unwrap_err().to_string();
        assert!(err.contains("fc.weight"), "{err}");
        assert!(tensors_from_bytes(b"not safetensors").is_err());
    }

    #[test]
    fn pretrained_weights_load_by_name_and_fine_tune_skips_the_logits() {
        let source = VarStore::new(Device::Cpu);
        let _ = InceptionV3::new(&source.root(), &cfg(1000));
        let mut file: HashMap<String, Tensor> = source.variables().into_iter().collect();
        file.insert("Conv2d_1a_3x3.bn.num_batches_tracked".into(), Tensor::from(0i64));
        let target = VarStore::new(Device::Cpu);
        let _ = InceptionV3::new(&target.root(), &cfg(6));

        let err = load_pretrained(&target, &file, false).unwrap_err().to_string();
        assert!(err.contains("fc.weight") && err.contains("use fine_tune"), "{err}");

        let report = load_pretrained(&target, &file, true).unwrap();
        assert_eq!(report.reinitialised, vec!["AuxLogits.fc.bias", "AuxLogits.fc.weight", "fc.bias", "fc.weight"]);
        assert_eq!(report.unexpected, vec!["Conv2d_1a_3x3.bn.num_batches_tracked"]);
        let name = "Mixed_7c.branch_pool.conv.weight";
        assert!(target.variables()[name].equal(&source.variables()[name]));

        // timm's files have no auxiliary head: it stays freshly initialised.
        file.retain(|k, _| !k.starts_with("AuxLogits."));
        let report = load_pretrained(&target, &file, true).unwrap();
        assert!(report.reinitialised.contains(&"AuxLogits.conv0.conv.weight".to_string()));

        file.remove("Mixed_5b.branch1x1.conv.weight");
        let err = load_pretrained(&target, &file, true).unwrap_err().to_string();
        assert!(err.contains("Mixed_5b.branch1x1.conv.weight"), "{err}");
    }

    /// A weights object larger than any checkpoint of its model can be is
    /// refused from its size (issue 16: it used to be read whole).
    #[test]
    fn the_weights_bound_fits_a_real_checkpoint_and_refuses_more() {
        let source = VarStore::new(Device::Cpu);
        let _ = InceptionV3::new(&source.root(), &cfg(6));
        let mut named: Vec<(String, Tensor)> = Vec::new();
        for (name, t) in source.variables() {
            named.push((format!("ema/{name}"), t.copy()));
            named.push((format!("optimizer/ms/{name}"), t.zeros_like()));
            named.push((format!("optimizer/mom/{name}"), t.zeros_like()));
            named.push((name, t));
        }
        let bytes = tensors_to_bytes(&named).unwrap().len() as u64;
        let bound = max_weights_bytes(&cfg(6));
        assert!(bytes <= bound, "a full checkpoint ({bytes} B) fits its bound ({bound} B)");
        assert!(bound < bytes + (17 << 20), "and the bound is tight: {bound} B for {bytes} B");
    }

    /// Fine-tuning from one of our own checkpoints starts from the weights
    /// its evaluation scored (the moving averages), not the raw ones, and
    /// its averages and optimizer slots are not reported as unexpected.
    #[test]
    fn an_own_checkpoint_gives_its_moving_averages() {
        let source = VarStore::new(Device::Cpu);
        let _ = InceptionV3::new(&source.root(), &cfg(6));
        let mut file: HashMap<String, Tensor> = HashMap::new();
        for (name, t) in source.variables() {
            file.insert(format!("ema/{name}"), t.zeros_like() + 0.5);
            file.insert(format!("optimizer/ms/{name}"), t.zeros_like());
            file.insert(name, t);
        }
        let target = VarStore::new(Device::Cpu);
        let _ = InceptionV3::new(&target.root(), &cfg(6));
        let report = load_pretrained(&target, &file, false).unwrap();
        assert!(report.averaged);
        assert!(report.unexpected.is_empty(), "{:?}", report.unexpected);
        let name = "Mixed_7c.branch_pool.conv.weight";
        let loaded = target.variables()[name].shallow_clone();
        assert!(loaded.equal(&(loaded.zeros_like() + 0.5)), "the average, not the raw weight");
        // Without averages (a torchvision file): the weights themselves.
        file.retain(|k, _| !k.starts_with("ema/"));
        let report = load_pretrained(&target, &file, false).unwrap();
        assert!(!report.averaged);
        assert!(target.variables()[name].equal(&source.variables()[name]));
    }

    #[test]
    fn a_file_with_one_wrong_shape_loads_nothing() {
        let source = VarStore::new(Device::Cpu);
        let _ = InceptionV3::new(&source.root(), &cfg(6));
        let mut file: HashMap<String, Tensor> = source.variables().into_iter().collect();
        file.insert(
            "Mixed_7c.branch_pool.conv.weight".into(),
            Tensor::zeros([1, 2, 3], (tch::Kind::Float, Device::Cpu)),
        );
        let target = VarStore::new(Device::Cpu);
        let _ = InceptionV3::new(&target.root(), &cfg(6));
        let before: HashMap<String, Tensor> = target.variables().into_iter().map(|(n, t)| (n, t.copy())).collect();
        let err = load_pretrained(&target, &file, false).unwrap_err().to_string();
        assert!(err.contains("Mixed_7c.branch_pool.conv.weight"), "{err}");
        let after = target.variables();
        let changed = after.iter().filter(|(n, t)| !t.equal(&before[*n])).count();
        assert_eq!(changed, 0, "variables loaded before the mismatch was found");
    }

    fn best(precision_at_1: f64, validation_loss: f64) -> BestPointer {
        BestPointer {
            step: 20,
            metadata: "checkpoints/r/model.ckpt-20.json".into(),
            weights: "checkpoints/r/model.ckpt-20.safetensors".into(),
            precision_at_1,
            validation_loss,
        }
    }

    #[test]
    fn a_higher_precision_wins_and_a_tie_goes_to_the_lower_loss() {
        let current = best(0.75, 0.5);
        assert!(current.is_beaten_by(0.8, 2.0), "higher precision@1, whatever the loss");
        assert!(!current.is_beaten_by(0.7, 0.1), "lower precision@1, whatever the loss");
        assert!(current.is_beaten_by(0.75, 0.4), "tie: the lower loss wins");
        assert!(!current.is_beaten_by(0.75, 0.6), "tie: a higher loss does not");
        assert!(!current.is_beaten_by(0.75, 0.5), "the same scores change nothing");
        assert!(current.points_at("checkpoints/r/model.ckpt-20.json"));
        assert!(!current.points_at("checkpoints/r/model.ckpt-30.json"));
    }

    #[test]
    fn steps_are_parsed_from_keys() {
        assert_eq!(step_of("checkpoints/r/model.ckpt-120.json"), Some(120));
        assert_eq!(step_of("checkpoints/r/model.ckpt-7.safetensors"), Some(7));
        assert_eq!(step_of("checkpoints/r/checkpoint"), None);
    }

    #[test]
    fn metadata_and_pointers_written_before_lineage_still_load() {
        let old = serde_json::json!({
            "format_version": 1, "run": "r", "step": 10, "labels": ["a"], "model": cfg(2),
            "bn_updates": 10, "examples_seen": 80, "weights": "checkpoints/r/model.ckpt-10.safetensors",
            "created_unix": 0,
        });
        let meta: CheckpointMeta = serde_json::from_value(old).unwrap();
        assert_eq!(meta.lineage, Lineage::default());
        let best = serde_json::json!({
            "step": 10, "metadata": "checkpoints/r/model.ckpt-10.json",
            "weights": "checkpoints/r/model.ckpt-10.safetensors", "precision_at_1": 0.5, "validation_loss": 1.0,
        });
        let promoted: PromotedPointer = serde_json::from_value(best).unwrap();
        assert!(promoted.points_at("checkpoints/r/model.ckpt-10.json") && promoted.previous_step.is_none());
    }
}
