//! The trainer: Inception-v3 on batches from the queue.
//!
//! It waits for the dataset's labels, builds the model (resuming from the
//! run's latest complete checkpoint when there is one), then takes batches
//! from the `BATCHES` work queue one at a time: fetch the batch object, one
//! optimizer step, acknowledge, delete the object. Checkpoints are written
//! every `train.checkpoint_every_steps` and at the end, and announced.
//!
//! * [`batches`]: the batch source and the ack / nak / drop decision;
//! * [`start`]: devices, labels, the model, resuming or pretrained weights;
//! * [`state`]: the model, towers, optimizer and moving averages, one step;
//! * this module: start-up, the loop that decides when to log and
//!   checkpoint, resuming and saving.

pub mod batches;
pub mod distributed;
pub mod early_stop;
pub mod ema;
pub mod flat;
pub mod history;
pub mod lineage;
pub mod optimizer;
pub mod saver;
pub mod scaler;
pub mod schedule;
pub mod start;
pub mod state;
pub mod towers;

use inception_core::announcements::accept_train_shard;
use inception_core::nats::{NatsError, Streams};
use inception_core::settings::ScheduleSetting;
use inception_core::shutdown::CancellationToken;
use inception_core::stall::Stall;
use inception_core::store::StoreError;
use inception_core::telemetry::{log_timestamp, Readiness};
use inception_core::{keys, Settings, Store};
use inception_model::checkpoint::{self, CheckpointMeta};
use inception_model::ModelConfig;
use inception_proto::pipeline::ShardReady;
use std::time::Duration;

use batches::{BatchSource, BatchSpec, Outcome};
use distributed::DataParallel;
use start::prepare;
pub use start::{model_config, wait_for_labels};
pub use state::{step_failure, TrainState};

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
        "out of memory on {devices} at step {step} with a batch of {batch}: lower pipeline.batch_size \
         or model.image_size, or split the batch over more GPUs with train.num_gpus (libtorch: {message})"
    )]
    OutOfMemory { devices: String, step: u64, batch: i64, message: String },
    #[error("libtorch failed at step {step}: {message}")]
    Libtorch { step: u64, message: String },
    #[error("pretrained checkpoint {from}: {message}")]
    Pretrained { from: String, message: String },
    #[error("cannot resume from {key}: {message}")]
    Resume { key: String, message: String },
    #[error("{0}")]
    Distributed(String),
}

/// Train examples per epoch: configured, else the records announced so
/// far; None while no train shard has been announced.
async fn examples_per_epoch(settings: &Settings, streams: &Streams) -> Result<Option<u64>, TrainError> {
    if settings.train.examples_per_epoch > 0 {
        return Ok(Some(settings.train.examples_per_epoch));
    }
    let stream = streams.shards().await?;
    let subject = streams.subjects.shards(&settings.dataset.name, "train");
    let history = streams.history(&stream, &subject).await?;
    let examples = announced_records(&history, &settings.dataset.name);
    Ok((examples > 0).then_some(examples))
}

/// Train examples in a history of shard announcements: the records of each
/// shard announced (once, however often it was announced), counting only the
/// announcements that preprocess workers accept too
/// ([`accept_train_shard`]), so that a refused one changes nothing. At
/// least 1; the sum saturates.
pub fn announced_examples(payloads: &[bytes::Bytes], dataset: &str) -> u64 {
    announced_records(payloads, dataset).max(1)
}

/// [`announced_examples`], 0 when nothing is announced.
fn announced_records(payloads: &[bytes::Bytes], dataset: &str) -> u64 {
    let mut seen = std::collections::HashMap::new();
    let (mut refused, mut first_reason) = (0usize, None);
    for payload in payloads {
        let checked = inception_core::nats::decode_control::<ShardReady>(payload)
            .map_err(|e| e.to_string())
            .and_then(|s| accept_train_shard(&s, dataset).map(|()| s).map_err(|e| e.to_string()));
        match checked {
            Ok(s) => {
                seen.insert(s.uri, s.records);
            }
            Err(reason) => {
                refused += 1;
                first_reason.get_or_insert(reason);
            }
        }
    }
    if let Some(reason) = first_reason {
        tracing::warn!("{refused} shard announcements do not count toward an epoch (the first: {reason})");
    }
    seen.values().fold(0u64, |sum, records| sum.saturating_add(*records))
}

