//! The trainer: Inception-v3 on batches from the queue.
//!
//! It waits for the dataset's labels, builds the model (resuming from the
//! run's latest complete checkpoint when there is one), then takes batches
//! from the `BATCHES` work queue one at a time: fetch the batch object, one
//! optimizer step, acknowledge, delete the object. Checkpoints are written
//! every `train.checkpoint_every_steps` and at the end, and announced.

pub mod ema;
pub mod flat;
pub mod optimizer;
pub mod saver;
pub mod towers;

use futures::StreamExt;
use inception_core::batch::Batch;
use inception_core::nats::{NatsError, Streams};
use inception_core::shutdown::{sleep_or_cancel, CancellationToken};
use inception_core::store::StoreError;
use inception_core::telemetry::log_timestamp;
use inception_core::{keys, Settings, Store};
use inception_model::checkpoint::{self, CheckpointMeta};
use inception_model::inception::debiased_momentum;
use inception_model::{images_to_input, loss, InceptionV3, Mode, ModelConfig, TorchFailure};
use inception_proto::pipeline::{BatchReady, ShardReady};
use std::time::{Duration, Instant};
use tch::{nn::VarStore, Device, Kind, Tensor};

use ema::MovingAverages;
use flat::FlatVariables;
use optimizer::RmsProp;
use towers::Replica;

/// `BATCHNORM_MOVING_AVERAGE_DECAY` of the original.
pub const BN_DECAY: f64 = 0.9997;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Nats(#[from] NatsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Saver(#[from] saver::SaverError),
    #[error("configuration: {0}")]
    Config(String),
    #[error("Model diverged with loss = {loss} at step {step}")]
    Diverged { step: u64, loss: f64 },
    #[error(
        "out of memory on {devices} at step {step} with a batch of {batch}: lower preprocess.batch_size \
         or model.image_size, or split the batch over more GPUs with train.num_gpus (libtorch: {message})"
    )]
    OutOfMemory { devices: String, step: u64, batch: i64, message: String },
    #[error("libtorch failed at step {step}: {message}")]
    Libtorch { step: u64, message: String },
    #[error("pretrained checkpoint {from}: {message}")]
    Pretrained { from: String, message: String },
    #[error("cannot resume from {key}: {message}")]
    Resume { key: String, message: String },
}

/// Everything that changes as training goes.
pub struct TrainState {
    pub vs: VarStore,
    pub model: InceptionV3,
    pub optimizer: RmsProp,
    pub averages: MovingAverages,
    /// Towers 1..N (tower 0 is `model`); empty with one tower.
    pub replicas: Vec<Replica>,
    /// The master's variables in one buffer (see [`flat`]), if they could be.
    pub flat: Option<FlatVariables>,
    pub labels: Vec<String>,
    pub step: u64,
    pub bn_updates: u64,
    pub examples_seen: u64,
    /// Towers run at once, one thread each (true when every tower has its
    /// own device; on one device they would only compete for its threads).
    pub concurrent_towers: bool,
}

/// Moving averages of every variable, starting from their current values.
fn fresh_averages(vs: &VarStore, flat: Option<&FlatVariables>) -> MovingAverages {
    match flat {
        Some(f) => MovingAverages::over_flat(f),
        None => MovingAverages::new(vs.variables().into_iter().collect()),
    }
}

/// Gradients of one tower's variables and its loss (without the L2 term).
type TowerResult = (Vec<Tensor>, f64);

/// Forward and backward of one tower on its share of the batch, on the
/// tower's device. A non-finite loss is returned as is (with no gradients)
/// for the caller to report.
fn tower_pass(model: &InceptionV3, vars: &[Tensor], images: &Tensor, labels: &Tensor, bn_momentum: f64) -> TowerResult {
    let device = vars.first().map_or(Device::Cpu, Tensor::device);
    let x = images_to_input(&images.to_device(device));
    let y = labels.to_device(device);
    let (logits, aux) = model.forward(&x, Mode::Train { bn_momentum });
    // The L2 term's gradient is applied by the optimizer.
    let total = loss::total_loss(&logits, aux.as_ref(), &y, &[]);
    let value = total.double_value(&[]);
    if !value.is_finite() {
        return (Vec::new(), value);
    }
    (Tensor::run_backward(&[&total], vars, false, false), value)
}

