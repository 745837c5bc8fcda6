//! Start-up of a training run: the devices, the labels, the model, and
//! where its weights come from (the run's latest checkpoint, pretrained
//! weights, or a fresh initialisation).

use inception_core::nats::Streams;
use inception_core::settings::DeviceSetting;
use inception_core::shutdown::{sleep_or_cancel, CancellationToken};
use inception_core::store::StoreError;
use inception_core::{keys, Settings, Store};
use inception_model::checkpoint;
use inception_model::precision::Precision;
use inception_model::ModelConfig;
use std::time::Duration;

use crate::state::{fresh_averages, TrainState};
use crate::{saver, towers, TrainError};

/// The model shape this run trains, from settings and labels.
pub fn model_config(settings: &Settings, labels: usize) -> ModelConfig {
    ModelConfig {
        num_classes: labels as i64 + 1,
        image_size: i64::from(settings.model.image_size),
        depth_multiplier: settings.model.depth_multiplier,
        min_depth: i64::from(settings.model.min_depth),
        dropout: settings.model.dropout,
        aux_logits: true,
        avg_pool_count_include_pad: settings.model.avg_pool_count_include_pad,
    }
}

/// Waits for `datasets/<name>/labels.txt`, which ingest writes before any shard.
pub async fn wait_for_labels(
    store: &Store,
    dataset: &str,
    shutdown: &CancellationToken,
) -> Result<Option<Vec<String>>, TrainError> {
    let key = keys::labels(dataset);
    let mut announced = false;
    loop {
        match store.get(&key).await {
            Ok(bytes) => {
                let labels: Vec<String> = String::from_utf8_lossy(&bytes)
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_string)
                    .collect();
                if labels.is_empty() {
                    return Err(TrainError::Config(format!("{key} lists no labels")));
                }
                return Ok(Some(labels));
            }
            Err(StoreError::NotFound { .. }) => {
                if !announced {
                    tracing::info!("waiting for {key} (run ingest first)");
                    announced = true;
                }
            }
            Err(e) => tracing::warn!("{e}; retrying"),
        }
        if !sleep_or_cancel(shutdown, Duration::from_millis(500)).await {
            return Ok(None);
        }
    }
}

/// Everything before the first step: devices, labels, the model, resuming
/// the run (or starting from pretrained weights), and announcing the
/// checkpoint it resumed from again. None: stopped while waiting for labels.
/// `leader`: this process writes the run's checkpoints (rank 0 of a
/// data-parallel job, or the only trainer); `local_rank`: its place among
/// the job's processes on this machine (`train.device = "auto"` then picks
/// `cuda:<local_rank>` where CUDA is available).
pub(crate) async fn prepare(
    settings: &Settings,
    store: &Store,
    streams: &Streams,
    (leader, local_rank): (bool, Option<u32>),
    shutdown: &CancellationToken,
) -> Result<Option<(TrainState, ModelConfig)>, TrainError> {
    let t = &settings.train;
    if leader {
        // This run's checkpoints have one writer: anything half-written is ours, from before a crash.
        store.remove_stale_temporaries(&keys::checkpoint_dir(&settings.pipeline.run), Duration::ZERO);
    }
    tracing::info!("CUDA available: {} ({} devices)", tch::Cuda::is_available(), tch::Cuda::device_count());
    let first = device_of_rank(t.device, local_rank)?;
    inception_model::set_cudnn_benchmark(first, t.cudnn_benchmark);
    inception_model::set_cpu_threads(t.threads, "train.threads");
    let devices = towers::tower_devices(first, t.num_gpus as usize).map_err(TrainError::Config)?;
    let Some(labels) = wait_for_labels(store, &settings.dataset.name, shutdown).await? else { return Ok(None) };
    let cfg = model_config(settings, labels.len());
    cfg.validate().map_err(TrainError::Config)?;
    let precision = Precision::resolve(t.precision, first, "train.precision").map_err(TrainError::Config)?;
    let mut state = TrainState::new(&cfg, labels, settings, &devices);
    state.set_precision(precision);
    let resumed = resume(store, &settings.pipeline.run, &cfg, &mut state).await?;
    if !resumed && !t.pretrained_checkpoint.is_empty() {
        start_from_pretrained(store, &t.pretrained_checkpoint, t.fine_tune, &mut state).await?;
    }
    tracing::info!(
        "training {} classes (+ background) at {}px, depth multiplier {}, on {:?} in {precision}, from step {}",
        state.labels.len(),
        cfg.image_size,
        cfg.depth_multiplier,
        devices,
        state.step
    );
    streams.checkpoints().await?; // the stream this service announces on
    if resumed && leader {
        // The trainer that wrote it may have died between the pointer and
        // the announcement: announce it again (same id: harmless if it did not).
        if let Err(e) = saver::announce(streams, &settings.pipeline.run, state.step, shutdown).await {
            tracing::warn!("announcing the checkpoint of step {} again: {e}", state.step);
        }
    }
    Ok(Some((state, cfg)))
}

