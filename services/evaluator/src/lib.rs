//! The evaluator: precision@1 and recall@5 of each new checkpoint on the
//! validation shards, with the original's central-crop preprocessing and
//! output lines, plus what a practitioner acts on ([`scores`]): precision
//! and recall by label, the confusion matrix and the validation loss.
//!
//! It learns of checkpoints from `CheckpointReady` announcements and also
//! polls the run's `checkpoint` pointer every `eval.eval_interval`.
//! Each checkpoint is evaluated once: a result object
//! `eval/<run>/step-<N>.json` marks it done, also across restarts. A
//! checkpoint that cannot be loaded, or whose logits are NaN or infinite,
//! is reported and skipped, not retried, and gets no score.
//!
//! It also keeps the run's `best` pointer ([`BestPointer`]) at the evaluated
//! checkpoint with the highest precision@1 (ties: the lower validation loss),
//! and applies the promotion gate ([`promotion`]) to each evaluation: the
//! `promoted` pointer ([`PromotedPointer`]), a `CheckpointPromoted`
//! announcement and a recorded decision.

pub mod classify;
pub mod promotion;
pub mod scores;
pub mod topk;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use bytes::Bytes;
use inception_core::example::parse_image_example;
use inception_core::nats::{NatsError, Streams};
use inception_core::shutdown::CancellationToken;
use inception_core::store::StoreError;
use inception_core::telemetry::{log_timestamp, Readiness};
use inception_core::tfevents::OptionalEvents;
use inception_core::{keys, tfrecord, Settings, Store};
use inception_model::checkpoint::{self, BestPointer, CheckpointPointer, PromotedPointer};
use inception_model::precision::Precision;
use inception_model::{images_to_input, Mode, TorchFailure};
use inception_proto::pipeline::{CheckpointPromoted, CheckpointReady, EvalResult};
use inception_proto::Message;
use scores::{ClassScore, ConfusionMatrix, ScoreError, Tally};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::time::{Duration, Instant};
use tch::{nn::VarStore, Device, Kind, Tensor};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Nats(#[from] NatsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("checkpoint {key}: {message}")]
    Checkpoint { key: String, message: String },
    #[error("no validation shards under {0}")]
    NoData(String),
    #[error("{0}")]
    Config(String),
    #[error("out of memory on {device} evaluating a batch of {batch}: lower eval.batch_size (libtorch: {message})")]
    OutOfMemory { device: String, batch: i64, message: String },
    #[error("libtorch failed evaluating {key}: {message}")]
    Libtorch { key: String, message: String },
    /// The checkpoint's weights are broken (NaN or infinite logits): refused
    /// without a score, since `in_top_k` would count every example as a hit.
    #[error("checkpoint {key} refused: {message}; it gets no score (diverged or damaged weights)")]
    NonFinite { key: String, message: String },
}

/// The error for logits that cannot be scored: non-finite ones refuse the
/// checkpoint; labels or shapes that do not fit are the checkpoint's fault too.
fn score_error(key: &str, e: ScoreError) -> EvalError {
    match e {
        ScoreError::NonFinite { .. } => EvalError::NonFinite { key: key.to_string(), message: e.to_string() },
        other => EvalError::Checkpoint { key: key.to_string(), message: other.to_string() },
    }
}

/// The error for a batch that libtorch failed to evaluate: running out of
/// memory is told apart, since the fix is a setting, not the checkpoint.
pub fn batch_failure(failure: TorchFailure, key: &str, batch: i64, device: Device) -> EvalError {
    if failure.out_of_memory {
        EvalError::OutOfMemory { device: format!("{device:?}"), batch, message: failure.message }
    } else {
        EvalError::Libtorch { key: key.to_string(), message: failure.message }
    }
}

/// What one evaluation found; also the JSON written to the store
/// (`eval/<run>/step-<N>.json`). The fields after `evaluated_at_unix` are
/// absent from results written before they existed (read back as empty, or
/// NaN for the loss).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub run: String,
    pub step: u64,
    /// Key of the checkpoint's metadata.
    pub checkpoint: String,
    pub precision_at_1: f64,
    pub recall_at_5: f64,
    pub examples: u64,
    pub evaluated_at_unix: i64,
    /// Key of the checkpoint's tensors.
    #[serde(default)]
    pub weights: String,
    /// Mean cross-entropy of the logits over the counted examples (natural
    /// log, no label smoothing, no auxiliary head, no weight decay).
    #[serde(default = "not_recorded")]
    pub validation_loss: f64,
    /// Precision and recall of each label (see [`scores::Tally::class_scores`]).
    #[serde(default)]
    pub classes: Vec<ClassScore>,
    /// Rows: true label; columns: top-1 prediction.
    #[serde(default)]
    pub confusion: ConfusionMatrix,
}

