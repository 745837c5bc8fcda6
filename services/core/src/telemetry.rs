//! Logging, Prometheus metrics and the health endpoints every service serves.
//!
//! One small HTTP listener per service answers `/metrics` (Prometheus text),
//! `/healthz` (the process is alive) and `/readyz` (the service says it can
//! work: NATS connected, store reachable).

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::cli::LogFormat;
use crate::shutdown::CancellationToken;

/// Local time as the original's log lines print it (`datetime.now()`).
pub fn log_timestamp() -> String {
    chrono::Local::now().format("%Y-%m-%d %H:%M:%S%.6f").to_string()
}

/// Starts `tracing` output on stderr in the format `INCEPTION_LOG_FORMAT`
/// names (plain by default); `RUST_LOG` filters (default `info`).
pub fn init_logging() {
    init_logging_as(LogFormat::from_env());
}

/// Starts `tracing` output on stderr: plain lines, coloured only when
/// stderr is a terminal (a file or a collector gets no escape codes), or
/// one JSON object per line. `RUST_LOG` filters (default `info`).
pub fn init_logging_as(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    let installed = match format {
        LogFormat::Plain => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if installed.is_ok() {
        let _ = LOG_FORMAT.set(format);
    }
}

/// The format [`init_logging_as`] installed, if it did.
static LOG_FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// Whether log lines are JSON (then a final error goes to the log, not as a
/// plain line among the JSON ones).
pub fn logs_are_json() -> bool {
    LOG_FORMAT.get() == Some(&LogFormat::Json)
}

/// Buckets of `inception_serve_batch_images`: images in one forward pass.
const BATCH_IMAGES_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

/// Buckets (seconds) for every `_seconds` histogram: 1 ms to about 2 minutes.
const SECONDS_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

/// Why the metrics and health endpoints could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The Prometheus recorder could not be installed; the reason.
    #[error("cannot install the metrics recorder: {0}")]
    Recorder(String),
    /// The endpoints' address could not be bound.
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        /// The address, as configured.
        addr: String,
        /// Why it could not be bound.
        source: std::io::Error,
    },
}

impl TelemetryError {
    /// Whether the error is in the settings (an address that is not one),
    /// rather than a port another process holds.
    pub fn is_configuration(&self) -> bool {
        match self {
            TelemetryError::Recorder(_) => false,
            TelemetryError::Bind { source, .. } => source.kind() != std::io::ErrorKind::AddrInUse,
        }
    }
}

/// What `/readyz` reports: ready (and perhaps what the service is waiting
/// for), or not ready and why, so that an operator sees the reason without
/// reading logs.
#[derive(Clone)]
pub struct Readiness(Arc<Mutex<State>>);

#[derive(Clone, Debug)]
enum State {
    Ready,
    /// Ready (200), waiting for work: shards, batches, checkpoints.
    Waiting(String),
    /// Not ready (503): starting, or stalled.
    NotReady(String),
}

impl Default for Readiness {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(State::NotReady("starting".to_string()))))
    }
}

impl Readiness {
    /// Ready, or not ready without a reason ("starting").
    pub fn set(&self, ready: bool) {
        self.store(if ready { State::Ready } else { State::NotReady("starting".to_string()) });
    }
    /// Ready, and waiting for `what`: `/readyz` answers 200 and says so.
    pub fn waiting(&self, what: impl Into<String>) {
        self.store(State::Waiting(what.into()));
    }
    /// Not ready because of `reason` (for example, no progress for a long
    /// time): `/readyz` answers 503 with the reason.
    pub fn not_ready(&self, reason: impl Into<String>) {
        self.store(State::NotReady(reason.into()));
    }
    /// Whether the service says it is ready.
    pub fn get(&self) -> bool {
        !matches!(self.state(), State::NotReady(_))
    }
    /// The status line and body of `/readyz`.
    fn answer(&self) -> (&'static str, String) {
        match self.state() {
            State::Ready => ("200 OK", "ready\n".to_string()),
            State::Waiting(what) => ("200 OK", format!("ready; waiting for {what}\n")),
            State::NotReady(reason) => ("503 Service Unavailable", format!("not ready: {reason}\n")),
        }
    }
    fn state(&self) -> State {
        match self.0.lock() {
            Ok(s) => s.clone(),
            Err(e) => e.into_inner().clone(),
        }
    }
    fn store(&self, state: State) {
        match self.0.lock() {
            Ok(mut s) => *s = state,
            Err(e) => *e.into_inner() = state,
        }
    }
}

