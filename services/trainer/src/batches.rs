//! The batch source: messages from the `BATCHES` work queue, the batch
//! objects they point at, checked against the model, and the one place that
//! decides, from an [`Outcome`], what becomes of a message: acknowledged,
//! handed back for redelivery, or terminated.

use async_nats::jetstream::{self, consumer::PullConsumer, AckKind};
use futures::StreamExt;
use inception_core::batch::Batch;
use inception_core::shutdown::{sleep_or_cancel, CancellationToken};
use inception_core::stall::Stall;
use inception_core::store::StoreError;
use inception_core::{keys, Store};
use inception_proto::pipeline::{BatchReady, ShardExamples};
use std::time::{Duration, Instant};
use tch::{Kind, Tensor};

/// What became of a delivered batch message; [`settle`] acts on it.
#[derive(Debug)]
pub enum Outcome {
    /// Trained on: acknowledged (it leaves the queue) and its object deleted.
    Trained,
    /// Malformed, outside the dataset, missing, empty, too large or of the
    /// wrong shape: no retry can help, so it is terminated (JetStream's
    /// `+TERM`: it leaves the work queue and is never delivered again),
    /// logged with the reason and counted.
    Unusable(String),
    /// The step failed, not the batch: handed back at once (a batch handed
    /// back `train.batch_max_deliveries` times is terminated when it comes
    /// again, so that one cannot end the trainer at every restart).
    StepFailed,
    /// Not trained on because the job stopped first (data-parallel ranks
    /// stop together): handed back at once for the next trainer.
    HandedBack,
}

/// Acknowledges, hands back or terminates a message as its outcome says.
async fn settle(message: &jetstream::Message, outcome: &Outcome) {
    match outcome {
        Outcome::Trained => {
            if let Err(e) = message.ack().await {
                tracing::warn!("ack of a trained batch failed ({e}); it may be trained on again");
            }
        }
        Outcome::Unusable(reason) => {
            metrics::counter!("inception_trainer_rejected_batches_total").increment(1);
            tracing::error!("terminating a batch message (it is not delivered again): {reason}");
            if let Err(e) = message.ack_with(AckKind::Term).await {
                tracing::warn!("terminating the batch message failed ({e}); it may be delivered again");
            }
        }
        Outcome::StepFailed | Outcome::HandedBack => {
            message.ack_with(AckKind::Nak(None)).await.ok();
        }
    }
}

/// A batch fit for a step, with the message it came in.
pub struct Delivery {
    message: jetstream::Message,
    /// The batch object's key.
    pub key: String,
    pub batch: Batch,
    /// The shards its images came from, as its message says (lineage).
    pub shards: Vec<ShardExamples>,
    /// From the end of the previous step until this message arrived.
    pub waited: Duration,
    /// When the message arrived: a step's time counts from here.
    pub arrived: Instant,
}

impl Delivery {
    /// The images (`[N, S, S, 3]` u8) and labels (i64) as tensors.
    pub fn tensors(&self) -> (Tensor, Tensor) {
        let (n, s) = (self.batch.len() as i64, i64::from(self.batch.image_size));
        let images = Tensor::from_slice(&self.batch.images).view([n, s, s, 3]);
        let labels = Tensor::from_slice(&self.batch.labels).to_kind(Kind::Int64);
        (images, labels)
    }

    /// Tells JetStream the batch is still being worked on, so that holding
    /// it (a data-parallel rank waiting for the others) does not run into
    /// `train.batch_ack_wait` and have it delivered again.
    pub async fn keep(&self) {
        self.message.ack_with(AckKind::Progress).await.ok();
    }

    /// Settles the message (see [`Outcome`]); a trained batch's object is deleted.
    pub async fn settle(self, outcome: Outcome, store: &Store) {
        settle(&self.message, &outcome).await;
        if let Outcome::Trained = outcome {
            store.delete(&self.key).await.ok();
        }
    }
}

/// What a batch must be for the trainer to train on it.
#[derive(Debug, Clone)]
pub struct BatchSpec {
    /// The dataset whose batch folder its object must be in.
    pub dataset: String,
    /// The model's input side, in pixels.
    pub image_size: u32,
    /// The model's outputs: labels must be in `0..num_classes`.
    pub num_classes: i64,
    /// The most images a batch may hold (`pipeline.batch_size`: what the
    /// workers write and the trainer's memory is sized for).
    pub max_images: u32,
    /// The towers each batch is split over (`train.num_gpus`): the fewest images a batch may hold.
    pub towers: u32,
    /// A message delivered more often than this without being trained on
    /// (its steps failed, or the trainer died during them) is terminated;
    /// zero: no bound (`train.batch_max_deliveries`).
    pub max_deliveries: u32,
}

