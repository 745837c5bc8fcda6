//! The progress line of `inception train`: the trainer's step and speed
//! from its log lines (`…: step 120, loss = 2.31 (210.4 examples/sec; …)`),
//! the time left from the steps per second seen so far, and the latest
//! precision@1 from the evaluator's results in the store.

use std::path::Path;
use std::time::{Duration, Instant};

/// The step and examples/s of one trainer log line, if it is a step line.
pub(crate) fn parse_step_line(line: &str) -> Option<(u64, f64)> {
    let rest = &line[line.find(": step ")? + ": step ".len()..];
    let step = rest.split(',').next()?.trim().parse().ok()?;
    let rate = rest.split('(').nth(1)?.split(" examples/sec").next()?.trim().parse().ok()?;
    Some((step, rate))
}

/// What the trainer has reported so far.
#[derive(Debug, Default, Clone)]
pub(crate) struct Seen {
    /// The first step line of this invocation: (step, when).
    first: Option<(u64, Instant)>,
    /// The latest: step, examples/s, when.
    latest: Option<(u64, f64, Instant)>,
}

impl Seen {
    pub(crate) fn record(&mut self, step: u64, rate: f64) {
        let now = Instant::now();
        self.first.get_or_insert((step, now));
        self.latest = Some((step, rate, now));
    }

    /// Time left to `max_steps` at the pace since the first step line.
    pub(crate) fn eta(&self, max_steps: u64) -> Option<Duration> {
        let ((s0, t0), (s1, _, t1)) = (self.first?, self.latest?);
        if s1 <= s0 {
            return None;
        }
        let per_step = t1.duration_since(t0).as_secs_f64() / (s1 - s0) as f64;
        Some(Duration::from_secs_f64(per_step * max_steps.saturating_sub(s1) as f64))
    }

    /// `step 120/900 (13 %), 210 examples/s, about 1m05s left`.
    pub(crate) fn line(&self, max_steps: u64) -> String {
        let Some((step, rate, _)) = self.latest else {
            return "starting (no training step yet)".into();
        };
        let percent = 100 * step.min(max_steps) / max_steps.max(1);
        let eta = self
            .eta(max_steps)
            .map_or_else(|| "time left: measuring".to_string(), |d| format!("about {} left", human(d)));
        format!("step {step}/{max_steps} ({percent} %), {rate:.0} examples/s, {eta}")
    }
}

/// `1h02m`, `3m05s`, `42s`.
pub(crate) fn human(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

/// The newest evaluation in `<store>/eval/<run>/`: (step, precision@1).
pub(crate) fn latest_evaluation(eval_dir: &Path) -> Option<(u64, f64)> {
    let step = std::fs::read_dir(eval_dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("step-")?.strip_suffix(".json")?.parse::<u64>().ok())
        .max()?;
    let text = std::fs::read_to_string(eval_dir.join(format!("step-{step}.json"))).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some((step, json["precision_at_1"].as_f64()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_lines_are_read_and_others_are_not() {
        let line = "2024-05-01 10:00:00.123: step 120, loss = 2.31 (210.4 examples/sec; 0.152 sec/batch)";
        assert_eq!(parse_step_line(line), Some((120, 210.4)));
        assert_eq!(parse_step_line("waiting for datasets/x/labels.txt"), None);
        assert_eq!(parse_step_line("x: step up, loss"), None);
    }

    #[test]
    fn the_time_left_follows_the_pace() {
        let mut seen = Seen::default();
        assert!(seen.line(100).starts_with("starting"));
        let t0 = Instant::now();
        seen.first = Some((10, t0));
        seen.latest = Some((20, 50.0, t0 + Duration::from_secs(10)));
        assert_eq!(seen.eta(100), Some(Duration::from_secs(80)));
        assert_eq!(seen.line(100), "step 20/100 (20 %), 50 examples/s, about 1m20s left");
        assert_eq!(human(Duration::from_secs(3725)), "1h02m");
    }

    #[test]
    fn the_latest_evaluation_is_the_highest_step() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("step-9.json"), r#"{"precision_at_1": 0.5}"#).unwrap();
        std::fs::write(dir.path().join("step-10.json"), r#"{"precision_at_1": 0.75}"#).unwrap();
        assert_eq!(latest_evaluation(dir.path()), Some((10, 0.75)));
        assert_eq!(latest_evaluation(&dir.path().join("none")), None);
    }
}
