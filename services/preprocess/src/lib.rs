//! Preprocess workers: TFRecord shards to distorted, batched images.
//!
//! Each worker follows the train-shard announcements, fills a shuffle buffer
//! from randomly chosen known shards, draws batches from it at random and
//! hands each batch to the trainer by claim check: the batch goes to the
//! store (`batches/<dataset>/…`), a small `BatchReady` goes to the work-queue
//! stream. That stream holds at most `preprocess.queue_capacity` messages; a
//! full queue makes the worker wait (back-pressure), never drop: it waits for
//! room before it writes the batch object, so objects do not pile up.
//! Any number of workers can run; they need no coordination beyond NATS.
//!
//! A worker claims nothing: shards are read, never consumed, so a worker
//! killed at any point loses no work. What it may leave is one batch object
//! written but not queued; workers delete such orphans after
//! `preprocess.orphan_batch_age_secs`. The hand-off to the trainer is
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
use inception_proto::pipeline::BatchReady;
use inception_proto::Message;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shard_set::ShardSet;

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

/// Runs one worker until `shutdown`. Returns the number of batches handed over.
pub async fn run(
    settings: &Settings,
    store: &Store,
    streams: &Streams,
    shutdown: &CancellationToken,
) -> Result<u64, PreprocessError> {
    let dataset = settings.dataset.name.clone();
    let cfg = &settings.preprocess;
    let id = worker_id(&cfg.worker_id);
    // Batch keys are unique per process, so a restarted worker with the same
    // id never overwrites a batch that is still queued.
    let producer = format!("{id}-{:x}", chrono::Utc::now().timestamp_millis());
    let queue = streams.batches(cfg.queue_capacity).await?;
    if cfg.orphan_batch_age_secs > 0 {
        let max_age = std::time::Duration::from_secs(cfg.orphan_batch_age_secs);
        let prefix = format!("{}/", keys::batch_dir(&dataset));
        tokio::spawn(queue::clean_orphans_periodically(
            store.clone(),
            queue.clone(),
            prefix,
            max_age,
            shutdown.clone(),
        ));
    }
    let shards = Arc::new(ShardSet::default());
    let follower = {
        let (streams_ctx, dataset, shards, stop) = (streams.clone(), dataset.clone(), shards.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = shard_set::follow(&streams_ctx, &dataset, shards, stop).await {
                tracing::error!("cannot follow shard announcements: {e}");
            }
        })
    };
    let seed = cfg.seed ^ id.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let subject = streams.subjects.batches(&dataset);
    let mut sequence = 0u64;
    let batch_size = cfg.batch_size as usize;
    let mut buffer =
        shuffle::ShuffleBuffer::new(settings.shuffle_buffer_records(), cfg.shuffle_buffer_max_bytes as usize);
    tracing::info!(worker = %id, "waiting for train shards of {dataset}");
    while shards.wait_nonempty(shutdown).await {
        if buffer.needs_more(batch_size) {
            let known = shards.snapshot();
            let Some(shard) = known.get(rng.random_range(0..known.len())) else { continue };
            let bytes = match store.get(&shard.uri).await {
                Ok(b) => b,
                Err(e) => {
                    metrics::counter!("inception_preprocess_errors_total", "kind" => "shard").increment(1);
                    tracing::error!("cannot read shard {}: {e}; trying another in 1s", shard.uri);
                    if !inception_core::shutdown::sleep_or_cancel(shutdown, std::time::Duration::from_secs(1)).await {
                        break;
                    }
                    continue;
                }
            };
            for r in tfrecord::records(&bytes) {
                match r {
                    Ok(data) => buffer.extend([data.to_vec()]),
                    Err(e) => {
                        metrics::counter!("inception_preprocess_errors_total", "kind" => "framing").increment(1);
                        tracing::error!("shard {}: {e}; using the records before it", shard.uri);
                    }
                }
            }
            metrics::gauge!("inception_preprocess_shuffle_buffer_records").set(buffer.len() as f64);
            metrics::gauge!("inception_preprocess_shuffle_buffer_bytes").set(buffer.bytes() as f64);
            continue;
        }
        let chunk = buffer.take(batch_size, &mut rng);
        let started = Instant::now();
        let (size, max_pixels, mut local_rng) =
            (settings.model.image_size, settings.ingest.max_image_pixels, ChaCha8Rng::seed_from_u64(rng.random()));
        let distort_color = cfg.distort_color;
        let batch = tokio::task::spawn_blocking(move || {
            batcher::build_batch(&chunk, size, max_pixels, distort_color, &mut local_rng)
        })
        .await
        .map_err(|e| PreprocessError::Worker(e.to_string()))?;
        if batch.is_empty() {
            continue;
        }
        metrics::histogram!("inception_preprocess_batch_seconds").record(started.elapsed().as_secs_f64());
        let waited = Instant::now();
        if !queue::wait_for_room(&queue, shutdown).await? {
            break;
        }
        let key = keys::batch(&dataset, &producer, sequence);
        if !put_retrying(store, &key, Bytes::from(batch.to_bytes()), shutdown).await {
            break;
        }
        let message = BatchReady {
            uri: key.clone(),
            batch_size: batch.len() as u32,
            image_size: batch.image_size,
            producer: producer.clone(),
            sequence,
            labels: batch.labels.clone(),
        };
        match streams.publish_acked(&subject, Bytes::from(message.encode_to_vec()), &key, shutdown).await {
            Ok(_) => {
                metrics::histogram!("inception_preprocess_queue_wait_seconds").record(waited.elapsed().as_secs_f64());
            }
            Err(NatsError::Cancelled) => {
                // Nobody will consume it: remove the object we wrote.
                store.delete(&key).await.ok();
                break;
            }
            Err(e) => return Err(e.into()),
        }
        metrics::counter!("inception_preprocess_examples_total").increment(batch.len() as u64);
        metrics::counter!("inception_preprocess_batches_total").increment(1);
        sequence += 1;
        if shutdown.is_cancelled() {
            break;
        }
    }
    follower.abort();
    tracing::info!(worker = %id, "stopped after {sequence} batches");
    Ok(sequence)
}

#[cfg(test)]
mod tests {
    use super::*;

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
