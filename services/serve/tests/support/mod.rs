//! What the server's tests share: tiny checkpoints in a store, pointers, a
//! started server, a metrics endpoint, demo photos.

#![allow(dead_code)] // each test file uses part of it

use bytes::Bytes;
use inception_core::settings::{DeviceSetting, PrecisionSetting, StoreSettings};
use inception_core::shutdown::CancellationToken;
use inception_core::telemetry::{self, Readiness};
use inception_core::{keys, Settings, Store};
use inception_model::checkpoint;
use inception_model::{InceptionV3, ModelConfig};
use inception_serve::Server;
use std::net::SocketAddr;
use std::path::Path;
use tch::nn::VarStore;

pub(crate) const RUN: &str = "default";

/// The demo's five labels: a tiny model has six outputs (with the background).
pub(crate) fn labels() -> Vec<String> {
    inception_demo_data::DEMO_LABELS.iter().map(|s| s.to_string()).collect()
}

/// Settings for a server on a free loopback port, on the CPU in fp32 (the
/// tests compare probabilities closely; `auto` would be bf16 on CPUs with
/// bf16 instructions: tests/precision.rs serves bf16), over the file store
/// in `dir`, polling its pointer every 50 ms.
pub(crate) fn settings(dir: &Path) -> Settings {
    let mut s = Settings::defaults().unwrap();
    s.store = StoreSettings { url: format!("file://{}", dir.join("store").display()), ..s.store.clone() };
    s.serve.listen_addr = "127.0.0.1:0".into();
    s.serve.device = DeviceSetting::Cpu;
    s.serve.precision = PrecisionSetting::Fp32;
    s.serve.threads = 1;
    s.serve.poll_interval = std::time::Duration::from_millis(50);
    s
}

/// Writes a tiny checkpoint (fresh random weights) at `step`; returns its metadata key.
pub(crate) async fn put_checkpoint(store: &Store, step: u64) -> String {
    put_checkpoint_with(store, step, |_| {}).await
}

/// As [`put_checkpoint`], the fresh weights changed by `init` first.
pub(crate) async fn put_checkpoint_with(store: &Store, step: u64, init: impl FnOnce(&VarStore)) -> String {
    let model = ModelConfig::tiny(labels().len() as i64 + 1);
    let vs = VarStore::new(tch::Device::Cpu);
    let _ = InceptionV3::new(&vs.root(), &model);
    init(&vs);
    let bytes = checkpoint::tensors_to_bytes(&vs.variables().into_iter().collect::<Vec<_>>()).unwrap();
    // JSON, not the struct: fields added to the metadata later have defaults.
    let weights = keys::checkpoint_weights(RUN, step);
    let meta = serde_json::json!({
        "format_version": checkpoint::FORMAT_VERSION,
        "run": RUN,
        "step": step,
        "labels": labels(),
        "model": model,
        "bn_updates": 0,
        "examples_seen": 0,
        "weights": weights,
        "created_unix": 0,
    });
    store.put(&weights, Bytes::from(bytes)).await.unwrap();
    let key = keys::checkpoint_metadata(RUN, step);
    store.put(&key, Bytes::from(serde_json::to_vec(&meta).unwrap())).await.unwrap();
    key
}

/// Points the run's `promoted` pointer at the checkpoint of `step`, in the
/// shape of the `best` pointer plus a field the server does not know.
pub(crate) async fn promote(store: &Store, step: u64) {
    let pointer = serde_json::json!({
        "step": step,
        "metadata": keys::checkpoint_metadata(RUN, step),
        "weights": keys::checkpoint_weights(RUN, step),
        "precision_at_1": 0.5,
        "validation_loss": 1.0,
        "promoted_unix": 1_700_000_000,
    });
    store.put(&keys::checkpoint_promoted(RUN), Bytes::from(pointer.to_string())).await.unwrap();
}

/// A running server and what stops it.
pub(crate) struct Running {
    pub(crate) server: Option<Server>,
    pub(crate) addr: SocketAddr,
    pub(crate) stop: CancellationToken,
    pub(crate) store: Store,
}

impl Running {
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops the server and waits until it has answered every request.
    pub(crate) async fn stop(mut self) {
        self.stop.cancel();
        if let Some(server) = self.server.take() {
            server.wait().await.unwrap();
        }
    }
}

/// Starts a server with `settings`.
pub(crate) async fn start(settings: &Settings) -> Running {
    let store = Store::open(&settings.store).unwrap();
    let stop = CancellationToken::new();
    let server = Server::start(settings, store.clone(), Readiness::default(), stop.clone()).await.unwrap();
    let addr = server.local_addr();
    Running { server: Some(server), addr, stop, store }
}