/// Installs the Prometheus recorder (histograms with real buckets), records
/// `inception_build_info`, and serves the endpoints on `addr` until `shutdown`.
/// Returns the bound address (useful with port 0).
pub async fn serve(
    service: &'static str,
    addr: &str,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> Result<SocketAddr, TelemetryError> {
    let handle = install_recorder()?;
    metrics::gauge!(
        "inception_build_info",
        "service" => service,
        "version" => env!("CARGO_PKG_VERSION")
    )
    .set(1.0);
    let listener =
        TcpListener::bind(addr).await.map_err(|source| TelemetryError::Bind { addr: addr.to_string(), source })?;
    let bound = listener.local_addr().map_err(|source| TelemetryError::Bind { addr: addr.to_string(), source })?;
    tracing::info!(%bound, "metrics and health endpoints listening");
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.cancelled() => break,
            };
            let Ok((stream, _)) = accepted else { continue };
            let handle = handle.clone();
            let readiness = readiness.clone();
            tokio::spawn(async move {
                let _ = answer(stream, &handle, &readiness).await;
            });
        }
    });
    Ok(bound)
}

fn install_recorder() -> Result<PrometheusHandle, TelemetryError> {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    // One installer at a time: two threads that both found HANDLE empty
    // both installed, and the second failed ("a recorder was already set").
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _alone = INSTALLING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .map_err(|e| TelemetryError::Recorder(e.to_string()))?
        .set_buckets_for_metric(Matcher::Full("inception_serve_batch_images".into()), BATCH_IMAGES_BUCKETS)
        .map_err(|e| TelemetryError::Recorder(e.to_string()))?
        .install_recorder()
        .map_err(|e| TelemetryError::Recorder(e.to_string()))?;
    describe_metrics();
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// A metric's type, as `# TYPE` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (`_total`).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in buckets (`_seconds`).
    Histogram,
}