/// Trains until `train.max_steps` or shutdown, reporting what it waits for
/// on `readiness`; returns the final step. With `WORLD_SIZE` (or
/// `distributed.world_size`) above 1, as one rank of a data-parallel job.
pub async fn run(
    settings: &Settings,
    store: &Store,
    streams: &Streams,
    readiness: &Readiness,
    shutdown: &CancellationToken,
) -> Result<u64, TrainError> {
    let t = &settings.train;
    let job =
        distributed::rendezvous(&settings.distributed, |name| std::env::var(name).ok()).map_err(TrainError::Config)?;
    let leader = job.as_ref().is_none_or(|r| r.rank == 0);
    let local_rank = job.as_ref().map(|_| distributed::local_rank(&settings.distributed, |n| std::env::var(n).ok()));
    let role = (leader, local_rank.transpose().map_err(TrainError::Config)?);
    let Some((mut state, cfg)) = prepare(settings, store, streams, role, shutdown).await? else { return Ok(0) };
    let device = state.vs.device();
    let mut group = match &job {
        Some(r) => {
            let backend = distributed::backend_for(settings.distributed.backend, device).map_err(TrainError::Config)?;
            Some(DataParallel::join(r, backend, device)?.with_overlap(settings.distributed.overlap))
        }
        None => None,
    };
    let mut epoch = examples_per_epoch(settings, streams).await?.unwrap_or(0);
    if let Some(g) = &group {
        // Every rank's schedule must be rank 0's, and so must its state.
        epoch = g.leaders_value(epoch)?;
        g.broadcast_state(&mut state)?;
    }
    let stall = Stall::new("trainer", readiness, settings.pipeline.stall_after);
    let world = group.as_ref().map_or(1, DataParallel::world_size);
    let source = batch_source(settings, store, streams, &cfg, (stall, world)).await?;
    let mut training = Training {
        settings,
        store,
        streams,
        cfg,
        source,
        schedule: (epoch > 0).then(|| learning_rate_schedule(settings, epoch, world)),
        // One TensorBoard writer per run: rank 0.
        progress: Progress::new(if leader { &t.tensorboard_dir } else { "" }),
        early_stop: early_stop::EarlyStop::follow(streams, &settings.pipeline.run, t.early_stopping_patience, shutdown)
            .await,
        leader,
        shutdown,
    };
    if leader {
        history::save_settings(store, settings).await;
    }
    let last_saved = match &mut group {
        None => training.single(&mut state).await?,
        Some(g) => training.as_rank(&mut state, g).await?,
    };
    training.progress.summarize();
    if state.step > last_saved {
        // Also on SIGTERM: the work done so far is kept.
        training.save(&mut state, group.as_ref(), &CancellationToken::new()).await?;
    }
    if leader {
        training.progress.history.save(store, &settings.pipeline.run).await;
    }
    Ok(state.step)
}

/// What the training loop works with.
struct Training<'a> {
    settings: &'a Settings,
    store: &'a Store,
    streams: &'a Streams,
    cfg: ModelConfig,
    source: BatchSource,
    /// None until an epoch's examples are known (see [`Training::learning_rate`]).
    schedule: Option<schedule::Schedule>,
    progress: Progress,
    early_stop: early_stop::EarlyStop,
    /// Writes checkpoints (rank 0, or the only trainer).
    leader: bool,
    shutdown: &'a CancellationToken,
}

