//! Preprocess workers: TFRecord shards to distorted, batched images.
//!
//! Each worker follows the train-shard announcements, fills a shuffle buffer
//! from randomly chosen known shards, draws batches from it at random and
//! hands each batch to the trainer by claim check: the batch goes to the
//! store (`batches/<dataset>/…`), a small `BatchReady` goes to the work-queue
//! stream. That stream holds at most `pipeline.queue_capacity` messages; a
//! full queue makes the worker wait (back-pressure), never drop: it waits for
//! room before it writes the batch object, so objects do not pile up.
//! Any number of workers can run; they need no coordination beyond NATS.
//!
//! A worker claims nothing: shards are read, never consumed, so a worker
//! killed at any point loses no work. What it may leave is one batch object
//! written but not queued; workers delete such orphans after
//! `preprocess.orphan_batch_age`. The hand-off to the trainer is
//! at-least-once: a batch message is removed only when the trainer
//! acknowledges it after its step, and redelivered if the trainer dies first.

pub mod batcher;
pub mod queue;
pub mod shard_set;
pub mod shuffle;

use bytes::Bytes;
use inception_core::backoff::Backoff;
use inception_core::nats::{NatsError, Streams};
use inception_core::shutdown::CancellationToken;
use inception_core::store::StoreError;
use inception_core::{keys, tfrecord, Settings, Store};
use inception_proto::pipeline::{BatchReady, ShardExamples};
use inception_proto::Message;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;
use std::time::{Duration, Instant};

use inception_core::stall::Stall;
use inception_core::telemetry::Readiness;
use inception_proto::pipeline::ShardReady;
use shard_set::{AfterFailure, Next, ShardSet};

#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error(transparent)]
    Nats(#[from] NatsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("worker task failed: {0}")]
    Worker(String),
}

/// Identifier of this worker: the configured one, else host name and pid.
pub fn worker_id(configured: &str) -> String {
    if !configured.is_empty() {
        return configured.to_string();
    }
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let host: String = host.trim().chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
    format!("{}-{}", if host.is_empty() { "worker" } else { &host }, std::process::id())
}

/// Writes a batch object, retrying with back-off while the store fails
/// (unreachable, throttling, a full disk): the worker waits with the batch
/// in memory instead of exiting. False when stopped meanwhile.
async fn put_retrying(store: &Store, key: &str, bytes: Bytes, shutdown: &CancellationToken) -> bool {
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
    loop {
        match store.put(key, bytes.clone()).await {
            Ok(()) => return true,
            Err(e) => tracing::error!("cannot write batch: {e}; retrying in {:.1}s", backoff.delay().as_secs_f64()),
        }
        if !backoff.wait(shutdown).await {
            return false;
        }
    }
}

/// Runs one worker until `shutdown`, reporting what it waits for on
/// `readiness`. Returns the number of batches handed over.
pub async fn run(
    settings: &Settings,
    store: &Store,
    streams: &Streams,
    readiness: &Readiness,
    shutdown: &CancellationToken,
) -> Result<u64, PreprocessError> {
    let id = worker_id(&settings.preprocess.worker_id);
    let queue = streams.batches(settings.pipeline.queue_capacity).await?;
    clean_orphans_in_background(settings, store, &queue, shutdown);
    let shards = Arc::new(ShardSet::default());
    list_shards_in_store(store, &settings.dataset.name, &shards).await;
    let follower = follow_in_background(streams, &settings.dataset.name, &shards, shutdown);
    let stall = Stall::new("preprocess", readiness, settings.pipeline.stall_after);
    let mut worker = Worker::new(settings, store, streams, queue, &id);
    tracing::info!(worker = %id, "looking for train shards of {}", settings.dataset.name);
    while !shutdown.is_cancelled() {
        if worker.buffer.needs_more(worker.batch_size) && !worker.fill(&shards, &stall, shutdown).await {
            continue;
        }
        let Some(batch) = worker.next_batch().await? else { continue };
        if !worker.hand_over(&batch, &stall, shutdown).await? {
            break;
        }
        stall.progressed();
    }
    follower.abort();
    tracing::info!(worker = %id, "stopped after {} batches", worker.sequence);
    Ok(worker.sequence)
}

