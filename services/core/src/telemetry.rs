//! Logging, Prometheus metrics and the health endpoints every service serves.
//!
//! One small HTTP listener per service answers `/metrics` (Prometheus text),
//! `/healthz` (the process is alive) and `/readyz` (the service says it can
//! work: NATS connected, store reachable).

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::shutdown::CancellationToken;

/// Local time as the original's log lines print it (`datetime.now()`).
pub fn log_timestamp() -> String {
    chrono::Local::now().format("%Y-%m-%d %H:%M:%S%.6f").to_string()
}

/// Starts `tracing` output on stderr; `RUST_LOG` filters (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}

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
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .map_err(|e| TelemetryError::Recorder(e.to_string()))?
        .install_recorder()
        .map_err(|e| TelemetryError::Recorder(e.to_string()))?;
    Ok(HANDLE.get_or_init(|| handle).clone())
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
