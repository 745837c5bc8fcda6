//! The batch queue as the workers see it: waiting for room before a batch
//! object is written, and deleting batch objects that no queued message
//! points at (left by a worker killed between writing and queueing).

use async_nats::jetstream::stream::{RawMessageErrorKind, Stream};
use inception_core::backoff::Backoff;
use inception_core::nats::NatsError;
use inception_core::shutdown::{sleep_or_cancel, CancellationToken};
use inception_core::stall::Stall;
use inception_core::store::StoreError;
use inception_core::Store;
use inception_proto::pipeline::BatchReady;
use inception_proto::Message;
use std::collections::HashSet;
use std::time::Duration;

fn stream_error(stream: &Stream, e: impl std::fmt::Display) -> NatsError {
    NatsError::Stream { stream: stream.cached_info().config.name.clone(), message: e.to_string() }
}

/// Waits until the queue holds fewer messages than its capacity (or
/// shutdown: `Ok(false)`), so a batch object is written only when it can be
/// queued soon: objects never sit unreferenced while a full queue blocks.
/// Updates `inception_preprocess_queue_depth_batches`. While NATS cannot
/// be asked (restarting, unreachable) it keeps asking, with back-off. A
/// lasting wait is reported through `stall`.
pub async fn wait_for_room(stream: &Stream, stall: &Stall, shutdown: &CancellationToken) -> Result<bool, NatsError> {
    let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
    loop {
        match stream.get_info().await {
            Ok(info) => {
                metrics::gauge!("inception_preprocess_queue_depth_batches").set(info.state.messages as f64);
                let capacity = info.config.max_messages;
                if capacity <= 0 || (info.state.messages as i64) < capacity {
                    return Ok(true);
                }
                stall.waiting(&format!(
                    "room in the batch queue ({} of {capacity} batches queued: is the trainer running?)",
                    info.state.messages
                ));
            }
            Err(e) => {
                tracing::warn!("{}; asking again", stream_error(stream, e));
                stall.waiting("NATS, to ask for room in the batch queue");
            }
        }
        if !backoff.wait(shutdown).await {
            return Ok(false);
        }
    }
}

/// Object keys of the batches now waiting in the queue.
pub async fn queued_batches(stream: &Stream) -> Result<HashSet<String>, NatsError> {
    let info = stream.get_info().await.map_err(|e| stream_error(stream, e))?;
    let mut uris = HashSet::new();
    if info.state.messages == 0 {
        return Ok(uris);
    }
    // Consumed messages leave gaps; a bounded walk over the sequence range.
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    for sequence in first..=last.min(first.saturating_add(100_000)) {
        match stream.get_raw_message(sequence).await {
            Ok(m) => match BatchReady::decode(m.payload.as_ref()) {
                Ok(b) => {
                    uris.insert(b.uri);
                }
                Err(e) => tracing::warn!("queued message {sequence} is not a BatchReady: {e}"),
            },
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => {}
            Err(e) => return Err(stream_error(stream, e)),
        }
    }
    Ok(uris)
}

/// Deletes batch objects under `prefix` older than `max_age` that no queued
/// message points at. Returns how many were deleted.
pub async fn delete_orphans(
    store: &Store,
    stream: &Stream,
    prefix: &str,
    max_age: Duration,
) -> Result<usize, OrphanError> {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let old: Vec<String> = store
        .list_objects(prefix)
        .await?
        .into_iter()
        .filter(|o| now_ms.saturating_sub(o.modified_ms) > max_age.as_millis() as i64)
        .map(|o| o.key)
        .collect();
    if old.is_empty() {
        return Ok(0);
    }
    let queued = queued_batches(stream).await?;
    let mut deleted = 0;
    for key in old.iter().filter(|k| !queued.contains(*k)) {
        store.delete(key).await?;
        tracing::info!("deleted orphan batch object {key} (older than {max_age:?}, not queued)");
        metrics::counter!("inception_preprocess_orphan_batches_deleted_total").increment(1);
        deleted += 1;
    }
    Ok(deleted)
}

#[derive(Debug, thiserror::Error)]
pub enum OrphanError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Nats(#[from] NatsError),
}

/// Looks for orphans every half of `max_age` until shutdown.
pub async fn clean_orphans_periodically(
    store: Store,
    stream: Stream,
    prefix: String,
    max_age: Duration,
    shutdown: CancellationToken,
) {
    loop {
        store.remove_stale_temporaries(&prefix, max_age);
        if let Err(e) = delete_orphans(&store, &stream, &prefix, max_age).await {
            tracing::warn!("orphan batch cleanup under {prefix}: {e}; trying again later");
        }
        if !sleep_or_cancel(&shutdown, (max_age / 2).max(Duration::from_secs(1))).await {
            return;
        }
    }
}
