//! Early stopping: the trainer hears the evaluator's results for its run
//! (the `EVALS` stream, from the beginning, so a restarted trainer counts
//! the evaluations before it too) and stops once `patience` evaluations in a
//! row have not raised the best precision@1.

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use inception_core::follow::Follower;
use inception_core::nats::Streams;
use inception_core::shutdown::CancellationToken;
use inception_proto::pipeline::EvalResult;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The count of evaluations since the best one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// The highest precision@1 so far and the step it was reached at.
    pub best: Option<(f64, u64)>,
    /// Evaluations since the best one that did not beat it.
    pub without_improvement: u32,
    /// Steps already counted (an evaluation heard twice counts once).
    seen: Vec<u64>,
}

impl Progress {
    /// Counts one evaluation: a higher precision@1 than the best resets the
    /// count; anything else adds one. A step already counted is ignored.
    pub fn record(&mut self, step: u64, precision_at_1: f64) {
        if self.seen.contains(&step) || !precision_at_1.is_finite() {
            return;
        }
        self.seen.push(step);
        match self.best {
            Some((best, _)) if precision_at_1 <= best => self.without_improvement += 1,
            _ => {
                self.best = Some((precision_at_1, step));
                self.without_improvement = 0;
            }
        }
    }
}

/// Whether training should stop, fed by a background task that follows the
/// run's evaluations.
#[derive(Clone)]
pub struct EarlyStop {
    patience: u32,
    progress: Arc<Mutex<Progress>>,
}

impl EarlyStop {
    /// Follows `run`'s evaluation results until `shutdown`; `patience` 0 never stops.
    pub async fn follow(streams: &Streams, run: &str, patience: u32, shutdown: &CancellationToken) -> Self {
        let stop = Self { patience, progress: Arc::default() };
        if patience == 0 {
            return stop;
        }
        match streams.evals().await {
            Ok(stream) => {
                let config = pull::Config {
                    filter_subject: streams.subjects.evals(run),
                    deliver_policy: DeliverPolicy::All,
                    ack_policy: AckPolicy::None,
                    inactive_threshold: Duration::from_secs(120),
                    ..Default::default()
                };
                let follower = Follower::new(stream, config, "evaluation results");
                tokio::spawn(listen(follower, stop.progress.clone(), shutdown.clone()));
            }
            Err(e) => tracing::warn!("early stopping is off: cannot follow the evaluation results ({e})"),
        }
        stop
    }

    /// The reason to stop now, if there is one.
    pub fn reason(&self) -> Option<String> {
        let progress = self.progress.lock().ok()?;
        if self.patience == 0 || progress.without_improvement < self.patience {
            return None;
        }
        let (best, step) = progress.best?;
        Some(format!(
            "{} evaluations in a row did not beat precision@1 = {best:.4} of step {step} (train.early_stopping_patience)",
            progress.without_improvement
        ))
    }
}

async fn listen(mut follower: Follower, progress: Arc<Mutex<Progress>>, shutdown: CancellationToken) {
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => return,
            m = follower.next() => m,
        };
        match message {
            Some(Ok(m)) => match inception_core::nats::decode_control::<EvalResult>(&m.payload) {
                Ok(result) => {
                    if let Ok(mut p) = progress.lock() {
                        p.record(result.step, result.precision_at_1);
                    }
                }
                Err(e) => tracing::warn!("ignoring an evaluation result: {e}"),
            },
            Some(Err(e)) => tracing::warn!("evaluation results: {e}"),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_evaluations_since_the_best_one() {
        let mut p = Progress::default();
        p.record(100, 0.5);
        p.record(200, 0.6);
        assert_eq!((p.best, p.without_improvement), (Some((0.6, 200)), 0));
        p.record(300, 0.6);
        p.record(400, 0.55);
        assert_eq!(p.without_improvement, 2, "equal or lower does not improve");
        p.record(400, 0.55);
        assert_eq!(p.without_improvement, 2, "a result heard twice counts once");
        p.record(500, f64::NAN);
        assert_eq!(p.without_improvement, 2, "a NaN is no evaluation");
        p.record(600, 0.7);
        assert_eq!((p.best, p.without_improvement), (Some((0.7, 600)), 0));
    }

    #[test]
    fn stops_only_after_patience_evaluations_without_improvement() {
        let stop = EarlyStop { patience: 2, progress: Arc::default() };
        let record = |step, precision| stop.progress.lock().unwrap().record(step, precision);
        record(1, 0.4);
        record(2, 0.3);
        assert!(stop.reason().is_none());
        record(3, 0.4);
        let reason = stop.reason().expect("two evaluations without improvement");
        assert!(reason.contains("precision@1 = 0.4000 of step 1"), "{reason}");
        let never = EarlyStop { patience: 0, progress: stop.progress.clone() };
        assert!(never.reason().is_none(), "patience 0 never stops");
    }
}