impl Training<'_> {
    /// One process: a step per batch. Returns the step last checkpointed.
    async fn single(&mut self, state: &mut TrainState) -> Result<u64, TrainError> {
        let t = &self.settings.train;
        let mut last_saved = state.step;
        while state.step < t.max_steps {
            if let Some(reason) = self.early_stop.reason() {
                tracing::info!("stopping early at step {}: {reason}", state.step);
                break;
            }
            let Some(delivery) = self.source.next(self.shutdown).await else { break };
            let lr = self.learning_rate(state.step, None).await?;
            let (images, labels) = delivery.tensors();
            let loss = match state.guarded_step(&images, &labels, lr) {
                Ok(loss) => loss,
                Err(e) => {
                    delivery.settle(Outcome::StepFailed, self.store).await;
                    return Err(e);
                }
            };
            let (examples, waited, arrived) = (delivery.batch.len() as u64, delivery.waited, delivery.arrived);
            state.lineage.add(&delivery.shards, examples);
            delivery.settle(Outcome::Trained, self.store).await;
            let step = StepReport { examples, loss, lr, waited, elapsed: arrived.elapsed() };
            self.progress.record(state, &step, t.log_every_steps);
            if state.step.is_multiple_of(t.checkpoint_every_steps) {
                self.save(state, None, self.shutdown).await?;
                last_saved = state.step;
            }
        }
        Ok(last_saved)
    }

    /// One rank of a data-parallel job (see [`distributed`]): a step when
    /// every rank holds a batch; all stop together. Returns the step last
    /// checkpointed.
    async fn as_rank(&mut self, state: &mut TrainState, group: &mut DataParallel) -> Result<u64, TrainError> {
        let t = &self.settings.train;
        let round = distributed::round_wait(group.timeout());
        let mut last_saved = state.step;
        let mut held: Option<batches::Delivery> = None;
        let outcome = loop {
            if state.step >= t.max_steps {
                break Ok(());
            }
            let early = self.early_stop.reason();
            let stop = self.shutdown.is_cancelled() || early.is_some();
            match &held {
                Some(delivery) => delivery.keep().await,
                None if !stop => {
                    held = self.source.next_before(self.shutdown, Some(std::time::Instant::now() + round)).await;
                }
                None => {}
            }
            // SIGTERM may have come while waiting for the batch.
            let vote = distributed::Vote { has_batch: held.is_some(), stop: stop || self.shutdown.is_cancelled() };
            let agreed = match group.agree(vote) {
                Ok(a) => a,
                Err(e) => break Err(e),
            };
            if agreed.stop {
                let why = early.unwrap_or_else(|| "a rank was asked to stop".into());
                tracing::info!("all ranks stop at step {}: {why}", state.step);
                break Ok(());
            }
            if !agreed.ready {
                continue; // a rank is still waiting: this one keeps its batch
            }
            let Some(delivery) = held.take() else { continue };
            let examples = delivery.batch.len() as u64;
            let lr = match self.learning_rate(state.step, Some(&*group)).await {
                Ok(lr) => lr,
                Err(e) => {
                    delivery.settle(Outcome::HandedBack, self.store).await;
                    break Err(e);
                }
            };
            let (images, labels) = delivery.tensors();
            let mut reduced = match group.step(state, &images, &labels, examples) {
                Ok(r) => r,
                Err(e) => {
                    delivery.settle(Outcome::StepFailed, self.store).await;
                    break Err(e);
                }
            };
            state.apply_update(lr, &mut reduced.gradients, reduced.examples);
            state.lineage.add(&delivery.shards, examples);
            let (waited, arrived) = (delivery.waited, delivery.arrived);
            delivery.settle(Outcome::Trained, self.store).await;
            let step = StepReport {
                examples: reduced.examples,
                loss: reduced.mean_loss,
                lr,
                waited,
                elapsed: arrived.elapsed(),
            };
            self.progress.record(state, &step, t.log_every_steps);
            if state.step.is_multiple_of(t.checkpoint_every_steps) {
                if let Err(e) = self.save(state, Some(&*group), self.shutdown).await {
                    break Err(e);
                }
                last_saved = state.step;
            }
        };
        if let Some(delivery) = held {
            delivery.settle(Outcome::HandedBack, self.store).await;
        }
        outcome.map(|()| last_saved)
    }

    /// The learning rate of the update after `step`. A trainer started
    /// before any train shard was announced (continuous training waiting for
    /// its first uploads) makes its schedule at its first batch: counted at
    /// start, the staircase's epoch would be 1 example and the rate would
    /// fall by `learning_rate_decay_factor` every few steps.
    async fn learning_rate(&mut self, step: u64, group: Option<&DataParallel>) -> Result<f64, TrainError> {
        if self.schedule.is_none() {
            let mut epoch = examples_per_epoch(self.settings, self.streams).await?.unwrap_or(0);
            if let Some(g) = group {
                epoch = g.leaders_value(epoch)?;
            }
            if epoch == 0 {
                tracing::warn!("a batch came before any train shard was announced: an epoch counts as 1 example");
            }
            let world = group.map_or(1, DataParallel::world_size);
            self.schedule = Some(learning_rate_schedule(self.settings, epoch.max(1), world));
        }
        Ok(self.schedule.as_ref().map_or(0.0, |s| s.learning_rate(step)))
    }

    /// A checkpoint of `state`: written and announced by the leader, with
    /// the lineage of every rank (`group`) gathered first.
    async fn save(
        &mut self,
        state: &mut TrainState,
        group: Option<&DataParallel>,
        shutdown: &CancellationToken,
    ) -> Result<(), TrainError> {
        let run = &self.settings.pipeline.run;
        if let Some(g) = group {
            g.gather_lineage(self.store, run, state.step, &mut state.lineage).await?;
        }
        if self.leader {
            checkpoint(self.store, self.streams, self.settings, state, &self.cfg, shutdown).await?;
            self.progress.history.save(self.store, run).await;
        }
        Ok(())
    }
}