/// Every metric the services record: name, type and the `# HELP` text
/// (docs/metrics.md is the long form). A test checks that every metric
/// named in the code is here.
pub const METRICS: &[(&str, Kind, &str)] = &[
    ("inception_build_info", Kind::Gauge, "Build identification (always 1), by service and version."),
    ("process_resident_memory_bytes", Kind::Gauge, "Resident memory of the process, read at each scrape (the standard process metric)."),
    ("inception_stalled", Kind::Gauge, "1 while the service waits without progress for longer than pipeline.stall_after (then /readyz answers 503), else 0."),
    ("inception_waiting_seconds", Kind::Gauge, "How long the service has been waiting for work (shards, batches, room in the queue) without progress."),
    ("inception_ingest_images_total", Kind::Counter, "Input images by outcome."),
    ("inception_ingest_shards_written_total", Kind::Counter, "Shards written."),
    ("inception_ingest_pending_images", Kind::Gauge, "Images seen in the incoming prefix and not yet in a shard."),
    ("inception_ingest_list_errors_total", Kind::Counter, "Failed listings of the incoming prefix."),
    ("inception_preprocess_examples_total", Kind::Counter, "Images handed to the trainer."),
    ("inception_preprocess_batches_total", Kind::Counter, "Batches handed to the trainer."),
    ("inception_preprocess_batch_seconds", Kind::Histogram, "Time to build one batch (decode, distort, encode, store)."),
    ("inception_preprocess_shuffle_buffer_records", Kind::Gauge, "Records waiting in the shuffle buffer."),
    ("inception_preprocess_shuffle_buffer_bytes", Kind::Gauge, "Size of the records in the shuffle buffer."),
    ("inception_preprocess_queue_wait_seconds", Kind::Histogram, "Time a batch waited for room in a full queue (recorded only when it had to wait)."),
    ("inception_preprocess_queue_depth_batches", Kind::Gauge, "Messages in the batch queue when the worker last checked for room."),
    ("inception_preprocess_errors_total", Kind::Counter, "Skipped records, unreadable shards, broken TFRecord framing."),
    ("inception_preprocess_rejected_messages_total", Kind::Counter, "Malformed, oversized (> 64 KiB) or out-of-dataset shard announcements (ignored)."),
    (
        "inception_preprocess_shards_abandoned_total",
        Kind::Counter,
        "Shards given up on after preprocess.shard_read_attempts failed reads in a row (until the worker restarts).",
    ),
    ("inception_preprocess_orphan_batches_deleted_total", Kind::Counter, "Batch objects deleted because no queued message pointed at them."),
    ("inception_trainer_global_step", Kind::Gauge, "Optimizer updates so far."),
    ("inception_trainer_loss", Kind::Gauge, "Total loss (with the L2 term) at the last logged step (train.log_every_steps)."),
    ("inception_trainer_learning_rate", Kind::Gauge, "Learning rate of the last step."),
    ("inception_trainer_examples_total", Kind::Counter, "Examples trained on."),
    ("inception_trainer_step_seconds", Kind::Histogram, "One step, from batch fetched to acknowledged (_count = steps)."),
    ("inception_trainer_data_wait_seconds", Kind::Histogram, "Time waiting for the next batch."),
    ("inception_trainer_allreduce_seconds", Kind::Histogram, "One all-reduce of data-parallel training (a vote, or the step's gradient buffer, all its buckets together)."),
    ("inception_trainer_queue_batches", Kind::Gauge, "Batches still queued when the trainer took the last one (its consumer's num_pending)."),
    ("inception_trainer_checkpoints_total", Kind::Counter, "Checkpoints written."),
    ("inception_trainer_rejected_batches_total", Kind::Counter, "Unusable batch messages or objects (terminated: they leave the queue and are never delivered again)."),
    ("inception_trainer_redelivered_batches_total", Kind::Counter, "Batch messages delivered again because a trainer did not acknowledge them in time."),
    ("inception_trainer_skipped_steps_total", Kind::Counter, "fp16 steps skipped because their gradients overflowed (the loss scale was lowered)."),
    ("inception_eval_precision_at_1", Kind::Gauge, "Precision@1 of the last evaluated checkpoint."),
    ("inception_eval_recall_at_5", Kind::Gauge, "Recall@5 of the last evaluated checkpoint."),
    ("inception_eval_validation_loss", Kind::Gauge, "Mean cross-entropy of the logits on the validation set (no label smoothing, no L2 term) of the last evaluated checkpoint."),
    ("inception_eval_class_precision", Kind::Gauge, "Of the last evaluated checkpoint's top-1 predictions of this label, the share that are right; NaN when nothing was predicted as it."),
    ("inception_eval_class_recall", Kind::Gauge, "Of the label's validation examples, the share whose top-1 prediction is right; NaN when it has none."),
    ("inception_eval_checkpoint_step", Kind::Gauge, "Global step of the last evaluated checkpoint."),
    ("inception_eval_last_evaluation_timestamp_seconds", Kind::Gauge, "When the last evaluation finished."),
    ("inception_eval_evaluations_total", Kind::Counter, "Evaluations done."),
    ("inception_eval_failures_total", Kind::Counter, "Checkpoints that could not be evaluated (missing, unreadable, wrong shape, NaN or infinite logits)."),
    ("inception_eval_non_finite_checkpoints_total", Kind::Counter, "Checkpoints refused because their logits are NaN or infinite (diverged or damaged weights; also counted in inception_eval_failures_total); they get no score."),
    ("inception_eval_rejected_messages_total", Kind::Counter, "Malformed, oversized or out-of-run checkpoint announcements (ignored)."),
    ("inception_eval_duration_seconds", Kind::Histogram, "One evaluation."),
    ("inception_eval_errors_total", Kind::Counter, "Skipped validation records."),
    ("inception_serve_requests_total", Kind::Counter, "POST /v1/classify requests by outcome (ok, bad_request, too_large, unauthorized, unavailable, error)."),
    ("inception_serve_request_seconds", Kind::Histogram, "Time to answer one classify request, from its arrival to its response, by outcome."),
    ("inception_serve_batch_images", Kind::Histogram, "Images in each forward pass of the server (concurrent requests batched together)."),
    ("inception_serve_forward_seconds", Kind::Histogram, "One forward pass of the server: the batch's tensor, the network, the softmax and the top-k."),
    ("inception_serve_step", Kind::Gauge, "Global step of the checkpoint the server answers with."),
    ("inception_serve_info", Kind::Gauge, "The server's forward pass (always 1), by precision (serve.precision resolved: fp32, bf16, fp16) and device."),
    ("inception_serve_swaps_total", Kind::Counter, "Checkpoints the server put into service (the first one included)."),
    ("inception_serve_load_failures_total", Kind::Counter, "Checkpoints the server could not load (missing, unreadable, wrong shape); it keeps the one it serves."),
    ("inception_serve_rejected_messages_total", Kind::Counter, "Malformed or out-of-run announcements the server ignored."),
    ("inception_promotions_total", Kind::Counter, "Decisions of the promotion gate, by decision (promoted, rejected)."),
    ("inception_promoted_step", Kind::Gauge, "Global step of the run's promoted checkpoint (the one to serve), as the evaluator last wrote or read its pointer."),
];

