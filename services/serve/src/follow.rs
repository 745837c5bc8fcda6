//! Following the run's served checkpoint: the store's pointer (`promoted`,
//! `best` or `latest`) is read every `serve.poll_interval`, and
//! announcements ask for a checkpoint at once. A new checkpoint is loaded
//! whole in the background, then swapped in; the one it replaces stays
//! alive for as long as requests in flight hold it.

use futures::FutureExt;
use inception_core::nats::Streams;
use inception_core::settings::ServedCheckpoint;
use inception_core::shutdown::CancellationToken;
use inception_core::store::StoreError;
use inception_core::telemetry::Readiness;
use inception_core::{keys, Store};
use inception_model::checkpoint;
use inception_model::precision::Precision;
use serde::Deserialize;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;

use crate::model::ServedModel;
use crate::ServeError;

/// The model in service, if any, and why there is none.
#[derive(Clone)]
pub(crate) struct Slot {
    model: Arc<RwLock<Option<Arc<ServedModel>>>>,
    reason: Arc<Mutex<String>>,
    readiness: Readiness,
}

impl Slot {
    pub(crate) fn new(readiness: Readiness) -> Self {
        let slot = Self { model: Arc::new(RwLock::new(None)), reason: Arc::new(Mutex::new(String::new())), readiness };
        slot.not_ready("starting: no checkpoint loaded yet");
        slot
    }