/// The trainer's durable consumer of the dataset's batch queue.
async fn batch_source(
    settings: &Settings,
    store: &Store,
    streams: &Streams,
    cfg: &ModelConfig,
    (stall, world): (Stall, u32),
) -> Result<BatchSource, TrainError> {
    let stream = streams.batches(settings.pipeline.queue_capacity).await?;
    // A rank holds its batch (still in the queue) while the others wait for
    // theirs: a queue with room for fewer batches than ranks never fills all.
    let capacity = stream.cached_info().config.max_messages;
    if world > 1 && capacity >= 0 && capacity < i64::from(world) {
        return Err(TrainError::Config(format!(
            "the batch queue holds at most {capacity} batches, fewer than the {world} ranks: each rank holds one \
             while the others wait for theirs, so set pipeline.queue_capacity to at least WORLD_SIZE (an existing \
             queue keeps its capacity: delete its stream, or use another nats.subject_prefix)"
        )));
    }
    // A batch not acknowledged train.batch_ack_wait after delivery (the
    // trainer died mid-step) goes to the next fetch again.
    let ack_wait = settings.train.batch_ack_wait.max(Duration::from_secs(1));
    let consumer = streams.batch_consumer(&stream, &settings.dataset.name, ack_wait).await?;
    let spec = BatchSpec {
        dataset: settings.dataset.name.clone(),
        image_size: cfg.image_size as u32,
        num_classes: cfg.num_classes,
        max_images: settings.pipeline.batch_size,
        towers: settings.train.num_gpus,
        max_deliveries: settings.train.batch_max_deliveries,
    };
    Ok(BatchSource::new(consumer, store.clone(), spec).reporting_to(stall))
}

/// The learning-rate schedule of the run, from the settings: the staircase
/// counts the examples of an epoch (configured, or the records announced)
/// in global batches (`pipeline.batch_size` on each of `world` ranks).
fn learning_rate_schedule(settings: &Settings, epoch: u64, world: u32) -> schedule::Schedule {
    let t = &settings.train;
    let global_batch = u64::from(settings.pipeline.batch_size) * u64::from(world);
    let decay_steps = schedule::decay_steps(epoch, global_batch, t.num_epochs_per_decay);
    let cosine_steps = match t.cosine_steps {
        0 => t.max_steps.saturating_sub(t.warmup_steps),
        n => n,
    };
    let schedule = schedule::Schedule {
        initial: t.initial_learning_rate,
        kind: t.lr_schedule,
        factor: t.learning_rate_decay_factor,
        decay_steps,
        warmup_steps: t.warmup_steps,
        warmup_start_fraction: t.warmup_start_fraction,
        cosine_steps,
        cosine_final_fraction: t.cosine_final_fraction,
    };
    let shape = match t.lr_schedule {
        ScheduleSetting::Staircase => format!(
            "staircase: x{} every {decay_steps} steps ({epoch} examples per epoch)",
            t.learning_rate_decay_factor
        ),
        ScheduleSetting::Cosine => {
            format!("cosine over {cosine_steps} steps down to {} of it", t.cosine_final_fraction)
        }
        ScheduleSetting::Constant => "constant".to_string(),
    };
    tracing::info!(
        "learning rate {} ({:?} optimizer), warm-up {} steps from {} of it, then {shape}",
        t.initial_learning_rate,
        t.optimizer,
        t.warmup_steps,
        t.warmup_start_fraction
    );
    schedule
}