/// Room for a batch object's safetensors header: ours is under 200 bytes;
/// other writers may add metadata.
const MAX_HEADER_BYTES: u64 = 64 << 10;

impl BatchSpec {
    /// The largest batch object that can satisfy the spec: larger ones are
    /// refused from their size, before they are read.
    pub fn max_object_bytes(&self) -> u64 {
        let side = u64::from(self.image_size);
        let per_image = side * side * 3 + 8;
        8 + MAX_HEADER_BYTES + u64::from(self.max_images) * per_image
    }
}

/// The trainer's view of the batch queue.
pub struct BatchSource {
    consumer: PullConsumer,
    store: Store,
    spec: BatchSpec,
    /// Where a lasting wait for batches is reported.
    stall: Option<Stall>,
}

impl BatchSource {
    /// Batches through `consumer`, checked against `spec`.
    pub fn new(consumer: PullConsumer, store: Store, spec: BatchSpec) -> Self {
        Self { consumer, store, spec, stall: None }
    }

    /// Reports waits for batches (logs, `/readyz`, `inception_stalled`) to `stall`.
    #[must_use]
    pub fn reporting_to(mut self, stall: Stall) -> Self {
        self.stall = Some(stall);
        self
    }

    /// The next batch fit for a step; None once `shutdown` fires. Messages
    /// that cannot be trained on are settled here and skipped.
    pub async fn next(&self, shutdown: &CancellationToken) -> Option<Delivery> {
        self.next_before(shutdown, None).await
    }

    /// [`BatchSource::next`], giving up (None) after `deadline` too (a
    /// second or so later: a fetch waits up to a second).
    pub async fn next_before(&self, shutdown: &CancellationToken, deadline: Option<Instant>) -> Option<Delivery> {
        let wait_started = Instant::now();
        while !shutdown.is_cancelled() && deadline.is_none_or(|d| Instant::now() < d) {
            let Some(message) = self.fetch(shutdown).await else {
                if let Some(stall) = &self.stall {
                    stall.waiting(&format!("batches of {} from the preprocess workers", self.spec.dataset));
                }
                continue;
            };
            let waited = wait_started.elapsed();
            record_arrival(&message, waited);
            let arrived = Instant::now();
            if let Some(reason) = delivered_too_often(&message, self.spec.max_deliveries) {
                settle(&message, &Outcome::Unusable(reason)).await;
                continue;
            }
            match self.receive(&message, shutdown).await {
                Ok((key, batch, shards)) => {
                    if let Some(stall) = &self.stall {
                        stall.progressed();
                    }
                    return Some(Delivery { message, key, batch, shards, waited, arrived });
                }
                Err(BatchProblem::Unusable(reason)) => settle(&message, &Outcome::Unusable(reason)).await,
                Err(BatchProblem::Store(_)) => {
                    // Stopped while the store was failing: someone else's turn.
                    message.ack_with(AckKind::Nak(None)).await.ok();
                }
            }
        }
        None
    }

    /// The batch a message points at. While the store fails (it may be back
    /// soon) the message is kept, marked in progress, and the object read
    /// again with back-off: an outage never counts as a delivery, so it
    /// cannot use up `max_deliveries`. `Store` only when stopped meanwhile.
    async fn receive(
        &self,
        message: &jetstream::Message,
        shutdown: &CancellationToken,
    ) -> Result<(String, Batch, Vec<ShardExamples>), BatchProblem> {
        let mut backoff = inception_core::backoff::Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
        loop {
            match receive_batch(&self.store, &self.spec, &message.payload).await {
                Err(BatchProblem::Store(reason)) => {
                    tracing::warn!("cannot read a batch ({reason}); reading it again in {:?}", backoff.delay());
                    message.ack_with(AckKind::Progress).await.ok();
                    if !backoff.wait(shutdown).await {
                        return Err(BatchProblem::Store(reason));
                    }
                }
                other => return other,
            }
        }
    }