impl TrainState {
    /// Tower 0 (the master) on `devices[0]`, one replica per further device.
    pub fn new(cfg: &ModelConfig, labels: Vec<String>, settings: &Settings, devices: &[Device]) -> Self {
        tch::manual_seed(settings.train.seed);
        let vs = VarStore::new(devices.first().copied().unwrap_or(Device::Cpu));
        let model = InceptionV3::new(&vs.root(), cfg);
        let mut trainable: Vec<(String, Tensor)> =
            vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        trainable.sort_by(|a, b| a.0.cmp(&b.0));
        let order: Vec<String> = trainable.iter().map(|(n, _)| n.clone()).collect();
        let flat = FlatVariables::new(&vs, &order);
        let t = &settings.train;
        let mut optimizer = RmsProp::new(
            trainable,
            t.rmsprop_decay,
            t.rmsprop_momentum,
            t.rmsprop_epsilon,
            loss::WEIGHT_DECAY,
            InceptionV3::is_regularized,
        );
        if let Some(f) = &flat {
            optimizer = optimizer.with_flat_variables(f.trainable_part());
        }
        let averages = fresh_averages(&vs, flat.as_ref());
        let replicas = devices.iter().skip(1).map(|d| Replica::new(&vs, cfg, *d, &order, flat.as_ref())).collect();
        let concurrent_towers = devices.len() > 1 && devices.iter().enumerate().all(|(i, d)| !devices[..i].contains(d));
        Self {
            vs,
            model,
            optimizer,
            averages,
            replicas,
            flat,
            labels,
            step: 0,
            bn_updates: 0,
            examples_seen: 0,
            concurrent_towers,
        }
    }

    /// Forward and backward on every tower's share of the batch. Returns the
    /// gradients averaged over towers, on the master's device, in the
    /// optimizer's order (fresh tensors: nothing accumulates into `.grad`,
    /// which saves a zeroing and an addition pass per step), and the mean loss
    /// without the L2 term. Moves the batch-norm statistics (last tower's).
    pub fn compute_gradients(&mut self, images: &Tensor, labels: &Tensor) -> Result<(Vec<Tensor>, f64), TrainError> {
        let towers = 1 + self.replicas.len();
        let momentum = debiased_momentum(BN_DECAY, self.bn_updates + 1);
        // Only the last tower moves the batch-norm statistics.
        let bn_momentum = |tower: usize| if tower + 1 == towers { momentum } else { 0.0 };
        for r in &mut self.replicas {
            r.pull();
        }
        let parts: Vec<(Tensor, Tensor)> =
            images.chunk(towers as i64, 0).into_iter().zip(labels.chunk(towers as i64, 0)).collect();
        let master_vars = self.optimizer.variables();
        let (model, replicas) = (&self.model, &mut self.replicas);
        let results: Vec<TowerResult> = if self.concurrent_towers && towers > 1 {
            // One thread per replica, tower 0 on this one: devices work at once.
            std::thread::scope(|scope| {
                let handles: Vec<_> = replicas
                    .iter_mut()
                    .zip(parts.iter().skip(1))
                    .enumerate()
                    .map(|(k, (r, (x, y)))| {
                        let (x, y, m) = (x.shallow_clone(), y.shallow_clone(), bn_momentum(k + 1));
                        scope.spawn(move || tower_pass(&r.model, &r.trainable, &x, &y, m))
                    })
                    .collect();
                let first = tower_pass(model, &master_vars, &parts[0].0, &parts[0].1, bn_momentum(0));
                std::iter::once(first)
                    .chain(
                        handles.into_iter().map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))),
                    )
                    .collect()
            })
        } else {
            (0..towers)
                .map(|i| match i {
                    0 => tower_pass(model, &master_vars, &parts[0].0, &parts[0].1, bn_momentum(0)),
                    _ => tower_pass(
                        &replicas[i - 1].model,
                        &replicas[i - 1].trainable,
                        &parts[i].0,
                        &parts[i].1,
                        bn_momentum(i),
                    ),
                })
                .collect()
        };
        let mut sum: Vec<Tensor> = Vec::new();
        let mut losses = 0.0;
        for (grads, value) in results {
            if !value.is_finite() {
                return Err(TrainError::Diverged { step: self.step, loss: value });
            }
            losses += value;
            if sum.is_empty() {
                sum = grads;
                continue;
            }
            tch::no_grad(|| {
                for (s, g) in sum.iter_mut().zip(&grads) {
                    if s.defined() && g.defined() {
                        let _ = s.g_add_(&g.to_device(s.device()));
                    }
                }
            });
        }
        if towers > 1 {
            tch::no_grad(|| {
                for g in sum.iter_mut().filter(|g| g.defined()) {
                    let _ = g.g_div_scalar_(towers as f64);
                }
            });
            if let Some(last) = self.replicas.last_mut() {
                last.push_statistics();
            }
        }
        Ok((sum, losses / towers as f64))
    }

    /// The L2 term of the loss at the current weights (a pass over them:
    /// computed when a loss is reported, not every step).
    pub fn regularization_loss(&self) -> f64 {
        loss::l2_value(&self.optimizer.regularized_variables())
    }

    /// One optimizer update on `images` (`[N, S, S, 3]` u8) and `labels`,
    /// split over the towers. Returns the data loss before it (mean over
    /// towers, without the L2 term: add [`TrainState::regularization_loss`]).
    pub fn train_step(&mut self, images: &Tensor, labels: &Tensor, lr: f64) -> Result<f64, TrainError> {
        let (gradients, loss) = self.compute_gradients(images, labels)?;
        self.optimizer.step(lr, &gradients);
        self.step += 1;
        self.bn_updates += 1;
        self.averages.update(self.step);
        self.examples_seen += images.size()[0] as u64;
        Ok(loss)
    }

    /// [`TrainState::train_step`], with a libtorch failure (tch panics on a
    /// C++ exception, such as running out of GPU memory) returned as an
    /// error that says what failed, instead of unwinding through the service.
    pub fn guarded_step(&mut self, images: &Tensor, labels: &Tensor, lr: f64) -> Result<f64, TrainError> {
        let step = self.step + 1;
        inception_model::catch_torch(|| self.train_step(images, labels, lr)).unwrap_or_else(|failure| {
            let devices = std::iter::once(self.vs.device())
                .chain(self.replicas.iter().map(|r| r.vs.device()))
                .map(|d| format!("{d:?}"))
                .collect::<Vec<_>>()
                .join(", ");
            Err(step_failure(failure, step, images.size().first().copied().unwrap_or(0), devices))
        })
    }

    /// Named tensors for a checkpoint: model variables, their moving
    /// averages (`ema/…`) and the optimizer slots (`optimizer/…`).
    pub fn checkpoint_tensors(&self) -> Vec<(String, Tensor)> {
        let mut named: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        named.extend(self.averages.state());
        named.extend(self.optimizer.state());
        named.sort_by(|a, b| a.0.cmp(&b.0));
        named
    }
}