/// Learns the train shards already in the store (a failure is logged: the
/// announcements still tell of them).
async fn list_shards_in_store(store: &Store, dataset: &str, shards: &ShardSet) {
    match shard_set::add_listed(store, dataset, shards).await {
        Ok(n) => tracing::info!("{n} train shards of {dataset} in the store"),
        Err(e) => tracing::warn!("cannot list the train shards of {dataset} in the store ({e}); using announcements"),
    }
}

/// Deletes orphan batch objects every so often (`preprocess.orphan_batch_age`; 0: never).
fn clean_orphans_in_background(
    settings: &Settings,
    store: &Store,
    queue: &async_nats::jetstream::stream::Stream,
    shutdown: &CancellationToken,
) {
    let age = settings.preprocess.orphan_batch_age;
    if !age.is_zero() {
        let prefix = format!("{}/", keys::batch_dir(&settings.dataset.name));
        let (store, queue, stop) = (store.clone(), queue.clone(), shutdown.clone());
        tokio::spawn(queue::clean_orphans_periodically(store, queue, prefix, age, stop));
    }
}

/// Follows the dataset's train-shard announcements into `shards`.
fn follow_in_background(
    streams: &Streams,
    dataset: &str,
    shards: &Arc<ShardSet>,
    shutdown: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let (streams, dataset, shards, stop) = (streams.clone(), dataset.to_string(), shards.clone(), shutdown.clone());
    tokio::spawn(async move {
        if let Err(e) = shard_set::follow(&streams, &dataset, shards, stop).await {
            tracing::error!("cannot follow shard announcements: {e}");
        }
    })
}

/// One worker's state: its shuffle buffer and random stream, and the
/// numbering of the batches it hands over.
struct Worker<'a> {
    settings: &'a Settings,
    store: &'a Store,
    streams: &'a Streams,
    queue: async_nats::jetstream::stream::Stream,
    /// Names this process's batches (see [`Worker::new`]).
    producer: String,
    subject: String,
    batch_size: usize,
    /// The training distortions (`[augment]`), shared with the blocking tasks.
    augmentation: Arc<inception_vision::Augmentation>,
    buffer: shuffle::ShuffleBuffer,
    rng: ChaCha8Rng,
    /// Batches handed over so far (and the next batch's number).
    sequence: u64,
    /// The keys of the shards read so far, numbered in the buffer by their index.
    shard_keys: Vec<String>,
    shard_numbers: std::collections::HashMap<String, u32>,
}

/// A batch ready to hand over, and how many of its images each shard gave.
struct DrawnBatch {
    batch: inception_core::batch::Batch,
    shards: Vec<ShardExamples>,
}

impl<'a> Worker<'a> {
    fn new(
        settings: &'a Settings,
        store: &'a Store,
        streams: &'a Streams,
        queue: async_nats::jetstream::stream::Stream,
        id: &str,
    ) -> Self {
        let cfg = &settings.preprocess;
        // Batch keys are unique per process, so a restarted worker with the same
        // id never overwrites a batch that is still queued.
        let producer = format!("{id}-{:x}", chrono::Utc::now().timestamp_millis());
        let seed = cfg.seed ^ id.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        Self {
            settings,
            store,
            streams,
            queue,
            producer,
            subject: streams.subjects.batches(&settings.dataset.name),
            batch_size: settings.pipeline.batch_size as usize,
            augmentation: Arc::new(batcher::augmentation(&settings.augment)),
            buffer: shuffle::ShuffleBuffer::new(
                settings.shuffle_buffer_records(),
                cfg.shuffle_buffer_max_bytes as usize,
            ),
            rng: ChaCha8Rng::seed_from_u64(seed),
            sequence: 0,
            shard_keys: Vec::new(),
            shard_numbers: std::collections::HashMap::new(),
        }
    }

    /// Adds the records of a randomly chosen readable shard to the shuffle
    /// buffer, or waits a while when there is none. True when a batch can
    /// be drawn now (the buffer holds one, though it wanted more).
    async fn fill(&mut self, shards: &ShardSet, stall: &Stall, shutdown: &CancellationToken) -> bool {
        let dataset = &self.settings.dataset.name;
        let waited = match shards.next(&mut self.rng) {
            Next::Read(shard) => {
                self.read_shard(shards, &shard).await;
                return false;
            }
            Next::NoneKnown { abandoned: 0 } => {
                stall.waiting(&format!("train shards of {dataset}"));
                Duration::from_secs(1)
            }
            Next::NoneKnown { abandoned } => {
                stall.waiting(&format!("train shards of {dataset} ({abandoned} given up as unreadable)"));
                Duration::from_secs(1)
            }
            Next::AllFailing { known, retry_in } => {
                stall.waiting(&format!("a readable train shard of {dataset} (all {known} known ones fail)"));
                retry_in.clamp(Duration::from_millis(10), Duration::from_secs(1))
            }
        };
        if self.buffer.len() >= self.batch_size {
            return true;
        }
        shards.wait_for_change(waited, shutdown).await;
        false
    }