fn not_recorded() -> f64 {
    f64::NAN
}

impl Evaluation {
    /// The original's final line, without the leading timestamp.
    pub fn line(&self) -> String {
        format!(
            "precision @ 1 = {:.4} recall @ 5 = {:.4} [{} examples]",
            self.precision_at_1, self.recall_at_5, self.examples
        )
    }

    /// The per-class table printed under [`Evaluation::line`], and the
    /// validation loss.
    pub fn class_report(&self) -> String {
        format!("{}\nvalidation loss = {:.4}", scores::class_table(&self.classes), self.validation_loss)
    }
}

/// Validation images after eval preprocessing, kept between evaluations.
struct ValidationSet {
    shards: Vec<String>,
    image_size: u32,
    pixels: Vec<u8>,
    labels: Vec<i64>,
}

pub struct Evaluator {
    settings: Settings,
    store: Store,
    device: Device,
    /// The forward pass's arithmetic (`eval.precision`, resolved).
    precision: Precision,
    cache: Option<ValidationSet>,
    failed: HashSet<String>,
    /// Evaluations whose reporting failed (NATS or the store away): kept, so
    /// that reporting them again does not need their checkpoint, which the
    /// trainer may have pruned meanwhile.
    unreported: std::collections::HashMap<String, Evaluation>,
    events: OptionalEvents,
}

impl Evaluator {
    pub fn new(settings: Settings, store: Store) -> Result<Self, EvalError> {
        let device = inception_model::device_from_setting(settings.eval.device).map_err(EvalError::Config)?;
        inception_model::set_cudnn_benchmark(device, settings.eval.cudnn_benchmark);
        inception_model::set_cpu_threads(settings.eval.threads, "eval.threads");
        let precision =
            Precision::resolve(settings.eval.precision, device, "eval.precision").map_err(EvalError::Config)?;
        let events = OptionalEvents::open(&settings.eval.tensorboard_dir);
        Ok(Self {
            settings,
            store,
            device,
            precision,
            cache: None,
            failed: HashSet::new(),
            unreported: std::collections::HashMap::new(),
            events,
        })
    }

    async fn validation(&mut self, image_size: u32) -> Result<&ValidationSet, EvalError> {
        let dataset = &self.settings.dataset.name;
        let prefix = format!("{}/validation-", keys::dataset_dir(dataset));
        let shards = self.store.list(&prefix).await?;
        if shards.is_empty() {
            return Err(EvalError::NoData(prefix));
        }
        let fresh = matches!(&self.cache, Some(c) if c.shards == shards && c.image_size == image_size);
        if !fresh {
            let mut pixels = Vec::new();
            let mut labels = Vec::new();
            let max_pixels = self.settings.pipeline.max_image_pixels;
            let central_fraction = self.settings.augment.eval_central_fraction;
            for shard in &shards {
                let bytes = self.store.get(shard).await?;
                let (p, l) = tokio::task::block_in_place(|| {
                    preprocess_shard(shard, &bytes, image_size, max_pixels, central_fraction)
                });
                pixels.extend(p);
                labels.extend(l);
            }
            self.cache = Some(ValidationSet { shards, image_size, pixels, labels });
        }
        self.cache.as_ref().ok_or_else(|| EvalError::NoData(prefix))
    }

