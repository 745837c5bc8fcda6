//! The train shards a worker knows of, learnt from `ShardReady`
//! announcements (the full history first, then live ones), so shards ingested
//! while training runs are used without a restart.

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use inception_core::announcements::accept_train_shard;
use inception_core::nats::{NatsError, Streams};
use inception_core::shutdown::CancellationToken;
use inception_proto::pipeline::ShardReady;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

#[derive(Default)]
pub struct ShardSet {
    shards: Mutex<Vec<ShardReady>>,
    changed: Notify,
}

impl ShardSet {
    /// Adds a shard unless one with the same object path is known.
    pub fn add(&self, shard: ShardReady) -> bool {
        let Ok(mut shards) = self.shards.lock() else { return false };
        if shards.iter().any(|s| s.uri == shard.uri) {
            return false;
        }
        shards.push(shard);
        drop(shards);
        self.changed.notify_waiters();
        true
    }

    pub fn snapshot(&self) -> Vec<ShardReady> {
        self.shards.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits until at least one shard is known (or shutdown: false).
    pub async fn wait_nonempty(&self, shutdown: &CancellationToken) -> bool {
        loop {
            let notified = self.changed.notified();
            if !self.snapshot().is_empty() {
                return true;
            }
            tokio::select! {
                _ = notified => {}
                _ = shutdown.cancelled() => return false,
            }
        }
    }
}

/// Follows the dataset's train announcements into `set` until shutdown.
pub async fn follow(
    streams: &Streams,
    dataset: &str,
    set: Arc<ShardSet>,
    shutdown: CancellationToken,
) -> Result<(), NatsError> {
    let stream = streams.shards().await?;
    // A lost consumer (NATS restarted without its state, or a partition
    // longer than the inactivity threshold) is made again: never stop hearing.
    let config = pull::Config {
        filter_subject: streams.subjects.shards(dataset, "train"),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::None,
        inactive_threshold: std::time::Duration::from_secs(120),
        ..Default::default()
    };
    let mut messages = inception_core::follow::Follower::new(stream, config, "shard announcements");
    loop {
        let next = tokio::select! {
            m = messages.next() => m,
            _ = shutdown.cancelled() => return Ok(()),
        };
        let Some(next) = next else { return Ok(()) };
        let message = match next {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("shard announcements: {e}");
                continue;
            }
        };
        match inception_core::nats::decode_control::<ShardReady>(&message.payload) {
            Ok(shard) => match accept_train_shard(&shard, dataset) {
                Ok(()) => {
                    if set.add(shard.clone()) {
                        tracing::info!("new train shard {} ({} records)", shard.uri, shard.records);
                    }
                }
                Err(reason) => {
                    metrics::counter!("inception_preprocess_rejected_messages_total").increment(1);
                    tracing::warn!("ignoring shard announcement: {reason}");
                }
            },
            Err(e) => {
                metrics::counter!("inception_preprocess_rejected_messages_total").increment(1);
                tracing::warn!("ignoring shard announcement on {}: {e}", message.subject);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(uri: &str) -> ShardReady {
        ShardReady { uri: uri.into(), ..Default::default() }
    }

    #[test]
    fn duplicates_are_ignored() {
        let set = ShardSet::default();
        assert!(set.add(shard("a")));
        assert!(!set.add(shard("a")));
        assert_eq!(set.snapshot().len(), 1);
    }
}
