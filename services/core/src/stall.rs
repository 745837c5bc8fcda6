//! Waits that may last. What a service waits for (shards, batches, room in
//! the queue) is logged every few seconds and shown on `/readyz`; a wait
//! longer than `pipeline.stall_after` makes the service not ready and sets
//! `inception_stalled`, so that an operator and an alert see a pipeline that
//! cannot make progress instead of a silent one.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::telemetry::Readiness;

/// A wait shorter than this is normal work and goes unreported.
const QUIET_FOR: Duration = Duration::from_secs(5);
/// How often a lasting wait is logged.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Watches one service's progress: call [`Stall::waiting`] while waiting
/// and [`Stall::progressed`] when work was done.
pub struct Stall {
    service: &'static str,
    readiness: Readiness,
    stall_after: Duration,
    state: Mutex<Waited>,
}

#[derive(Default)]
struct Waited {
    since: Option<Instant>,
    logged: Option<Instant>,
    stalled: bool,
}

impl Stall {
    /// Reports on `readiness` for `service`; `stall_after` zero never marks it stalled.
    pub fn new(service: &'static str, readiness: &Readiness, stall_after: Duration) -> Self {
        metrics::gauge!("inception_stalled", "service" => service).set(0.0);
        Self { service, readiness: readiness.clone(), stall_after, state: Mutex::new(Waited::default()) }
    }

    /// Still waiting for `what` (since the last progress, or the first call).
    pub fn waiting(&self, what: &str) {
        self.waiting_at(what, Instant::now());
    }

    fn waiting_at(&self, what: &str, now: Instant) {
        let Ok(mut w) = self.state.lock() else { return };
        let waited = now.saturating_duration_since(*w.since.get_or_insert(now));
        metrics::gauge!("inception_waiting_seconds", "service" => self.service).set(waited.as_secs_f64());
        if waited < QUIET_FOR {
            return;
        }
        let seconds = waited.as_secs();
        if w.logged.is_none_or(|t| now.saturating_duration_since(t) >= LOG_EVERY) {
            tracing::info!("{}: waiting for {what} ({seconds}s)", self.service);
            w.logged = Some(now);
        }
        if self.stall_after.is_zero() || waited < self.stall_after {
            self.readiness.waiting(format!("{what} ({seconds}s)"));
            return;
        }
        if !w.stalled {
            tracing::warn!(
                "{}: stalled: waiting for {what} for {seconds}s (pipeline.stall_after = {:?}); /readyz answers 503",
                self.service,
                self.stall_after
            );
            metrics::gauge!("inception_stalled", "service" => self.service).set(1.0);
            w.stalled = true;
        }
        self.readiness.not_ready(format!("stalled: waiting for {what} for {seconds}s"));
    }

    /// Work was done: the wait is over, the service ready.
    pub fn progressed(&self) {
        let Ok(mut w) = self.state.lock() else { return };
        if w.since.is_none() {
            return;
        }
        if w.stalled {
            tracing::info!("{}: progressing again", self.service);
            metrics::gauge!("inception_stalled", "service" => self.service).set(0.0);
        }
        *w = Waited::default();
        metrics::gauge!("inception_waiting_seconds", "service" => self.service).set(0.0);
        self.readiness.set(true);
    }

    /// Whether the current wait has lasted past `stall_after`.
    pub fn is_stalled(&self) -> bool {
        self.state.lock().is_ok_and(|w| w.stalled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_wait_is_quiet_a_long_one_shown_a_stall_not_ready() {
        let ready = Readiness::default();
        ready.set(true);
        let stall = Stall::new("test", &ready, Duration::from_secs(60));
        let start = Instant::now();
        stall.waiting_at("batches", start);
        assert!(ready.get() && !stall.is_stalled());
        stall.waiting_at("batches", start + Duration::from_secs(20));
        assert!(ready.get(), "waiting, still ready");
        assert!(!stall.is_stalled());
        stall.waiting_at("batches", start + Duration::from_secs(61));
        assert!(!ready.get(), "stalled: not ready");
        assert!(stall.is_stalled());
        stall.progressed();
        assert!(ready.get() && !stall.is_stalled());
        stall.waiting_at("batches", start + Duration::from_secs(100));
        assert!(ready.get(), "a new wait starts from its first call");
    }

    #[test]
    fn zero_stall_after_never_stalls() {
        let ready = Readiness::default();
        ready.set(true);
        let stall = Stall::new("test", &ready, Duration::ZERO);
        let start = Instant::now();
        stall.waiting_at("shards", start);
        stall.waiting_at("shards", start + Duration::from_secs(100_000));
        assert!(ready.get() && !stall.is_stalled());
    }
}