    /// One message, waiting up to a second for it.
    async fn fetch(&self, shutdown: &CancellationToken) -> Option<jetstream::Message> {
        let mut fetched = match self.consumer.fetch().max_messages(1).expires(Duration::from_secs(1)).messages().await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("fetching from the batch queue: {e}");
                sleep_or_cancel(shutdown, Duration::from_secs(1)).await;
                return None;
            }
        };
        match fetched.next().await? {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!("batch queue: {e}");
                None
            }
        }
    }
}

/// The data wait, the queue depth behind this message, and redeliveries.
fn record_arrival(message: &jetstream::Message, waited: Duration) {
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
}

/// Why a message delivered more than `max` times is not tried again.
fn delivered_too_often(message: &jetstream::Message, max: u32) -> Option<String> {
    let info = message.info().ok()?;
    (max > 0 && info.delivered > i64::from(max)).then(|| {
        format!(
            "batch message {} delivered {} times without a finished step (train.batch_max_deliveries = {max}): \
             its steps fail, or the trainer dies during them",
            info.stream_sequence, info.delivered
        )
    })
}

/// Why a batch object cannot be trained on.
pub(crate) enum BatchProblem {
    /// Malformed, outside the dataset, missing, empty, too large or of the wrong shape: terminated.
    Unusable(String),
    /// The store failed to answer: handed back for redelivery.
    Store(String),
}

impl From<String> for BatchProblem {
    fn from(reason: String) -> Self {
        Self::Unusable(reason)
    }
}

/// The batch a message points at, checked against `spec`.
async fn receive_batch(
    store: &Store,
    spec: &BatchSpec,
    payload: &[u8],
) -> Result<(String, Batch, Vec<ShardExamples>), BatchProblem> {
    let ready: BatchReady =
        inception_core::nats::decode_control(payload).map_err(|e| BatchProblem::Unusable(e.to_string()))?;
    let dir = keys::batch_dir(&spec.dataset);
    if keys::below(&ready.uri, &dir).is_none() {
        return Err(format!("{} is outside {dir}/", ready.uri).into());
    }
    let bytes = store.get_at_most(&ready.uri, spec.max_object_bytes()).await.map_err(|e| match e {
        StoreError::NotFound { .. } | StoreError::TooLarge { .. } => BatchProblem::Unusable(e.to_string()),
        other => BatchProblem::Store(other.to_string()),
    })?;
    let batch = Batch::from_bytes(&bytes).map_err(|e| format!("{}: {e}", ready.uri))?;
    check_batch(&batch, spec).map_err(|e| format!("{}: {e}", ready.uri))?;
    Ok((ready.uri, batch, ready.shards))
}

/// Whether a well-formed batch fits the model and the configured batch size.
fn check_batch(batch: &Batch, spec: &BatchSpec) -> Result<(), String> {
    if batch.image_size != spec.image_size {
        return Err(format!("it has {}px images; the model takes {}px", batch.image_size, spec.image_size));
    }
    if batch.len() > spec.max_images as usize {
        return Err(format!("it holds {} images, more than pipeline.batch_size ({})", batch.len(), spec.max_images));
    }
    // Every tower needs a share of the batch (an empty one has no loss).
    if batch.len() < spec.towers as usize {
        return Err(format!("it holds {} images, fewer than the {} towers (train.num_gpus)", batch.len(), spec.towers));
    }
    if let Some(bad) = batch.labels.iter().find(|l| **l < 0 || **l >= spec.num_classes) {
        return Err(format!("it has label {bad}, outside 0..{}", spec.num_classes));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With two towers, a one-image batch left the second tower without a
    /// share: the sequential tower loop indexed past the chunks and panicked.
    #[test]
    fn a_batch_smaller_than_the_towers_is_refused() {
        let spec = BatchSpec {
            dataset: "flowers".into(),
            image_size: 1,
            num_classes: 3,
            max_images: 8,
            towers: 2,
            max_deliveries: 5,
        };
        let batch = |n: usize| Batch { image_size: 1, images: vec![0; 3 * n], labels: vec![1; n] };
        let err = check_batch(&batch(1), &spec).unwrap_err();
        assert!(err.contains("fewer than the 2 towers"), "{err}");
        assert_eq!(check_batch(&batch(2), &spec), Ok(()));
        assert_eq!(check_batch(&batch(3), &spec), Ok(()), "an uneven split is fine");
    }
}