/// Registers the `# HELP` text of every metric in [`METRICS`] with the
/// installed recorder (the exporter then writes `# HELP` before `# TYPE`).
pub fn describe_metrics() {
    for &(name, kind, help) in METRICS {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram => metrics::describe_histogram!(name, help),
        }
    }
}

/// This process's resident set size, in bytes (Linux; None elsewhere).
pub fn resident_memory_bytes() -> Option<u64> {
    vm_rss("/proc/self/status")
}

/// The resident set size of process `pid`, in bytes (Linux; None elsewhere
/// or when it has gone).
pub fn resident_memory_bytes_of(pid: u32) -> Option<u64> {
    vm_rss(&format!("/proc/{pid}/status"))
}

fn vm_rss(status_file: &str) -> Option<u64> {
    let status = std::fs::read_to_string(status_file).ok()?;
    let kib =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()?;
    Some(kib * 1024)
}

/// `process_resident_memory_bytes` (the standard Prometheus process
/// metric), read at each scrape.
fn record_resident_memory() {
    if let Some(bytes) = resident_memory_bytes() {
        metrics::gauge!("process_resident_memory_bytes").set(bytes as f64);
    }
}

async fn answer(
    mut stream: tokio::net::TcpStream,
    handle: &PrometheusHandle,
    readiness: &Readiness,
) -> std::io::Result<()> {
    // Read until the end of the request head: a client may send it in pieces.
    let mut buf = Vec::with_capacity(1024);
    let read_head = async {
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), read_head)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let request = String::from_utf8_lossy(&buf);
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let (status, content_type, body) = match path {
        "/metrics" => {
            record_resident_memory();
            ("200 OK", "text/plain; version=0.0.4", handle.render())
        }
        "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
        "/readyz" => {
            let (status, body) = readiness.answer();
            (status, "text/plain", body)
        }
        _ => ("404 Not Found", "text/plain", "try /metrics, /healthz or /readyz\n".to_string()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get_in_pieces(addr: SocketAddr, pieces: &[&str]) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        for p in pieces {
            s.write_all(p.as_bytes()).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        }
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    /// Metric names given as literals to `counter!`, `gauge!` and
    /// `histogram!` anywhere under services/ (the test-only ones left out).
    fn metric_names_in_code() -> std::collections::BTreeSet<String> {
        fn walk(dir: &std::path::Path, out: &mut std::collections::BTreeSet<String>) {
            let Ok(entries) = std::fs::read_dir(dir) else { return };
            for path in entries.flatten().map(|e| e.path()) {
                if path.is_dir() {
                    walk(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    for kind in ["counter", "gauge", "histogram"] {
                        let macro_name = format!("{kind}!(");
                        for (at, _) in text.match_indices(&macro_name) {
                            let call = text[at + macro_name.len()..].trim_start();
                            let Some(name) = call.strip_prefix('"').and_then(|c| c.split('"').next()) else {
                                continue;
                            };
                            let a_name = !name.is_empty()
                                && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
                            if a_name && !name.starts_with("inception_test_") {
                                out.insert(name.to_string());
                            }
                        }
                    }
                }
            }
        }
        let mut names = std::collections::BTreeSet::new();
        walk(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".."), &mut names);
        names
    }

    #[test]
    fn every_metric_the_code_records_has_a_description() {
        let described: std::collections::BTreeSet<String> = METRICS.iter().map(|m| m.0.to_string()).collect();
        let recorded = metric_names_in_code();
        assert!(recorded.len() >= 30, "{recorded:?}");
        let missing: Vec<_> = recorded.difference(&described).collect();
        assert!(missing.is_empty(), "recorded without a description in telemetry::METRICS: {missing:?}");
        let unused: Vec<_> = described.difference(&recorded).collect();
        assert!(unused.is_empty(), "described but recorded nowhere: {unused:?}");
        assert!(METRICS.iter().all(|m| !m.2.is_empty() && !m.2.contains('\n')));
    }

    #[tokio::test]
    async fn every_type_line_on_metrics_has_a_help_line() {
        let stop = CancellationToken::new();
        let addr = serve("test", "127.0.0.1:0", Readiness::default(), stop.clone()).await.unwrap();
        for &(name, kind, _) in METRICS {
            match kind {
                Kind::Counter => metrics::counter!(name).increment(1),
                Kind::Gauge => metrics::gauge!(name).set(1.0),
                Kind::Histogram => metrics::histogram!(name).record(0.1),
            }
        }
        let m = get_in_pieces(addr, &["GET /metrics HTTP/1.1\r\n\r\n"]).await;
        let lines: Vec<&str> = m.lines().collect();
        let typed: Vec<&str> = lines.iter().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
        assert!(typed.len() >= METRICS.len(), "{m}");
        for name in typed.iter().filter(|n| !n.starts_with("inception_test_")) {
            let help = format!("# HELP {name} ");
            assert!(lines.iter().any(|l| l.starts_with(&help)), "{name} has # TYPE but no # HELP:\n{m}");
        }
        stop.cancel();
    }

    #[tokio::test]
    async fn health_readiness_and_metrics_endpoints() {
        let ready = Readiness::default();
        let stop = CancellationToken::new();
        let addr = serve("test", "127.0.0.1:0", ready.clone(), stop.clone()).await.unwrap();
        let health = get_in_pieces(addr, &["GET /hea", "lthz HTTP/1.1\r\n", "\r\n"]).await;
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        let not_ready = get_in_pieces(addr, &["GET /readyz HTTP/1.1\r\n\r\n"]).await;
        assert!(not_ready.starts_with("HTTP/1.1 503"), "{not_ready}");
        ready.not_ready("no batches for 60s");
        let stalled = get_in_pieces(addr, &["GET /readyz HTTP/1.1\r\n\r\n"]).await;
        assert!(
            stalled.starts_with("HTTP/1.1 503") && stalled.ends_with("not ready: no batches for 60s\n"),
            "{stalled}"
        );
        ready.waiting("train shards");
        let waiting = get_in_pieces(addr, &["GET /readyz HTTP/1.1\r\n\r\n"]).await;
        assert!(
            waiting.starts_with("HTTP/1.1 200") && waiting.ends_with("ready; waiting for train shards\n"),
            "{waiting}"
        );
        ready.set(true);
        let ready_now = get_in_pieces(addr, &["GET /readyz HTTP/1.1\r\n\r\n"]).await;
        assert!(ready_now.starts_with("HTTP/1.1 200"), "{ready_now}");
        metrics::histogram!("inception_test_step_seconds").record(0.3);
        let m = get_in_pieces(addr, &["GET /metrics HTTP/1.1\r\n\r\n"]).await;
        assert!(m.contains("inception_build_info{service=\"test\""), "{m}");
        let rss: f64 = m
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no process_resident_memory_bytes in {m}"));
        assert!(rss > 1e6 && rss < 1e11, "{rss}");
        assert!(m.contains("inception_test_step_seconds_bucket{le=\"0.5\"} 1"), "real buckets: {m}");
        stop.cancel();
    }
}