/// The error for a training step that libtorch failed: running out of
/// memory is told apart, since the fix is a setting.
pub fn step_failure(failure: TorchFailure, step: u64, batch: i64, devices: String) -> TrainError {
    if failure.out_of_memory {
        TrainError::OutOfMemory { devices, step, batch, message: failure.message }
    } else {
        TrainError::Libtorch { step, message: failure.message }
    }
}

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

/// Train examples per epoch: configured, else the records announced so far.
async fn examples_per_epoch(settings: &Settings, streams: &Streams) -> Result<u64, TrainError> {
    if settings.train.examples_per_epoch > 0 {
        return Ok(settings.train.examples_per_epoch);
    }
    let stream = streams.shards().await?;
    let subject = streams.subjects.shards(&settings.dataset.name, "train");
    let mut seen = std::collections::HashMap::new();
    for payload in streams.history(&stream, &subject).await? {
        if let Ok(s) = inception_core::nats::decode_control::<ShardReady>(&payload) {
            seen.insert(s.uri, s.records);
        }
    }
    Ok(seen.values().sum::<u64>().max(1))
}

/// Trains until `train.max_steps` or shutdown; returns the final step.
pub async fn run(
    settings: &Settings,
    store: &Store,
    streams: &Streams,
    shutdown: &CancellationToken,
) -> Result<u64, TrainError> {
    let t = &settings.train;
    let dataset = &settings.dataset.name;
    // This run's checkpoints have one writer: anything half-written is ours, from before a crash.
    store.remove_stale_temporaries(&keys::checkpoint_dir(&t.run), Duration::ZERO);
    tracing::info!("CUDA available: {} ({} devices)", tch::Cuda::is_available(), tch::Cuda::device_count());
    let first = inception_model::device_from_setting(&t.device).map_err(TrainError::Config)?;
    inception_model::set_cudnn_benchmark(first, t.cudnn_benchmark);
    let devices = towers::tower_devices(first, t.num_gpus as usize).map_err(TrainError::Config)?;
    let Some(labels) = wait_for_labels(store, dataset, shutdown).await? else { return Ok(0) };
    let cfg = model_config(settings, labels.len());
    cfg.validate().map_err(TrainError::Config)?;
    let mut state = TrainState::new(&cfg, labels.clone(), settings, &devices);
    let resumed = resume(store, &t.run, &cfg, &mut state).await?;
    if !resumed && !t.pretrained_checkpoint.is_empty() {
        start_from_pretrained(store, &t.pretrained_checkpoint, t.fine_tune, &mut state).await?;
    }
    tracing::info!(
        "training {} classes (+ background) at {}px, depth multiplier {}, on {:?}, from step {}",
        labels.len(),
        cfg.image_size,
        cfg.depth_multiplier,
        devices,
        state.step
    );
    streams.checkpoints().await?; // the stream this service announces on
    if resumed {
        // The trainer that wrote it may have died between the pointer and
        // the announcement: announce it again (same id: harmless if it did not).
        if let Err(e) = saver::announce(streams, &t.run, state.step, shutdown).await {
            tracing::warn!("announcing the checkpoint of step {} again: {e}", state.step);
        }
    }
    let stream = streams.batches(settings.preprocess.queue_capacity).await?;
    // A batch not acknowledged batch_ack_wait_secs after delivery (the
    // trainer died mid-step) goes to the next fetch again.
    let consumer = streams.batch_consumer(&stream, dataset, Duration::from_secs(t.batch_ack_wait_secs.max(1))).await?;
    let epoch = examples_per_epoch(settings, streams).await?;
    let decay_steps = optimizer::decay_steps(epoch, u64::from(settings.preprocess.batch_size), t.num_epochs_per_decay);
    tracing::info!("{epoch} examples per epoch: learning rate decays every {decay_steps} steps");

    let mut events = inception_core::tfevents::OptionalEvents::open(&t.tensorboard_dir);
    let mut last_saved = state.step;
    let mut wait_started = Instant::now();
    let (mut total_wait, mut total_step) = (0.0f64, 0.0f64);
    while state.step < t.max_steps && !shutdown.is_cancelled() {
        let mut fetched = match consumer.fetch().max_messages(1).expires(Duration::from_secs(1)).messages().await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("fetching from the batch queue: {e}");
                sleep_or_cancel(shutdown, Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(message) = fetched.next().await else { continue };
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("batch queue: {e}");
                continue;
            }
        };
        let waited = wait_started.elapsed();
        metrics::histogram!("inception_trainer_data_wait_seconds").record(waited.as_secs_f64());
        if let Ok(info) = message.info() {
            // Batches still queued behind this one (the consumer's num_pending).
            metrics::gauge!("inception_trainer_queue_batches").set(info.pending as f64);
            if info.delivered > 1 {
                metrics::counter!("inception_trainer_redelivered_batches_total").increment(1);
                tracing::info!(
                    "batch message {} delivered again (attempt {}): it was not acknowledged in time",
                    info.stream_sequence,
                    info.delivered
                );
            }
        }
        let started = Instant::now();
        let batch = match receive_batch(store, dataset, &message.payload, cfg.image_size as u32, cfg.num_classes).await
        {
            Ok(b) => b,
            Err(BatchProblem::Unusable(reason)) => {
                metrics::counter!("inception_trainer_rejected_batches_total").increment(1);
                tracing::error!("dropping a batch message: {reason}");
                message.ack().await.ok();
                continue;
            }
            Err(BatchProblem::Store(reason)) => {
                // The store may be back soon: hand the batch back, not drop it.
                tracing::warn!("cannot read a batch ({reason}); handing it back for redelivery in 2s");
                message.ack_with(async_nats::jetstream::AckKind::Nak(Some(Duration::from_secs(2)))).await.ok();
                sleep_or_cancel(shutdown, Duration::from_secs(1)).await;
                continue;
            }
        };
        let (key, batch) = batch;
        let n = batch.len() as i64;
        let s = cfg.image_size;
        let images = Tensor::from_slice(&batch.images).view([n, s, s, 3]);
        let targets = Tensor::from_slice(&batch.labels).to_kind(Kind::Int64);
        let lr =
            optimizer::learning_rate(t.initial_learning_rate, t.learning_rate_decay_factor, decay_steps, state.step);
        let loss = match state.guarded_step(&images, &targets, lr) {
            Ok(loss) => loss,
            Err(e) => {
                // Handed back at once: the batch itself is fine.
                message.ack_with(async_nats::jetstream::AckKind::Nak(None)).await.ok();
                return Err(e);
            }
        };
        if let Err(e) = message.ack().await {
            tracing::warn!("ack of {key} failed ({e}); it may be trained on again");
        }
        store.delete(&key).await.ok();
        let elapsed = started.elapsed().as_secs_f64();
        if total_step > 0.0 {
            // The wait for the very first batch is start-up, not starvation.
            total_wait += waited.as_secs_f64();
        }
        total_step += elapsed;
        metrics::histogram!("inception_trainer_step_seconds").record(elapsed);
        metrics::gauge!("inception_trainer_global_step").set(state.step as f64);
        metrics::gauge!("inception_trainer_learning_rate").set(lr);
        metrics::counter!("inception_trainer_examples_total").increment(n as u64);
        if state.step.is_multiple_of(t.log_every_steps) || state.step == 1 {
            // The total loss, as the original logs it: data loss + L2 term.
            let loss = loss + state.regularization_loss();
            metrics::gauge!("inception_trainer_loss").set(loss);
            events.scalars(
                state.step,
                &[("loss", loss), ("learning_rate", lr), ("examples_per_sec", n as f64 / elapsed)],
            );
            println!(
                "{}: step {}, loss = {:.2} ({:.1} examples/sec; {:.3} sec/batch)",
                log_timestamp(),
                state.step,
                loss,
                n as f64 / elapsed,
                elapsed
            );
        }
        if state.step.is_multiple_of(t.checkpoint_every_steps) {
            checkpoint(store, streams, settings, &state, &cfg, shutdown).await?;
            last_saved = state.step;
        }
        wait_started = Instant::now();
    }
    if total_step > 0.0 {
        tracing::info!(
            "waited {total_wait:.1}s for data and computed {total_step:.1}s: data wait is {:.1}% of step time",
            100.0 * total_wait / (total_wait + total_step)
        );
    }
    if state.step > last_saved {
        // Also on SIGTERM: the work done so far is kept.
        checkpoint(store, streams, settings, &state, &cfg, &CancellationToken::new()).await?;
    }
    Ok(state.step)
}

