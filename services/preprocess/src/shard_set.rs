//! The train shards a worker knows of: those in the store when it starts
//! (listed) and those announced by `ShardReady` (the full history first,
//! then live ones), so shards ingested while training runs are used without
//! a restart, and a worker started after ingest finds them all.
//!
//! A shard that cannot be read is retried with back-off while readable ones
//! are used meanwhile, and given up after `preprocess.shard_read_attempts`
//! failures in a row (at once if it can never be read: larger than
//! `preprocess.shard_max_bytes`), so unfetchable shards cannot stall a worker.

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use inception_core::announcements::accept_train_shard;
use inception_core::backoff::Backoff;
use inception_core::nats::{NatsError, Streams};
use inception_core::shutdown::CancellationToken;
use inception_core::store::StoreError;
use inception_core::{keys, Store};
use inception_proto::pipeline::ShardReady;
use rand::Rng;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Longest wait before a failing shard is tried again.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

struct Known {
    shard: ShardReady,
    failures: u32,
    backoff: Backoff,
    retry_at: Option<Instant>,
}

#[derive(Default)]
struct Shards {
    known: Vec<Known>,
    /// Object keys given up on: never taken again by this process.
    abandoned: HashSet<String>,
}

/// What a worker can do next with its shards.
#[derive(Debug, PartialEq)]
pub enum Next {
    /// Read this shard.
    Read(ShardReady),
    /// Every known shard is failing: the next may be tried after this long.
    AllFailing { known: usize, retry_in: Duration },
    /// No shard is known (or all were given up).
    NoneKnown { abandoned: usize },
}

/// What became of a shard that could not be read.
#[derive(Debug, PartialEq)]
pub enum AfterFailure {
    /// Tried again after this long.
    RetryIn(Duration),
    /// Given up after this many attempts.
    Abandoned(u32),
}

#[derive(Default)]
pub struct ShardSet {
    shards: Mutex<Shards>,
    changed: Notify,
}

impl ShardSet {
    /// Adds a shard unless one with the same object key is known or was given up.
    pub fn add(&self, shard: ShardReady) -> bool {
        let Ok(mut shards) = self.shards.lock() else { return false };
        if shards.abandoned.contains(&shard.uri) || shards.known.iter().any(|k| k.shard.uri == shard.uri) {
            return false;
        }
        let backoff = Backoff::new(Duration::from_secs(1), MAX_RETRY_DELAY);
        shards.known.push(Known { shard, failures: 0, backoff, retry_at: None });
        drop(shards);
        self.changed.notify_waiters();
        true
    }

    /// The shards known now (given-up ones excluded).
    pub fn snapshot(&self) -> Vec<ShardReady> {
        self.shards.lock().map(|s| s.known.iter().map(|k| k.shard.clone()).collect()).unwrap_or_default()
    }

    /// A randomly chosen readable shard, or why there is none.
    pub fn next(&self, rng: &mut impl Rng) -> Next {
        let Ok(shards) = self.shards.lock() else { return Next::NoneKnown { abandoned: 0 } };
        if shards.known.is_empty() {
            return Next::NoneKnown { abandoned: shards.abandoned.len() };
        }
        let now = Instant::now();
        let ready: Vec<&Known> = shards.known.iter().filter(|k| k.retry_at.is_none_or(|t| t <= now)).collect();
        if ready.is_empty() {
            let soonest = shards.known.iter().filter_map(|k| k.retry_at).min().unwrap_or(now);
            return Next::AllFailing { known: shards.known.len(), retry_in: soonest.saturating_duration_since(now) };
        }
        Next::Read(ready[rng.random_range(0..ready.len())].shard.clone())
    }

    /// `uri` was read: its failures are forgotten.
    pub fn succeeded(&self, uri: &str) {
        let Ok(mut shards) = self.shards.lock() else { return };
        if let Some(k) = shards.known.iter_mut().find(|k| k.shard.uri == uri) {
            if k.failures > 0 {
                k.failures = 0;
                k.backoff.reset();
                k.retry_at = None;
            }
        }
    }