    /// Evaluates the checkpoint whose metadata is at `metadata_key`.
    pub async fn evaluate(&mut self, metadata_key: &str) -> Result<Evaluation, EvalError> {
        let fail = |message: String| EvalError::Checkpoint { key: metadata_key.to_string(), message };
        let (meta, tensors) =
            checkpoint::read(&self.store, metadata_key).await.map_err(|e| checkpoint_error(metadata_key, e))?;
        // `read` refused metadata out of bounds before reading any weight.
        let vs = VarStore::new(self.device);
        let (model, averaged) =
            checkpoint::inference_model(&vs, &meta.model, &tensors).map_err(|e| fail(e.to_string()))?;
        tracing::info!("evaluating {} weights", if averaged { "moving-average" } else { "raw" });
        println!("{}: Successfully loaded model from {metadata_key} at step={}.", log_timestamp(), meta.step);

        let size = meta.model.image_size as u32;
        let batch_size = self.settings.eval.batch_size as usize;
        let wanted = self.settings.eval.num_examples as usize;
        let round_up = self.settings.eval.round_up_to_batches;
        let (device, precision) = (self.device, self.precision);
        let data = self.validation(size).await?;
        let available = data.labels.len();
        if available == 0 {
            return Err(EvalError::NoData(format!("{} (no readable validation record)", metadata_key)));
        }
        let total = examples_to_count(wanted, available, batch_size, round_up);
        let per_image = (size as usize).pow(2) * 3;
        let num_batches = total.div_ceil(batch_size);
        let (mut top1, mut top5) = (0i64, 0i64);
        let mut tally = Tally::new(meta.model.num_classes.max(0) as usize);
        let started = Instant::now();
        let mut window = Instant::now();
        for b in 0..num_batches {
            // Example i is record i mod available: the original's queue wraps around.
            let picks: Vec<usize> =
                (b * batch_size..((b + 1) * batch_size).min(total)).map(|i| i % available).collect();
            let n = picks.len() as i64;
            let mut pixels = Vec::with_capacity(picks.len() * per_image);
            picks.iter().for_each(|&i| pixels.extend_from_slice(&data.pixels[i * per_image..(i + 1) * per_image]));
            let picked: Vec<i64> = picks.iter().map(|&i| data.labels[i]).collect();
            let images = Tensor::from_slice(&pixels).view([n, size as i64, size as i64, 3]);
            let labels = Tensor::from_slice(&picked).to_device(device);
            let (hits1, hits5, logits) = inception_model::catch_torch(|| {
                let (logits, _) = tch::no_grad(|| {
                    model.forward_in(precision, &images_to_input(&images.to_device(device)), Mode::Eval)
                });
                let hits = |k| topk::in_top_k(&logits, &labels, k).sum(Kind::Int64).int64_value(&[]);
                let flat = logits.to_kind(Kind::Float).to_device(Device::Cpu).contiguous().view([-1]);
                (hits(1), hits(5), Vec::<f32>::try_from(&flat))
            })
            .map_err(|failure| batch_failure(failure, metadata_key, n, device))?;
            let logits =
                logits.map_err(|e| EvalError::Libtorch { key: metadata_key.to_string(), message: e.to_string() })?;
            // Before the hits count: NaN logits make every example an in_top_k hit.
            tally.add(&logits, &picked).map_err(|e| score_error(metadata_key, e))?;
            top1 += hits1;
            top5 += hits5;
            if (b + 1) % 20 == 0 {
                let secs = window.elapsed().as_secs_f64() / 20.0;
                println!(
                    "{}: [{} batches out of {}] ({:.1} examples/sec; {:.3}sec/batch)",
                    log_timestamp(),
                    b + 1,
                    num_batches,
                    batch_size as f64 / secs,
                    secs
                );
                window = Instant::now();
            }
        }
        metrics::histogram!("inception_eval_duration_seconds").record(started.elapsed().as_secs_f64());
        Ok(Evaluation {
            run: meta.run.clone(),
            step: meta.step,
            checkpoint: metadata_key.to_string(),
            precision_at_1: top1 as f64 / total as f64,
            recall_at_5: top5 as f64 / total as f64,
            examples: total as u64,
            evaluated_at_unix: chrono::Utc::now().timestamp(),
            weights: meta.weights.clone(),
            validation_loss: tally.validation_loss(),
            classes: tally.class_scores(&meta.labels),
            confusion: tally.confusion(&meta.labels),
        })
    }

    /// Evaluates, prints, records and announces; skips checkpoints done before.
    /// Returns `None` when skipped.
    pub async fn evaluate_and_report(
        &mut self,
        streams: &Streams,
        metadata_key: &str,
        force: bool,
    ) -> Result<Option<Evaluation>, EvalError> {
        self.evaluate_and_report_to(Some(streams), metadata_key, force).await
    }