/// A server over a store with the checkpoint of step 10 promoted, once it is ready.
pub(crate) async fn ready_server(settings: &Settings) -> Running {
    let running = start(settings).await;
    put_checkpoint(&running.store, 10).await;
    promote(&running.store, 10).await;
    wait_ready(&running).await;
    running
}

/// Waits (up to 60 s) for `/readyz` to answer 200.
pub(crate) async fn wait_ready(running: &Running) {
    let client = reqwest::Client::new();
    for _ in 0..1200 {
        if let Ok(r) = client.get(running.url("/readyz")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the server never became ready");
}

/// One generated demo photo (a JPEG), of `label` (0..5), number `n` (0..3).
pub(crate) fn photo(label: usize, n: usize) -> Vec<u8> {
    static PHOTOS: std::sync::OnceLock<Vec<Vec<Vec<u8>>>> = std::sync::OnceLock::new();
    let all = PHOTOS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        inception_demo_data::generate(dir.path(), 0, 3, 7).unwrap();
        inception_demo_data::DEMO_LABELS
            .iter()
            .map(|l| {
                let mut files: Vec<_> = std::fs::read_dir(dir.path().join("validation").join(l))
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .collect();
                files.sort();
                files.iter().map(|f| std::fs::read(f).unwrap()).collect()
            })
            .collect()
    });
    all[label][n].clone()
}

/// A metrics endpoint of this test process, on this test's runtime (the
/// recorder is installed once per process: start one before recording).
pub(crate) async fn metrics_endpoint() -> SocketAddr {
    telemetry::serve("serve", "127.0.0.1:0", Readiness::default(), CancellationToken::new()).await.unwrap()
}

/// The Prometheus text of this process's metrics.
pub(crate) async fn scrape(endpoint: SocketAddr) -> String {
    reqwest::get(format!("http://{endpoint}/metrics")).await.unwrap().text().await.unwrap()
}

/// The value of the sample `series` (name and labels as written) in `text`.
pub(crate) fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A `multipart/form-data` body built by hand: reqwest's `multipart` and
/// `json` features, enabled for these tests only, changed the feature set
/// of the reqwest that object_store links, so `cargo test` built the whole
/// workspace a second time beside `cargo build` (disk and minutes on CI).
#[derive(Default)]
pub(crate) struct Form {
    parts: Vec<(String, Part)>,
}

/// One part of a [`Form`]: bytes with an optional file name.
pub(crate) struct Part {
    bytes: Vec<u8>,
    file_name: Option<String>,
}

impl Part {
    pub(crate) fn bytes(bytes: Vec<u8>) -> Self {
        Self { bytes, file_name: None }
    }

    pub(crate) fn file_name(self, name: impl Into<String>) -> Self {
        Self { file_name: Some(name.into()), ..self }
    }
}

impl Form {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn part(mut self, name: impl Into<String>, part: Part) -> Self {
        self.parts.push((name.into(), part));
        self
    }

    /// The content type (with its boundary) and the body.
    fn encode(self) -> (String, Vec<u8>) {
        const BOUNDARY: &str = "inception-serve-test-boundary-7d3f";
        let mut body = Vec::new();
        for (name, part) in self.parts {
            body.extend_from_slice(
                format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"").as_bytes(),
            );
            if let Some(file) = part.file_name {
                body.extend_from_slice(format!("; filename=\"{file}\"").as_bytes());
            }
            body.extend_from_slice(b"\r\nContent-Type: application/octet-stream\r\n\r\n");
            body.extend_from_slice(&part.bytes);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
        (format!("multipart/form-data; boundary={BOUNDARY}"), body)
    }
}

/// `.multipart(form)` on a request, as reqwest's feature offers it.
pub(crate) trait MultipartRequest {
    fn multipart(self, form: Form) -> Self;
}

impl MultipartRequest for reqwest::RequestBuilder {
    fn multipart(self, form: Form) -> Self {
        let (content_type, body) = form.encode();
        self.header(reqwest::header::CONTENT_TYPE, content_type).body(body)
    }
}

/// `.json()` on a response, as reqwest's feature offers it.
pub(crate) trait JsonResponse {
    async fn json<T: serde::de::DeserializeOwned>(self) -> Result<T, String>;
}

impl JsonResponse for reqwest::Response {
    async fn json<T: serde::de::DeserializeOwned>(self) -> Result<T, String> {
        let status = self.status();
        let body = self.bytes().await.map_err(|e| format!("reading the body: {e}"))?;
        serde_json::from_slice(&body)
            .map_err(|e| format!("{status}: not the JSON expected ({e}): {}", String::from_utf8_lossy(&body)))
    }
}