    /// `uri` could not be read: tried again later, or given up after
    /// `max_attempts` failures in a row (or at once when `never_readable`).
    pub fn failed(&self, uri: &str, max_attempts: u32, never_readable: bool) -> AfterFailure {
        let Ok(mut shards) = self.shards.lock() else { return AfterFailure::Abandoned(0) };
        let Some(index) = shards.known.iter().position(|k| k.shard.uri == uri) else {
            return AfterFailure::Abandoned(0);
        };
        let known = &mut shards.known[index];
        known.failures += 1;
        let failures = known.failures;
        if never_readable || failures >= max_attempts {
            shards.known.swap_remove(index);
            shards.abandoned.insert(uri.to_string());
            return AfterFailure::Abandoned(failures);
        }
        let delay = known.backoff.next_delay();
        known.retry_at = Some(Instant::now() + delay);
        AfterFailure::RetryIn(delay)
    }

    /// Waits until a shard is added, `timeout` passes or shutdown (false).
    pub async fn wait_for_change(&self, timeout: Duration, shutdown: &CancellationToken) -> bool {
        let notified = self.changed.notified();
        tokio::select! {
            () = notified => true,
            () = tokio::time::sleep(timeout) => true,
            () = shutdown.cancelled() => false,
        }
    }
}

/// Adds the dataset's train shards that are in the store now (a worker
/// started after ingest learns of them without waiting for announcements,
/// which the stream may have dropped). Returns how many were new.
pub async fn add_listed(store: &Store, dataset: &str, set: &ShardSet) -> Result<usize, StoreError> {
    let prefix = format!("{}/train-", keys::dataset_dir(dataset));
    let mut added = 0;
    for key in store.list(&prefix).await? {
        // `#` marks a local store's partial writes; never a shard.
        let shard = ShardReady { uri: key, ..Default::default() };
        let uri = shard.uri.clone();
        if !uri.contains('#') && accept_train_shard(&shard, dataset).is_ok() && set.add(shard) {
            tracing::info!("new train shard {uri} (in the store)");
            added += 1;
        }
    }
    Ok(added)
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
    use rand::SeedableRng;

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

    #[test]
    fn a_failing_shard_waits_while_good_ones_are_read_and_is_given_up_at_last() {
        let set = ShardSet::default();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        set.add(shard("missing"));
        set.add(shard("good"));
        assert_eq!(set.failed("missing", 3, false), AfterFailure::RetryIn(Duration::from_secs(1)));
        for _ in 0..50 {
            assert_eq!(set.next(&mut rng), Next::Read(shard("good")), "only the readable shard meanwhile");
        }
        set.failed("good", 3, false);
        assert!(
            matches!(set.next(&mut rng), Next::AllFailing { known: 2, retry_in } if retry_in <= Duration::from_secs(1))
        );
        set.succeeded("good");
        assert_eq!(set.next(&mut rng), Next::Read(shard("good")));
        assert!(matches!(set.failed("missing", 3, false), AfterFailure::RetryIn(d) if d == Duration::from_secs(2)));
        assert_eq!(set.failed("missing", 3, false), AfterFailure::Abandoned(3));
        assert_eq!(set.snapshot(), vec![shard("good")]);
        assert!(!set.add(shard("missing")), "a shard given up on is not taken again");
        assert_eq!(set.failed("good", 3, true), AfterFailure::Abandoned(1), "never readable: given up at once");
        assert_eq!(set.next(&mut rng), Next::NoneKnown { abandoned: 2 });
    }

    #[tokio::test]
    async fn train_shards_in_the_store_are_listed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut settings = inception_core::Settings::defaults().expect("defaults").store;
        settings.url = format!("file://{}", dir.path().display());
        let store = Store::open(&settings).expect("store");
        for key in [
            "datasets/flowers/train-00000-of-00002",
            "datasets/flowers/train-live-00000003",
            "datasets/flowers/validation-00000-of-00001",
            "datasets/flowers/labels.txt",
            "datasets/other/train-00000-of-00001",
        ] {
            store.put(key, bytes::Bytes::from_static(b"x")).await.expect("put");
        }
        let set = ShardSet::default();
        assert_eq!(add_listed(&store, "flowers", &set).await.expect("listed"), 2);
        let uris: Vec<String> = set.snapshot().into_iter().map(|s| s.uri).collect();
        assert_eq!(uris, ["datasets/flowers/train-00000-of-00002", "datasets/flowers/train-live-00000003"]);
        assert_eq!(add_listed(&store, "flowers", &set).await.expect("listed again"), 0);
    }
}