    /// The model in service now.
    pub(crate) fn current(&self) -> Option<Arc<ServedModel>> {
        self.model.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Why nothing is served (while [`Slot::current`] is None).
    pub(crate) fn reason(&self) -> String {
        self.reason.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn not_ready(&self, reason: impl Into<String>) {
        let reason = reason.into();
        self.readiness.not_ready(reason.clone());
        *self.reason.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = reason;
    }

    /// Puts `model` into service; returns the one it replaces.
    fn swap(&self, model: Arc<ServedModel>) -> Option<Arc<ServedModel>> {
        let old = self.model.write().unwrap_or_else(std::sync::PoisonError::into_inner).replace(model);
        self.readiness.set(true);
        old
    }
}

/// A request to the follower from outside its polling.
#[derive(Debug)]
pub enum Hint {
    /// An announced checkpoint (its metadata key).
    Load(String),
    /// Something changed: read the pointer now.
    Poll,
}

/// What every pointer (`checkpoint`, `best`, `promoted`) has: the rest
/// (scores, times, the list of kept checkpoints) is ignored.
#[derive(Debug, Deserialize)]
struct Pointer {
    step: u64,
    metadata: String,
}

/// The key of the pointer `which` names, and who writes it (for messages).
pub(crate) fn pointer_key(which: ServedCheckpoint, run: &str) -> (String, &'static str) {
    match which {
        ServedCheckpoint::Promoted => (keys::checkpoint_promoted(run), "the promotion gate writes it"),
        ServedCheckpoint::Best => (keys::checkpoint_best(run), "the evaluator writes it"),
        ServedCheckpoint::Latest => (keys::checkpoint_pointer(run), "the trainer writes it"),
    }
}

/// Loads and swaps in the checkpoints the pointer and announcements name.
pub(crate) struct Follower {
    pub(crate) store: Store,
    pub(crate) run: String,
    pub(crate) which: ServedCheckpoint,
    pub(crate) device: tch::Device,
    pub(crate) precision: Precision,
    pub(crate) central_fraction: f64,
    pub(crate) slot: Slot,
    /// The pointer's target when last read: only a change is acted on, so
    /// that a pointer behind an announcement does not swap the model back.
    last_seen: Option<String>,
}

impl Follower {
    pub(crate) fn new(
        store: Store,
        run: String,
        which: ServedCheckpoint,
        device: tch::Device,
        precision: Precision,
        central_fraction: f64,
        slot: Slot,
    ) -> Self {
        Self { store, run, which, device, precision, central_fraction, slot, last_seen: None }
    }

    /// Polls and takes hints until `shutdown`.
    pub(crate) async fn run(
        mut self,
        poll_interval: Duration,
        mut hints: mpsc::Receiver<Hint>,
        shutdown: CancellationToken,
    ) {
        let mut poll = tokio::time::interval(poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = poll.tick() => self.poll().await,
                Some(hint) = hints.recv() => match hint {
                    Hint::Load(key) => self.load_announced(&key).await,
                    Hint::Poll => self.poll().await,
                },
            }
        }
    }

    /// Reads the pointer; loads its checkpoint if it changed.
    async fn poll(&mut self) {
        let (key, writer) = pointer_key(self.which, &self.run);
        match read_pointer(&self.store, &key).await {
            Ok(Some(pointer)) if self.last_seen.as_deref() != Some(pointer.metadata.as_str()) => {
                tracing::debug!(step = pointer.step, "{key} now points at {}", pointer.metadata);
                if self.load_reporting(&pointer.metadata).await {
                    self.last_seen = Some(pointer.metadata);
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                if self.slot.current().is_none() {
                    self.slot.not_ready(format!("no checkpoint to serve yet: {key} not found ({writer})"));
                }
            }
            Err(e) => {
                tracing::warn!("{e}");
                if self.slot.current().is_none() {
                    self.slot.not_ready(format!("no checkpoint to serve yet: {e}"));
                }
            }
        }
    }

    /// Loads an announced checkpoint, unless it is older than the one
    /// served: an announcement still queued when a poll has already loaded
    /// a newer pointer target must not swap the model back (the pointer,
    /// read at each poll, is what may move backwards).
    async fn load_announced(&mut self, key: &str) {
        let served = self.slot.current().map(|m| m.step);
        match (checkpoint::step_of(key), served) {
            (Some(step), Some(served)) if step < served => {
                tracing::info!("not serving the announced {key}: step {served} is served already");
            }
            _ => {
                self.load_reporting(key).await;
            }
        }
    }

    /// Loads `key` unless it is served already. Returns false when it
    /// should be tried again (the store could not be read), true when done
    /// with it, loaded or refused for good.
    async fn load_reporting(&mut self, key: &str) -> bool {
        match self.load(key).await {
            Ok(()) => true,
            Err(e) => {
                metrics::counter!("inception_serve_load_failures_total").increment(1);
                let retry = e.is_transient();
                tracing::error!("cannot serve {key}: {e}{}", if retry { "; trying again" } else { "" });
                if self.slot.current().is_none() {
                    self.slot.not_ready(format!("cannot serve {key}: {e}"));
                }
                !retry
            }
        }
    }

    async fn load(&self, key: &str) -> Result<(), ServeError> {
        if self.slot.current().is_some_and(|m| m.key == key) {
            return Ok(());
        }
        let dir = keys::checkpoint_dir(&self.run);
        if keys::below(key, &dir).is_none() {
            return Err(ServeError::Checkpoint { key: key.to_string(), message: format!("not below {dir}/") });
        }
        let started = std::time::Instant::now();
        let (owned_key, store, device, precision, fraction) =
            (key.to_string(), self.store.clone(), self.device, self.precision, self.central_fraction);
        let runtime = tokio::runtime::Handle::current();
        // Read and built on a thread that ends with the load: libtorch work
        // here (the weights bound, copies, the trial pass) would otherwise
        // leave an OpenMP team on a runtime thread for good (see
        // crate::placement).
        let built = crate::placement::on_passing_thread("serve-load", move || {
            let (meta, tensors) = runtime.block_on(checkpoint::read(&store, &owned_key)).map_err(|e| match e {
                checkpoint::CheckpointError::Store(e) => ServeError::Store(e),
                e => ServeError::Checkpoint { key: owned_key.clone(), message: e.to_string() },
            })?;
            ServedModel::build(&owned_key, meta, tensors, device, precision, fraction)
        })
        .await
        .map_err(|e| ServeError::Server(format!("cannot start a thread to load {key}: {e}")))?;
        let model = built
            .ok_or_else(|| ServeError::Checkpoint { key: key.to_string(), message: "loading it panicked".into() })??;
        let model = Arc::new(model);
        let old = self.slot.swap(Arc::clone(&model));
        metrics::gauge!("inception_serve_step").set(model.step as f64);
        metrics::counter!("inception_serve_swaps_total").increment(1);
        let was = old.map_or_else(|| "nothing".to_string(), |o| format!("step {}", o.step));
        tracing::info!(
            "serving step {} ({key}) in {}, loaded in {:.2}s; was {was}",
            model.step,
            model.precision,
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

async fn read_pointer(store: &Store, key: &str) -> Result<Option<Pointer>, ServeError> {
    match store.get_at_most(key, 1 << 20).await {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ServeError::Checkpoint { key: key.to_string(), message: format!("not a pointer: {e}") }),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(ServeError::Store(e)),
    }
}

/// Follows the announcements of the served pointer's writer until
/// `shutdown`, handing each to the follower: a promotion or a new latest
/// checkpoint names the checkpoint to load; an evaluation (for `best`) asks
/// for the pointer to be read.
pub async fn follow_announcements(
    streams: &Streams,
    run: &str,
    which: ServedCheckpoint,
    hints: mpsc::Sender<Hint>,
    shutdown: &CancellationToken,
) -> Result<(), ServeError> {
    use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
    let nats = |e: inception_core::nats::NatsError| ServeError::Nats(e.to_string());
    let (stream, subject, what) = match which {
        ServedCheckpoint::Promoted => {
            (streams.promotions().await.map_err(nats)?, streams.subjects.promotions(run), "promotions")
        }
        ServedCheckpoint::Latest => {
            (streams.checkpoints().await.map_err(nats)?, streams.subjects.checkpoints(run), "checkpoint announcements")
        }
        ServedCheckpoint::Best => (streams.evals().await.map_err(nats)?, streams.subjects.evals(run), "evaluations"),
    };
    let config = pull::Config {
        filter_subject: subject,
        deliver_policy: DeliverPolicy::New,
        ack_policy: AckPolicy::None,
        inactive_threshold: Duration::from_secs(120),
        ..Default::default()
    };
    let mut messages = inception_core::follow::Follower::new(stream, config, what);
    if let Err(e) = messages.start().await {
        tracing::warn!("{what}: {e}");
    }
    // What was announced while we were away: the pointer has it.
    let _ = hints.send(Hint::Poll).await;
    tracing::info!("following {what} of run {run}");
    let dir = keys::checkpoint_dir(run);
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            m = messages.next().fuse() => m,
        };
        let hint = match message {
            None => return Ok(()),
            Some(Err(e)) => {
                tracing::warn!("{what}: {e}");
                continue;
            }
            Some(Ok(m)) => match announced_key(which, &m.payload) {
                Ok(Some(key)) if keys::below(&key, &dir).is_some() => Hint::Load(key),
                Ok(Some(key)) => {
                    reject(what, &format!("{key} is outside {dir}/"));
                    continue;
                }
                Ok(None) => Hint::Poll,
                Err(e) => {
                    reject(what, &e);
                    continue;
                }
            },
        };
        if hints.send(hint).await.is_err() {
            return Ok(());
        }
    }
}

/// The metadata key an announcement names (None: it names none, read the pointer).
fn announced_key(which: ServedCheckpoint, payload: &[u8]) -> Result<Option<String>, String> {
    use inception_core::nats::decode_control;
    use inception_proto::pipeline::{CheckpointPromoted, CheckpointReady};
    match which {
        ServedCheckpoint::Promoted => {
            decode_control::<CheckpointPromoted>(payload).map(|m| Some(m.metadata_uri)).map_err(|e| e.to_string())
        }
        ServedCheckpoint::Latest => {
            decode_control::<CheckpointReady>(payload).map(|m| Some(m.metadata_uri)).map_err(|e| e.to_string())
        }
        ServedCheckpoint::Best => Ok(None),
    }
}

fn reject(what: &str, reason: &str) {
    metrics::counter!("inception_serve_rejected_messages_total").increment(1);
    tracing::warn!("ignoring one of the {what}: {reason}");
}