    /// As [`Evaluator::evaluate_and_report`]; without `streams` the result
    /// goes only to the store and the output (`--run-once` needs no NATS).
    async fn evaluate_and_report_to(
        &mut self,
        streams: Option<&Streams>,
        metadata_key: &str,
        force: bool,
    ) -> Result<Option<Evaluation>, EvalError> {
        let run = self.settings.pipeline.run.clone();
        let Some(step) = checkpoint::step_of(metadata_key) else {
            return Err(EvalError::Checkpoint {
                key: metadata_key.into(),
                message: "not a model.ckpt-<step>.json key".into(),
            });
        };
        let result_key = keys::eval_result(&run, step);
        if !force && (self.failed.contains(metadata_key) || self.store.exists(&result_key).await?) {
            return Ok(None);
        }
        let evaluated = match self.unreported.remove(metadata_key) {
            Some(e) if !force => Ok(e),
            _ => self.evaluate(metadata_key).await,
        };
        let evaluation = match evaluated {
            Ok(e) => e,
            Err(
                e @ (EvalError::Checkpoint { .. }
                | EvalError::NonFinite { .. }
                | EvalError::Store(StoreError::NotFound { .. })),
            ) => {
                self.failed.insert(metadata_key.to_string());
                metrics::counter!("inception_eval_failures_total").increment(1);
                if matches!(e, EvalError::NonFinite { .. }) {
                    metrics::counter!("inception_eval_non_finite_checkpoints_total").increment(1);
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        // Announce first, then mark done: a crash between the two evaluates
        // again and announces under the same message id (deduplicated), where
        // the other order could lose the announcement for good. The best
        // pointer comes before the mark too: evaluating again gives the same
        // scores, which leave it as it is.
        if let Err(e) = self.report(streams, &evaluation, &result_key, force).await {
            self.unreported.insert(metadata_key.to_string(), evaluation);
            return Err(e);
        }
        println!("{}: {}", log_timestamp(), evaluation.line());
        println!("{}", evaluation.class_report());
        record_metrics(&evaluation);
        self.record_events(&evaluation);
        Ok(Some(evaluation))
    }

    /// Announces, moves the best pointer, applies the gate and writes the
    /// result (the mark that it is done), in that order.
    async fn report(
        &mut self,
        streams: Option<&Streams>,
        evaluation: &Evaluation,
        result_key: &str,
        force: bool,
    ) -> Result<(), EvalError> {
        if let Some(streams) = streams {
            self.announce(streams, evaluation, force).await?;
        }
        self.update_best(evaluation).await?;
        self.gate(streams, evaluation).await?;
        let json = serde_json::to_vec_pretty(evaluation).map_err(|e| EvalError::Config(e.to_string()))?;
        self.store.put(result_key, Bytes::from(json)).await?;
        Ok(())
    }

    /// TensorBoard: the original's tags, the validation loss, precision and
    /// recall by label (`precision/<label>`, `recall/<label>`; left out where
    /// undefined) and the confusion matrix as a markdown table (text plugin).
    fn record_events(&mut self, evaluation: &Evaluation) {
        let mut values = vec![
            ("Precision @ 1".to_string(), evaluation.precision_at_1),
            ("Recall @ 5".to_string(), evaluation.recall_at_5),
            ("validation_loss".to_string(), evaluation.validation_loss),
        ];
        for class in &evaluation.classes {
            values.extend(class.precision.map(|p| (format!("precision/{}", class.label), p)));
            values.extend(class.recall.map(|r| (format!("recall/{}", class.label), r)));
        }
        let tags: Vec<(&str, f64)> = values.iter().map(|(tag, v)| (tag.as_str(), *v)).collect();
        self.events.scalars(evaluation.step, &tags);
        self.events.text(evaluation.step, "confusion_matrix", &scores::confusion_markdown(&evaluation.confusion));
    }

    /// Points the run's `best` at the evaluated checkpoint when it beats the
    /// current best (higher precision@1; on a tie, lower validation loss), or
    /// when there is none, it is unreadable, or its checkpoint is gone. The
    /// pointer is written whole in one put. A checkpoint the trainer pruned
    /// while it was being evaluated is not pointed at. Returns whether it
    /// moved. [`Evaluator::evaluate_and_report`] calls it for every evaluation.
    pub async fn update_best(&self, evaluation: &Evaluation) -> Result<bool, EvalError> {
        let run = &self.settings.pipeline.run;
        let key = keys::checkpoint_best(run);
        let current = match checkpoint::read_best(&self.store, run).await {
            Ok(current) => current,
            Err(checkpoint::CheckpointError::Store(e)) => return Err(e.into()),
            Err(e) => {
                tracing::warn!("{e}; it will be replaced");
                None
            }
        };
        if let Some(best) = &current {
            let beaten = best.is_beaten_by(evaluation.precision_at_1, evaluation.validation_loss);
            if !beaten && self.store.exists(&best.weights).await? {
                return Ok(false);
            }
        }
        if !(self.store.exists(&evaluation.weights).await? && self.store.exists(&evaluation.checkpoint).await?) {
            tracing::warn!("{} is gone (pruned while evaluated?): {key} not moved to it", evaluation.checkpoint);
            return Ok(false);
        }
        let pointer = BestPointer {
            step: evaluation.step,
            metadata: evaluation.checkpoint.clone(),
            weights: evaluation.weights.clone(),
            precision_at_1: evaluation.precision_at_1,
            validation_loss: evaluation.validation_loss,
        };
        let json = serde_json::to_vec_pretty(&pointer).map_err(|e| EvalError::Config(e.to_string()))?;
        self.store.put(&key, Bytes::from(json)).await?;
        tracing::info!(
            "best checkpoint of run {run}: step {} (precision@1 {:.4}, validation loss {:.4})",
            pointer.step,
            pointer.precision_at_1,
            pointer.validation_loss
        );
        Ok(true)
    }

    /// The promotion gate ([`promotion`], `[promotion]`) on one evaluation:
    /// the decision is recorded (`checkpoints/<run>/promotions/step-<N>.json`,
    /// `inception_promotions_total`, a log line), then a promoted checkpoint
    /// gets the run's `promoted` pointer (one put) and is announced
    /// (`CheckpointPromoted`) when `streams` is given; `--run-once` has no
    /// NATS and cannot announce. The decision comes first: after a crash the
    /// evaluation is repeated and decides the same; a checkpoint already
    /// promoted is only announced again (same message id). None when the
    /// gate is off or the checkpoint is the promoted one already.
    pub async fn gate(
        &self,
        streams: Option<&Streams>,
        evaluation: &Evaluation,
    ) -> Result<Option<promotion::Decision>, EvalError> {
        let cfg = &self.settings.promotion;
        if !cfg.enabled {
            return Ok(None);
        }
        let run = &self.settings.pipeline.run;
        let current = match checkpoint::read_promoted(&self.store, run).await {
            Ok(current) => current,
            Err(checkpoint::CheckpointError::Store(e)) => return Err(e.into()),
            Err(e) => {
                tracing::warn!("{e}; judged as if nothing were promoted, and replaced if it passes");
                None
            }
        };
        if let Some(current) = current.as_ref().filter(|c| c.step == evaluation.step) {
            if let Some(streams) = streams {
                self.announce_promotion(streams, current).await?;
            }
            return Ok(None);
        }
        let classes = match &current {
            Some(c) => self.promoted_classes(c.step).await,
            None => None,
        };
        let policy = promotion::Policy::from(cfg);
        let mut decision = promotion::decide(&policy, evaluation, current.as_ref().map(|c| (c, classes.as_deref())));
        let files_there =
            self.store.exists(&evaluation.weights).await? && self.store.exists(&evaluation.checkpoint).await?;
        if decision.decision == promotion::Verdict::Promoted && !files_there {
            decision.decision = promotion::Verdict::Rejected;
            decision.reasons = vec![format!("{} is gone (pruned while it was evaluated)", evaluation.checkpoint)];
        }
        let promoted = decision.decision == promotion::Verdict::Promoted;
        decision.announced = promoted && streams.is_some();
        self.record_decision(&decision).await?;
        if promoted {
            let pointer = PromotedPointer {
                step: evaluation.step,
                metadata: evaluation.checkpoint.clone(),
                weights: evaluation.weights.clone(),
                precision_at_1: evaluation.precision_at_1,
                validation_loss: evaluation.validation_loss,
                examples: evaluation.examples,
                promoted_unix: decision.decided_unix,
                previous_step: current.as_ref().map(|c| c.step),
                decision: keys::promotion_decision(run, evaluation.step),
            };
            let json = serde_json::to_vec_pretty(&pointer).map_err(|e| EvalError::Config(e.to_string()))?;
            self.store.put(&keys::checkpoint_promoted(run), Bytes::from(json)).await?;
            metrics::gauge!("inception_promoted_step").set(pointer.step as f64);
            match streams {
                Some(streams) => self.announce_promotion(streams, &pointer).await?,
                None => tracing::info!(
                    "step {} promoted without an announcement (--run-once has no NATS): readers of {} see it",
                    pointer.step,
                    keys::checkpoint_promoted(run)
                ),
            }
        }
        Ok(Some(decision))
    }

    /// The per-label scores of the promoted checkpoint's evaluation; None
    /// (logged) when they cannot be read.
    async fn promoted_classes(&self, step: u64) -> Option<Vec<ClassScore>> {
        let key = keys::eval_result(&self.settings.pipeline.run, step);
        let read = match self.store.get(&key).await {
            Ok(bytes) => serde_json::from_slice::<Evaluation>(&bytes).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match read {
            Ok(evaluation) => Some(evaluation.classes),
            Err(e) => {
                tracing::warn!("the promoted checkpoint's evaluation {key}: {e}; recall is not compared");
                None
            }
        }
    }

    /// Writes the decision object, counts it and logs it.
    async fn record_decision(&self, decision: &promotion::Decision) -> Result<(), EvalError> {
        let key = keys::promotion_decision(&decision.run, decision.step);
        let json = serde_json::to_vec_pretty(decision).map_err(|e| EvalError::Config(e.to_string()))?;
        self.store.put(&key, Bytes::from(json)).await?;
        metrics::counter!("inception_promotions_total", "decision" => decision.decision.as_str()).increment(1);
        let reasons = decision.reasons.join("; ");
        match decision.decision {
            promotion::Verdict::Promoted => {
                tracing::info!("promotion: step {} promoted ({reasons}); decision in {key}", decision.step);
            }
            promotion::Verdict::Rejected => {
                tracing::warn!("promotion: step {} rejected: {reasons}; decision in {key}", decision.step);
            }
        }
        Ok(())
    }

    /// Publishes `CheckpointPromoted`, retried until acknowledged; the
    /// message id is `<run>-promoted-<step>`, so announcing again is harmless.
    async fn announce_promotion(&self, streams: &Streams, pointer: &PromotedPointer) -> Result<(), EvalError> {
        let run = &self.settings.pipeline.run;
        streams.promotions().await?;
        let message = CheckpointPromoted {
            run: run.clone(),
            step: pointer.step,
            uri: pointer.weights.clone(),
            metadata_uri: pointer.metadata.clone(),
            precision_at_1: pointer.precision_at_1,
            previous_step: pointer.previous_step.unwrap_or(0),
        };
        let id = format!("{run}-promoted-{}", pointer.step);
        let payload = Bytes::from(message.encode_to_vec());
        streams.publish_acked(&streams.subjects.promotions(run), payload, &id, &CancellationToken::new()).await?;
        Ok(())
    }

    /// Publishes the `EvalResult`, retried until acknowledged. Its message
    /// id is the checkpoint's (`<run>-<step>`), so a second evaluation of the
    /// same checkpoint within the duplicate window is not announced twice;
    /// a forced one (`--run-once`) is a new result with its own id.
    async fn announce(&self, streams: &Streams, evaluation: &Evaluation, force: bool) -> Result<(), EvalError> {
        let run = self.settings.pipeline.run.clone();
        let message = EvalResult {
            run: run.clone(),
            step: evaluation.step,
            checkpoint_uri: evaluation.checkpoint.clone(),
            precision_at_1: evaluation.precision_at_1,
            recall_at_5: evaluation.recall_at_5,
            examples: evaluation.examples,
            evaluated_at_unix: evaluation.evaluated_at_unix,
            validation_loss: evaluation.validation_loss,
        };
        let shutdown = CancellationToken::new();
        let id = match force {
            true => format!("{run}-{}-{}", evaluation.step, evaluation.evaluated_at_unix),
            false => format!("{run}-{}", evaluation.step),
        };
        streams
            .publish_acked(&streams.subjects.evals(&run), Bytes::from(message.encode_to_vec()), &id, &shutdown)
            .await?;
        Ok(())
    }

    async fn latest(&self) -> Result<Option<CheckpointPointer>, EvalError> {
        let run = &self.settings.pipeline.run;
        checkpoint::read_pointer(&self.store, run)
            .await
            .map_err(|e| checkpoint_error(&keys::checkpoint_pointer(run), e))
    }

    /// `--run-once`: evaluates the latest checkpoint and returns. The
    /// result is announced on `streams` when given; it is always in the
    /// store (`eval/<run>/step-<step>.json`) and the output.
    pub async fn run_once(&mut self, streams: Option<&Streams>) -> Result<Option<Evaluation>, EvalError> {
        match self.latest().await? {
            Some(p) => self.evaluate_and_report_to(streams, &p.metadata, true).await,
            None => {
                println!(
                    "{}: No checkpoint file found at {}",
                    log_timestamp(),
                    keys::checkpoint_pointer(&self.settings.pipeline.run)
                );
                Ok(None)
            }
        }
    }

    /// Evaluates every checkpoint the pointer keeps that has no result yet,
    /// oldest first: those announced while this evaluator was down or cut
    /// off from NATS are not left out.
    async fn catch_up(&mut self, streams: &Streams, pointer: &CheckpointPointer) {
        // Those whose reporting failed first (their checkpoint may be gone).
        let mut kept: Vec<String> = self.unreported.keys().cloned().collect();
        kept.sort_by_key(|k| checkpoint::step_of(k));
        for key in pointer.all.iter().chain(std::iter::once(&pointer.metadata)) {
            if !kept.contains(key) {
                kept.push(key.clone());
            }
        }
        for key in kept {
            if let Err(e) = self.evaluate_and_report(streams, &key, false).await {
                tracing::error!("evaluation skipped: {e}");
            }
        }
    }

    /// Watches announcements and polls the pointer until shutdown. `ready`
    /// is set once announcements are followed: one published after that is
    /// seen (before it, only the polling would find its checkpoint).
    pub async fn watch(
        &mut self,
        streams: &Streams,
        ready: &Readiness,
        shutdown: &CancellationToken,
    ) -> Result<(), EvalError> {
        let run = self.settings.pipeline.run.clone();
        // One evaluator per run writes its results: a half-written one is from before a crash.
        self.store.remove_stale_temporaries(&format!("eval/{run}"), Duration::ZERO);
        // Likewise its `best` and `promoted` pointers (only the evaluator writes them).
        self.store.remove_temporaries_of(&keys::checkpoint_best(&run));
        self.store.remove_temporaries_of(&keys::checkpoint_promoted(&run));
        if let Ok(Some(promoted)) = checkpoint::read_promoted(&self.store, &run).await {
            metrics::gauge!("inception_promoted_step").set(promoted.step as f64);
        }
        let stream = streams.checkpoints().await?;
        streams.evals().await?;
        streams.promotions().await?;
        // Made again whenever it is lost (NATS restarts, partitions), so
        // announcements keep coming; the polling below catches up on any missed.
        let config = pull::Config {
            filter_subject: streams.subjects.checkpoints(&run),
            deliver_policy: DeliverPolicy::New,
            ack_policy: AckPolicy::None,
            inactive_threshold: Duration::from_secs(120),
            ..Default::default()
        };
        let mut messages = inception_core::follow::Follower::new(stream, config, "checkpoint announcements");
        if let Err(e) = messages.start().await {
            // Followed as soon as NATS lets us (next() retries); polling covers the gap.
            tracing::warn!("checkpoint announcements: {e}");
        }
        ready.set(true);
        let mut poll = tokio::time::interval(self.settings.eval.eval_interval.max(Duration::from_secs(1)));
        let dir = keys::checkpoint_dir(&run);
        loop {
            let key = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = poll.tick() => match self.latest().await {
                    Ok(Some(p)) => { self.catch_up(streams, &p).await; continue }
                    Ok(None) => continue,
                    Err(e) => { tracing::error!("{e}"); continue }
                },
                m = messages.next() => match m {
                    None => return Ok(()),
                    Some(Err(e)) => { tracing::warn!("checkpoint announcements: {e}"); continue }
                    Some(Ok(m)) => match inception_core::nats::decode_control::<CheckpointReady>(&m.payload) {
                        Ok(c) if keys::below(&c.metadata_uri, &dir).is_some() => c.metadata_uri,
                        Ok(c) => { reject(&format!("announcement of {} outside {dir}/", c.metadata_uri)); continue }
                        Err(e) => { reject(&e.to_string()); continue }
                    },
                },
            };
            match self.evaluate_and_report(streams, &key, false).await {
                Ok(_) => {}
                Err(e) => tracing::error!("evaluation skipped: {e}"),
            }
        }
    }
}

/// Prometheus: the last evaluation's scores, by label where per class
/// (`label` = the label's name; NaN where precision or recall is undefined).
fn record_metrics(evaluation: &Evaluation) {
    metrics::gauge!("inception_eval_precision_at_1").set(evaluation.precision_at_1);
    metrics::gauge!("inception_eval_recall_at_5").set(evaluation.recall_at_5);
    metrics::gauge!("inception_eval_validation_loss").set(evaluation.validation_loss);
    metrics::gauge!("inception_eval_checkpoint_step").set(evaluation.step as f64);
    metrics::gauge!("inception_eval_last_evaluation_timestamp_seconds").set(evaluation.evaluated_at_unix as f64);
    metrics::counter!("inception_eval_evaluations_total").increment(1);
    for class in &evaluation.classes {
        let label = class.label.clone();
        metrics::gauge!("inception_eval_class_precision", "label" => label.clone())
            .set(class.precision.unwrap_or(f64::NAN));
        metrics::gauge!("inception_eval_class_recall", "label" => label).set(class.recall.unwrap_or(f64::NAN));
    }
}

/// A checkpoint announcement that is not one: logged and counted.
fn reject(reason: &str) {
    metrics::counter!("inception_eval_rejected_messages_total").increment(1);
    tracing::warn!("ignoring checkpoint announcement: {reason}");
}

/// Store failures stay store errors (retried later); anything else about a
/// checkpoint names it.
fn checkpoint_error(key: &str, e: checkpoint::CheckpointError) -> EvalError {
    match e {
        checkpoint::CheckpointError::Store(s) => EvalError::Store(s),
        other => EvalError::Checkpoint { key: key.to_string(), message: other.to_string() },
    }
}

/// How many examples an evaluation counts. Exact (default): each record
/// once, at most `wanted` (0 = all). `round_up`: the original's
/// `ceil(num_examples / batch) * batch`, wrapping around the records.
pub fn examples_to_count(wanted: usize, available: usize, batch_size: usize, round_up: bool) -> usize {
    let wanted = if wanted == 0 { available } else { wanted };
    if round_up {
        wanted.div_ceil(batch_size) * batch_size
    } else {
        wanted.min(available)
    }
}

/// Eval preprocessing of every record of one shard (bad records are counted
/// and skipped; the central crop keeps `central_fraction` of each side):
/// returns the pixels (HWC u8, concatenated) and labels.
fn preprocess_shard(
    name: &str,
    bytes: &[u8],
    size: u32,
    max_pixels: u64,
    central_fraction: f64,
) -> (Vec<u8>, Vec<i64>) {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for (i, record) in tfrecord::records(bytes).enumerate() {
        let outcome = record
            .map_err(|e| e.to_string())
            .and_then(|r| parse_image_example(r).map_err(|e| e.to_string()))
            .and_then(|p| {
                inception_vision::decode_rgb(&p.encoded, max_pixels).map(|d| (d, p.label)).map_err(|e| e.to_string())
            });
        match outcome {
            Ok((decoded, label)) => {
                pixels.extend(inception_vision::eval_image_with(&decoded.image, size, central_fraction));
                labels.push(label);
            }
            Err(reason) => {
                metrics::counter!("inception_eval_errors_total", "kind" => "record").increment(1);
                tracing::warn!("{name}, record {i}: {reason}; skipped");
            }
        }
    }
    (pixels, labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_batch_says_whether_to_lower_the_batch_size() {
        let oom =
            TorchFailure::from_message("CUDA out of memory. Tried to allocate 9.00 GiB\nException raised from malloc");
        let e = batch_failure(oom, "checkpoints/r/model.ckpt-10.json", 1024, Device::Cuda(0));
        assert!(matches!(e, EvalError::OutOfMemory { batch: 1024, .. }), "{e:?}");
        let text = e.to_string();
        assert!(
            text.contains("lower eval.batch_size")
                && text.contains("Cuda(0)")
                && text.contains("Tried to allocate 9.00 GiB"),
            "{text}"
        );
        assert!(!text.contains("Exception raised"), "{text}");
        // Anything else names the checkpoint.
        let other = batch_failure(
            TorchFailure::from_message("device-side assert triggered"),
            "checkpoints/r/model.ckpt-10.json",
            32,
            Device::Cpu,
        );
        assert_eq!(
            other.to_string(),
            "libtorch failed evaluating checkpoints/r/model.ckpt-10.json: device-side assert triggered"
        );
        assert!(
            inception_model::catch_torch(|| Tensor::zeros([2, 3], (Kind::Float, Device::Cpu))
                .matmul(&Tensor::zeros([2, 3], (Kind::Float, Device::Cpu))))
            .is_err(),
            "a libtorch exception is caught"
        );
    }

    #[test]
    fn exact_or_rounded_up_like_the_original() {
        assert_eq!(examples_to_count(50000, 50000, 32, false), 50000);
        assert_eq!(examples_to_count(50000, 50000, 32, true), 50016);
        assert_eq!(examples_to_count(0, 500, 32, false), 500);
        assert_eq!(examples_to_count(0, 500, 32, true), 512);
        assert_eq!(examples_to_count(600, 500, 25, false), 500);
        assert_eq!(examples_to_count(500, 500, 25, true), 500);
    }
}