/// What one step did, for metrics and the log.
struct StepReport {
    examples: u64,
    /// Data loss, without the L2 term.
    loss: f64,
    lr: f64,
    waited: Duration,
    elapsed: Duration,
}

/// Metrics, the log line every `train.log_every_steps`, TensorBoard
/// scalars, the same values for the run's report ([`history`]), and the
/// share of time spent waiting for data.
struct Progress {
    events: inception_core::tfevents::OptionalEvents,
    history: history::History,
    total_wait: f64,
    total_step: f64,
}

impl Progress {
    fn new(tensorboard_dir: &str) -> Self {
        Self {
            events: inception_core::tfevents::OptionalEvents::open(tensorboard_dir),
            history: history::History::default(),
            total_wait: 0.0,
            total_step: 0.0,
        }
    }

    fn record(&mut self, state: &TrainState, step: &StepReport, log_every_steps: u64) {
        let elapsed = step.elapsed.as_secs_f64();
        if self.total_step > 0.0 {
            // The wait for the very first batch is start-up, not starvation.
            self.total_wait += step.waited.as_secs_f64();
        }
        self.total_step += elapsed;
        metrics::histogram!("inception_trainer_step_seconds").record(elapsed);
        metrics::gauge!("inception_trainer_global_step").set(state.step as f64);
        metrics::gauge!("inception_trainer_learning_rate").set(step.lr);
        metrics::counter!("inception_trainer_examples_total").increment(step.examples);
        if state.step.is_multiple_of(log_every_steps) || state.step == 1 {
            // The total loss, as the original logs it: data loss + L2 term.
            let loss = step.loss + state.regularization_loss();
            let rate = step.examples as f64 / elapsed;
            metrics::gauge!("inception_trainer_loss").set(loss);
            self.events.scalars(state.step, &[("loss", loss), ("learning_rate", step.lr), ("examples_per_sec", rate)]);
            self.history.push(history::StepRecord {
                step: state.step,
                unix_seconds: chrono::Utc::now().timestamp_millis() as f64 / 1000.0,
                loss,
                learning_rate: step.lr,
                examples_per_sec: rate,
            });
            println!(
                "{}: step {}, loss = {:.2} ({:.1} examples/sec; {:.3} sec/batch)",
                log_timestamp(),
                state.step,
                loss,
                rate,
                elapsed
            );
        }
    }

    fn summarize(&self) {
        if self.total_step > 0.0 {
            tracing::info!(
                "waited {:.1}s for data and computed {:.1}s: data wait is {:.1}% of step time",
                self.total_wait,
                self.total_step,
                100.0 * self.total_wait / (self.total_wait + self.total_step)
            );
        }
    }
}

async fn checkpoint(
    store: &Store,
    streams: &Streams,
    settings: &Settings,
    state: &mut TrainState,
    cfg: &ModelConfig,
    shutdown: &CancellationToken,
) -> Result<(), TrainError> {
    let run = &settings.pipeline.run;
    let lineage = state.lineage.lineage();
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
        lineage,
    };
    saver::save(store, streams, &meta, &state.checkpoint_tensors(), settings.train.keep_checkpoints, shutdown).await?;
    // The next checkpoint's examples are counted from this one.
    state.lineage.saved(&keys::checkpoint_metadata(run, meta.step), meta.step, meta.lineage);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use inception_proto::Message;

    fn announced(uri: &str, records: u64) -> Bytes {
        Bytes::from(
            ShardReady { uri: uri.into(), records, split: "train".into(), ..Default::default() }.encode_to_vec(),
        )
    }

    #[test]
    fn only_accepted_announcements_count_toward_an_epoch() {
        let history = [
            announced("datasets/flowers/train-00000-of-00002", 100),
            announced("datasets/flowers/train-00001-of-00002", 50),
            announced("datasets/flowers/train-00001-of-00002", 50), // announced again: counted once
            announced("datasets/flowers/validation-00000-of-00001", 1000),
            announced("datasets/other/train-00000-of-00001", 1000),
            announced("datasets/flowers/../other/train-00000-of-00001", 1000),
            announced("datasets/flowers/train-live-00000001", u64::MAX), // more than any shard holds
            Bytes::from_static(b"\xff\xff not a message"),
        ];
        assert_eq!(announced_examples(&history, "flowers"), 150);
        assert_eq!(announced_examples(&history[3..], "flowers"), 1, "nothing accepted: at least 1");
    }
}
