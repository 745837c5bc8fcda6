//! `inception-serve`: the run's promoted checkpoint (or its best, or latest)
//! over HTTP. `POST /v1/classify` takes one image as the raw body or several
//! as multipart/form-data and answers each image's top-k labels (never the
//! background class) with the served step. Concurrent requests are batched
//! ([`batcher`]); a newly promoted checkpoint is loaded in the background
//! and swapped in between batches ([`follow`]); requests in flight finish on
//! the model they started with.
//!
//! The server needs only the store: it polls the pointer, and NATS
//! announcements ([`follow_announcements`]) make it swap at once.

pub mod batcher;
pub mod follow;
pub mod http;
pub mod model;
pub mod placement;

use inception_core::settings::{ServeSettings, Settings, SettingsError};
use inception_core::shutdown::CancellationToken;
use inception_core::telemetry::Readiness;
use inception_core::Store;
use inception_model::precision::Precision;
use placement::WorkerThread;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::mpsc;

pub use follow::{follow_announcements, Hint};
pub use http::{Classified, ImageResult, PredictionOut};

/// Why the server cannot start or serve a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listen address cannot be bound.
    #[error("serve.listen_addr = {addr:?}: {source}")]
    Bind {
        /// The address, as configured.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The device setting names no usable device.
    #[error("serve.device: {0}")]
    Device(String),
    /// A setting this machine cannot honour (`serve.precision = "fp16"`
    /// without CUDA): a configuration error, exit status 2 (see
    /// [`ServeError::into_anyhow`]).
    #[error(transparent)]
    Settings(SettingsError),
    /// A checkpoint that cannot be served (refused for good).
    #[error("checkpoint {key}: {message}")]
    Checkpoint {
        /// Its metadata key, or the pointer's.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// The store could not be read (tried again later).
    #[error(transparent)]
    Store(#[from] inception_core::store::StoreError),
    /// NATS refused to set up the announcements' stream or consumer.
    #[error("NATS: {0}")]
    Nats(String),
    /// The server or its batch worker failed.
    #[error("server: {0}")]
    Server(String),
}

impl ServeError {
    /// Whether trying again later may succeed (a store outage, or no thread
    /// to load a checkpoint on).
    pub fn is_transient(&self) -> bool {
        matches!(self, ServeError::Store(_) | ServeError::Server(_))
    }

    /// This error for a service main: a [`ServeError::Settings`] becomes
    /// its [`SettingsError`] itself, which `bootstrap::exit` tells apart as a
    /// configuration error (exit status 2); the others stay as they are.
    pub fn into_anyhow(self) -> anyhow::Error {
        match self {
            ServeError::Settings(e) => e.into(),
            e => e.into(),
        }
    }
}

/// A started server.
pub struct Server {
    addr: SocketAddr,
    hints: mpsc::Sender<Hint>,
    settings: ServeSettings,
    run: String,
    precision: Precision,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
}

impl Server {
    /// Binds `serve.listen_addr`, starts the batch worker on a thread of its
    /// own and the follower of the served pointer, and serves until
    /// `shutdown`: then requests in flight are finished before
    /// [`Server::wait`] returns.
    pub async fn start(
        settings: &Settings,
        store: Store,
        readiness: Readiness,
        shutdown: CancellationToken,
    ) -> Result<Self, ServeError> {
        Self::start_on(settings, store, readiness, shutdown, WorkerThread::Own).await
    }

    /// As [`Server::start`], with the batch worker where `placement` says
    /// (the binary lends it its main thread: [`placement`] says why).
    pub async fn start_on(
        settings: &Settings,
        store: Store,
        readiness: Readiness,
        shutdown: CancellationToken,
        placement: WorkerThread,
    ) -> Result<Self, ServeError> {
        let s = settings.serve.clone();
        inception_model::set_cpu_threads(s.threads, "serve.threads");
        let device = inception_model::device_from_setting(s.device).map_err(ServeError::Device)?;
        let precision = Precision::resolve(s.precision, device, "serve.precision")
            .map_err(|e| ServeError::Settings(SettingsError::Rejected(vec![e])))?;
        let listener = tokio::net::TcpListener::bind(&s.listen_addr)
            .await
            .map_err(|source| ServeError::Bind { addr: s.listen_addr.clone(), source })?;
        let addr = listener.local_addr().map_err(|source| ServeError::Bind { addr: s.listen_addr.clone(), source })?;
        warn_if_exposed(&addr, &s);
        let (batcher, worker) =
            batcher::Batcher::start(s.batch_size as usize, s.max_wait, s.queue_images as usize, placement)
                .map_err(|e| ServeError::Server(format!("cannot start the batch worker: {e}")))?;
        let slot = follow::Slot::new(readiness);
        let run = settings.pipeline.run.clone();
        let follower = follow::Follower::new(
            store,
            run.clone(),
            s.checkpoint,
            device,
            precision,
            settings.augment.eval_central_fraction,
            slot.clone(),
        );
        let (hints, hinted) = mpsc::channel(64);
        tokio::spawn(follower.run(s.poll_interval, hinted, shutdown.clone()));
        let state = Arc::new(http::AppState {
            slot,
            batcher,
            token: s.bearer_token.clone(),
            top_k: s.top_k as usize,
            max_images: s.max_images_per_request as usize,
            max_pixels: settings.pipeline.max_image_pixels,
            run: run.clone(),
        });
        let app = http::router(state, usize::try_from(s.max_request_bytes).unwrap_or(usize::MAX));
        let device_name = device_name(device);
        metrics::gauge!("inception_serve_info", "precision" => precision.to_string(), "device" => device_name.clone())
            .set(1.0);
        tracing::info!(%addr, checkpoint = ?s.checkpoint, device = %device_name, %precision, "serving POST /v1/classify");
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await;
            // The router (and with it the queue's last sender) is gone: the
            // worker finishes what is queued and stops.
            let finished = tokio::task::spawn_blocking(move || worker.wait()).await;
            served.map_err(|e| ServeError::Server(e.to_string()))?;
            match finished {
                Ok(true) => Ok(()),
                _ => Err(ServeError::Server("the batch worker panicked".into())),
            }
        });
        Ok(Self { addr, hints, settings: s, run, precision, task })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where announcements go ([`follow_announcements`]).
    pub fn hints(&self) -> mpsc::Sender<Hint> {
        self.hints.clone()
    }

    /// The served pointer (`serve.checkpoint`).
    pub fn checkpoint(&self) -> inception_core::settings::ServedCheckpoint {
        self.settings.checkpoint
    }

    /// The run whose checkpoints are served.
    pub fn run(&self) -> &str {
        &self.run
    }

    /// The arithmetic of the forward pass (`serve.precision`, resolved for
    /// the device at start).
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Waits until the server has stopped (after shutdown, every request
    /// answered).
    pub async fn wait(self) -> Result<(), ServeError> {
        self.task.await.map_err(|e| ServeError::Server(e.to_string()))?
    }
}

/// `cpu` or `cuda:N`, as `serve.device` writes it.
fn device_name(device: tch::Device) -> String {
    match device {
        tch::Device::Cuda(n) => format!("cuda:{n}"),
        tch::Device::Cpu => "cpu".into(),
        other => format!("{other:?}").to_ascii_lowercase(),
    }
}

/// A warning when the API listens beyond loopback without a token.
fn warn_if_exposed(addr: &SocketAddr, s: &ServeSettings) {
    if !addr.ip().is_loopback() && !s.bearer_token.is_set() {
        tracing::warn!(
            %addr,
            "serving beyond loopback without serve.bearer_token: anyone who reaches it can use the model"
        );
    }
}