    /// Reads `shard` into the shuffle buffer; a failure is counted, and the
    /// shard retried later or given up (rule 4 of docs/resilience.md).
    async fn read_shard(&mut self, shards: &ShardSet, shard: &ShardReady) {
        let cfg = &self.settings.preprocess;
        let bytes = match self.store.get_at_most(&shard.uri, cfg.shard_max_bytes).await {
            Ok(b) => b,
            Err(e) => {
                metrics::counter!("inception_preprocess_errors_total", "kind" => "shard").increment(1);
                let never = matches!(e, StoreError::TooLarge { .. });
                match shards.failed(&shard.uri, cfg.shard_read_attempts, never) {
                    AfterFailure::RetryIn(delay) => {
                        tracing::warn!("cannot read shard {}: {e}; trying it again in {delay:?}", shard.uri);
                    }
                    AfterFailure::Abandoned(attempts) => {
                        metrics::counter!("inception_preprocess_shards_abandoned_total").increment(1);
                        tracing::error!("giving up on shard {} after {attempts} failed reads: {e}", shard.uri);
                    }
                }
                return;
            }
        };
        shards.succeeded(&shard.uri);
        self.buffer_records(&shard.uri, &bytes);
    }

    /// The worker's number for the shard `uri` (the same at every read).
    fn shard_number(&mut self, uri: &str) -> u32 {
        if let Some(&n) = self.shard_numbers.get(uri) {
            return n;
        }
        let n = self.shard_keys.len() as u32;
        self.shard_keys.push(uri.to_string());
        self.shard_numbers.insert(uri.to_string(), n);
        n
    }

    fn buffer_records(&mut self, uri: &str, bytes: &[u8]) {
        let shard = self.shard_number(uri);
        for r in tfrecord::records(bytes) {
            match r {
                Ok(data) if self.settings.preprocess.class_balanced => {
                    let label = inception_core::example::parse_image_example(data).ok().map(|p| p.label);
                    self.buffer.extend_from_shard(shard, [(label, data.to_vec())]);
                }
                Ok(data) => self.buffer.extend_from_shard(shard, [(None, data.to_vec())]),
                Err(e) => {
                    metrics::counter!("inception_preprocess_errors_total", "kind" => "framing").increment(1);
                    tracing::error!("shard {uri}: {e}; using the records before it");
                }
            }
        }
        metrics::gauge!("inception_preprocess_shuffle_buffer_records").set(self.buffer.len() as f64);
        metrics::gauge!("inception_preprocess_shuffle_buffer_bytes").set(self.buffer.bytes() as f64);
    }

    /// Decodes and distorts a batch drawn from the buffer (on a blocking
    /// thread); None when none of its records could be used.
    async fn next_batch(&mut self) -> Result<Option<DrawnBatch>, PreprocessError> {
        let drawn = if self.settings.preprocess.class_balanced {
            self.buffer.take_balanced_with_shards(self.batch_size, &mut self.rng)
        } else {
            self.buffer.take_with_shards(self.batch_size, &mut self.rng)
        };
        let (from, chunk): (Vec<u32>, Vec<Vec<u8>>) = drawn.into_iter().unzip();
        let started = Instant::now();
        let (size, max_pixels) = (self.settings.model.image_size, self.settings.pipeline.max_image_pixels);
        let augmentation = self.augmentation.clone();
        let mut rng = ChaCha8Rng::seed_from_u64(self.rng.random());
        let (batch, used) = tokio::task::spawn_blocking(move || {
            batcher::build_batch_marking_used(&chunk, size, max_pixels, &augmentation, &mut rng)
        })
        .await
        .map_err(|e| PreprocessError::Worker(e.to_string()))?;
        if batch.is_empty() {
            return Ok(None);
        }
        metrics::histogram!("inception_preprocess_batch_seconds").record(started.elapsed().as_secs_f64());
        let shards = shard_counts(&self.shard_keys, from.iter().zip(&used).filter(|(_, u)| **u).map(|(s, _)| *s));
        Ok(Some(DrawnBatch { batch, shards }))
    }

