//! A nats-server child process with JetStream on a free loopback port: the
//! embedded default of `inception demo`, and the server integration tests use.
//! The server is killed when the handle is dropped (its [`ChildGuard`]).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::process::{ChildGuard, OnDrop};
use std::sync::mpsc;
use std::time::Duration;

/// Environment variable naming the nats-server binary to use.
pub const NATS_SERVER_ENV: &str = "INCEPTION_NATS_SERVER";

/// Why a local nats-server did not start.
#[derive(Debug, thiserror::Error)]
pub enum LocalNatsError {
    /// No nats-server binary was found (see [`find_binary`]).
    #[error("nats-server not found: set {NATS_SERVER_ENV}, or run scripts/setup.sh (it installs one into .venv/bin)")]
    NotFound,
    /// The binary could not be run.
    #[error("cannot start {binary}: {source}")]
    Spawn {
        /// Path of the binary.
        binary: String,
        /// Why it could not be run.
        source: std::io::Error,
    },
    /// The server did not log its client port in time; the wait and its last log line.
    #[error("nats-server did not report its port within {0:?}; last output: {1}")]
    NoPort(Duration, String),
}

/// A running nats-server with JetStream, killed when dropped.
pub struct LocalNats {
    process: ChildGuard,
    port: u16,
}

impl LocalNats {
    /// Starts `nats-server -js` on 127.0.0.1 with a free port, storing
    /// JetStream data in `store_dir`.
    pub fn start(store_dir: &Path) -> Result<Self, LocalNatsError> {
        Self::start_on(store_dir, None)
    }

    /// As [`LocalNats::start`], on a chosen port (to restart a server where it was).
    pub fn start_on(store_dir: &Path, port: Option<u16>) -> Result<Self, LocalNatsError> {
        Self::launch(store_dir, port, None)
    }

    /// As [`LocalNats::start`], with a server configuration file (for
    /// authorization and TLS blocks); address, port and JetStream still
    /// come from the command line.
    pub fn start_with_config(store_dir: &Path, config: &Path) -> Result<Self, LocalNatsError> {
        Self::launch(store_dir, None, Some(config))
    }

    fn launch(store_dir: &Path, port: Option<u16>, config: Option<&Path>) -> Result<Self, LocalNatsError> {
        let binary = find_binary().ok_or(LocalNatsError::NotFound)?;
        let port_arg = port.map_or("-1".to_string(), |p| p.to_string());
        let mut command = Command::new(&binary);
        if let Some(config) = config {
            command.arg("-c").arg(config);
        }
        let mut child = command
            .args(["-js", "-a", "127.0.0.1", "-p", &port_arg, "--store_dir"])
            .arg(store_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| LocalNatsError::Spawn { binary: binary.display().to_string(), source })?;
        let stderr = child.stderr.take();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let Some(stderr) = stderr else { return };
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent {
                    if let Some(port) = parse_client_port(&line) {
                        sent = tx.send(Ok(port)).is_ok();
                    } else {
                        let _ = tx.send(Err(line));
                    }
                }
            }
        });
        let wait = Duration::from_secs(20);
        let deadline = std::time::Instant::now() + wait;
        let mut last = String::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(Ok(port)) => return Ok(Self { process: ChildGuard::new("nats-server", child, OnDrop::Kill), port }),
                Ok(Err(line)) => last = line,
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(LocalNatsError::NoPort(wait, last));
                }
            }
        }
    }

    /// The loopback port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The client URL, `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server now (as `kill -9` would).
    pub fn kill(&mut self) {
        self.process.kill();
    }
}

fn parse_client_port(line: &str) -> Option<u16> {
    let rest = line.split("Listening for client connections on ").nth(1)?;
    rest.trim().rsplit(':').next()?.parse().ok()
}

/// `$INCEPTION_NATS_SERVER`, else `.venv/bin/nats-server` in this directory or
/// an ancestor of it or of the running executable, else `nats-server` on PATH.
pub fn find_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(NATS_SERVER_ENV) {
        return Some(PathBuf::from(p));
    }
    let starts = [
        std::env::current_dir().ok(),
        std::env::current_exe().ok(),
        option_env!("CARGO_MANIFEST_DIR").map(PathBuf::from),
    ];
    for start in starts.into_iter().flatten() {
        for dir in start.ancestors() {
            let candidate = dir.join(".venv/bin/nats-server");
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("nats-server")).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_port_from_the_log_line() {
        let line = "[123] 2026/11/28 12:00:00.000000 [INF] Listening for client connections on 127.0.0.1:40123";
        assert_eq!(parse_client_port(line), Some(40123));
        assert_eq!(parse_client_port("[INF] Starting nats-server"), None);
    }
}