/// Why a batch message was not trained on.
enum BatchProblem {
    /// Malformed, outside the dataset, missing or of the wrong shape: dropped.
    Unusable(String),
    /// The store failed to answer: handed back for redelivery.
    Store(String),
}

impl From<String> for BatchProblem {
    fn from(reason: String) -> Self {
        Self::Unusable(reason)
    }
}

async fn receive_batch(
    store: &Store,
    dataset: &str,
    payload: &[u8],
    image_size: u32,
    num_classes: i64,
) -> Result<(String, Batch), BatchProblem> {
    let ready: BatchReady = inception_core::nats::decode_control(payload)?;
    let dir = keys::batch_dir(dataset);
    if keys::below(&ready.uri, &dir).is_none() {
        return Err(format!("{} is outside {dir}/", ready.uri).into());
    }
    let bytes = store.get(&ready.uri).await.map_err(|e| match e {
        StoreError::NotFound { .. } => BatchProblem::Unusable(e.to_string()),
        other => BatchProblem::Store(other.to_string()),
    })?;
    let batch = Batch::from_bytes(&bytes).map_err(|e| format!("{}: {e}", ready.uri))?;
    if batch.image_size != image_size {
        return Err(format!("{} has {}px images; the model takes {image_size}px", ready.uri, batch.image_size).into());
    }
    if let Some(bad) = batch.labels.iter().find(|l| **l < 0 || **l >= num_classes) {
        return Err(format!("{} has label {bad}, outside 0..{num_classes}", ready.uri).into());
    }
    Ok((ready.uri, batch))
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
    state.averages = fresh_averages(&state.vs, state.flat.as_ref());
    tracing::info!("loaded {} variables from {source}", report.loaded);
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
            "it was trained with {:?}, but the settings now ask for {:?}; use another train.run",
            meta.model, cfg
        )));
    }
    checkpoint::load_into(&state.vs, &tensors).map_err(|e| fail(e.to_string()))?;
    let slots = state.optimizer.load_state(&tensors);
    let averages = state.averages.load_state(&tensors);
    state.step = meta.step;
    state.bn_updates = meta.bn_updates;
    state.examples_seen = meta.examples_seen;
    tracing::info!(
        "resumed from {} at step {} ({slots} optimizer slots, {averages} moving averages)",
        pointer.metadata,
        meta.step
    );
    Ok(true)
}

async fn checkpoint(
    store: &Store,
    streams: &Streams,
    settings: &Settings,
    state: &TrainState,
    cfg: &ModelConfig,
    shutdown: &CancellationToken,
) -> Result<(), TrainError> {
    let run = &settings.train.run;
    let meta = CheckpointMeta {
        format_version: checkpoint::FORMAT_VERSION,
        run: run.clone(),
        step: state.step,
        labels: state.labels.clone(),
        model: cfg.clone(),
        bn_updates: state.bn_updates,
        examples_seen: state.examples_seen,
        weights: keys::checkpoint_weights(run, state.step),
        created_unix: chrono::Utc::now().timestamp(),
    };
    saver::save(store, streams, &meta, &state.checkpoint_tensors(), settings.train.keep_checkpoints, shutdown).await?;
    Ok(())
}