    /// Waits for room in the queue, writes the batch object and queues its
    /// message. False when stopped meanwhile (an object nobody will consume
    /// is removed again).
    async fn hand_over(
        &mut self,
        drawn: &DrawnBatch,
        stall: &Stall,
        shutdown: &CancellationToken,
    ) -> Result<bool, PreprocessError> {
        let batch = &drawn.batch;
        let waited = Instant::now();
        if !queue::wait_for_room(&self.queue, stall, shutdown).await? {
            return Ok(false);
        }
        let key = keys::batch(&self.settings.dataset.name, &self.producer, self.sequence);
        if !put_retrying(self.store, &key, Bytes::from(batch.to_bytes()), shutdown).await {
            return Ok(false);
        }
        let message = BatchReady {
            uri: key.clone(),
            batch_size: batch.len() as u32,
            image_size: batch.image_size,
            producer: self.producer.clone(),
            sequence: self.sequence,
            labels: batch.labels.clone(),
            shards: drawn.shards.clone(),
        };
        match self.streams.publish_acked(&self.subject, Bytes::from(message.encode_to_vec()), &key, shutdown).await {
            Ok(_) => {
                metrics::histogram!("inception_preprocess_queue_wait_seconds").record(waited.elapsed().as_secs_f64());
            }
            Err(NatsError::Cancelled) => {
                // Nobody will consume it: remove the object we wrote.
                self.store.delete(&key).await.ok();
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        }
        metrics::counter!("inception_preprocess_examples_total").increment(batch.len() as u64);
        metrics::counter!("inception_preprocess_batches_total").increment(1);
        self.sequence += 1;
        Ok(true)
    }
}

/// Examples by shard key, in the order first drawn, from the shard numbers
/// of a batch's images (numbers without a key are left out).
fn shard_counts(keys: &[String], numbers: impl Iterator<Item = u32>) -> Vec<ShardExamples> {
    let mut counts: Vec<ShardExamples> = Vec::new();
    for n in numbers {
        let Some(key) = keys.get(n as usize) else { continue };
        match counts.iter_mut().find(|c| c.shard == *key) {
            Some(c) => c.examples += 1,
            None => counts.push(ShardExamples { shard: key.clone(), examples: 1 }),
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_counts_its_images_by_shard() {
        let keys = vec!["datasets/f/train-0".to_string(), "datasets/f/train-1".to_string()];
        let counts = shard_counts(&keys, [1, 0, 1, shuffle::NO_SHARD, 1].into_iter());
        assert_eq!(
            counts,
            vec![
                ShardExamples { shard: keys[1].clone(), examples: 3 },
                ShardExamples { shard: keys[0].clone(), examples: 1 }
            ]
        );
    }

    #[tokio::test]
    async fn a_failing_store_is_retried_until_the_batch_is_written() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("store");
        let mut settings = Settings::defaults().expect("defaults").store;
        settings.url = format!("file://{}", root.display());
        let store = Store::open(&settings).expect("store");
        // A file where the batch folder should be: every write fails.
        std::fs::create_dir_all(root.join("batches")).expect("folder");
        std::fs::write(root.join("batches/flowers"), b"in the way").expect("blocker");
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                put_retrying(&store, "batches/flowers/w-0", Bytes::from_static(b"batch"), &CancellationToken::new())
                    .await
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        assert!(!writer.is_finished(), "still retrying while the store fails");
        std::fs::remove_file(root.join("batches/flowers")).expect("unblock");
        let written = tokio::time::timeout(std::time::Duration::from_secs(10), writer)
            .await
            .expect("written after the fault")
            .expect("task");
        assert!(written);
        assert_eq!(store.get("batches/flowers/w-0").await.expect("the batch"), Bytes::from_static(b"batch"));

        // Stopped while the store fails: gives up, reports it.
        std::fs::write(root.join("batches/other"), b"in the way").expect("blocker");
        let stop = CancellationToken::new();
        stop.cancel();
        assert!(!put_retrying(&store, "batches/other/w-1", Bytes::from_static(b"batch"), &stop).await);
    }
}