/// The first device: `setting`, except that a rank of a data-parallel job
/// with `auto` takes the GPU of its `LOCAL_RANK` (as torchrun's ranks on one
/// machine each take one).
fn device_of_rank(setting: DeviceSetting, local_rank: Option<u32>) -> Result<tch::Device, TrainError> {
    match (setting, local_rank) {
        (DeviceSetting::Auto, Some(rank)) if tch::Cuda::is_available() => {
            inception_model::device_from_setting(DeviceSetting::Cuda(rank as usize))
                .map_err(|e| TrainError::Config(format!("LOCAL_RANK {rank}: {e}")))
        }
        _ => inception_model::device_from_setting(setting).map_err(TrainError::Config),
    }
}

/// Loads `source` (a local weights file, or a store key) into a fresh model.
/// As in the original, only weights are taken: the global step, optimizer
/// slots and moving averages start anew (the averages from the loaded weights).
async fn start_from_pretrained(
    store: &Store,
    source: &str,
    fine_tune: bool,
    state: &mut TrainState,
) -> Result<(), TrainError> {
    let fail = |message: String| TrainError::Pretrained { from: source.to_string(), message };
    let path = std::path::Path::new(source);
    let tensors = if path.is_file() {
        checkpoint::read_weights_file(path).map_err(|e| fail(e.to_string()))?
    } else {
        let bytes = store.get(source).await.map_err(|e| fail(format!("not a local file, and {e}")))?;
        checkpoint::tensors_from_bytes(&bytes).map_err(|e| fail(e.to_string()))?
    };
    let report = checkpoint::load_pretrained(&state.vs, &tensors, fine_tune).map_err(|e| fail(e.to_string()))?;
    state.averages = fresh_averages(&state.vs, state.flat.as_ref(), state.averages.max_decay());
    let which = if report.averaged { "the moving averages of " } else { "" };
    tracing::info!("loaded {which}{} variables from {source}", report.loaded);
    if !report.reinitialised.is_empty() {
        tracing::info!("freshly initialised: {}", report.reinitialised.join(", "));
    }
    if !report.unexpected.is_empty() {
        tracing::warn!(
            "{} tensors of {source} are not in the model and were ignored: {}",
            report.unexpected.len(),
            summarize(&report.unexpected)
        );
    }
    Ok(())
}

/// The first few names and a count of the rest.
fn summarize(names: &[String]) -> String {
    let shown: Vec<&str> = names.iter().take(5).map(String::as_str).collect();
    match names.len() {
        n if n > 5 => format!("{} and {} more", shown.join(", "), n - 5),
        _ => shown.join(", "),
    }
}

/// Restores the run's latest checkpoint; false when there is none.
async fn resume(store: &Store, run: &str, cfg: &ModelConfig, state: &mut TrainState) -> Result<bool, TrainError> {
    let Some(pointer) = checkpoint::read_pointer(store, run).await.map_err(saver::SaverError::from)? else {
        return Ok(false);
    };
    let fail = |message: String| TrainError::Resume { key: pointer.metadata.clone(), message };
    let (meta, tensors) = checkpoint::read(store, &pointer.metadata).await.map_err(|e| fail(e.to_string()))?;
    if &meta.model != cfg {
        return Err(fail(format!(
            "it was trained with {:?}, but the settings now ask for {:?}; use another pipeline.run",
            meta.model, cfg
        )));
    }
    checkpoint::load_into(&state.vs, &tensors).map_err(|e| fail(e.to_string()))?;
    let slots = state.optimizer.load_state(&tensors);
    let averages = state.averages.load_state(&tensors);
    state.step = meta.step;
    state.optimizer.set_updates(meta.step);
    state.bn_updates = meta.bn_updates;
    state.examples_seen = meta.examples_seen;
    state.lineage.resumed_from(&pointer.metadata, &meta);
    tracing::info!(
        "resumed from {} at step {} ({slots} optimizer slots, {averages} moving averages)",
        pointer.metadata,
        meta.step
    );
    Ok(true)
}
