//! The learning rate at each step: an optional linear warm-up, then the
//! original's staircase decay, a cosine decay, or a constant rate.

use inception_core::settings::ScheduleSetting;

/// The schedule's shape and constants.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// The rate after the warm-up, before any decay.
    pub initial: f64,
    /// What follows the warm-up.
    pub kind: ScheduleSetting,
    /// Staircase: the factor applied every `decay_steps`.
    pub factor: f64,
    /// Staircase: steps between decays.
    pub decay_steps: u64,
    /// Steps of linear warm-up; 0 = none.
    pub warmup_steps: u64,
    /// The fraction of `initial` the warm-up starts at.
    pub warmup_start_fraction: f64,
    /// Cosine: steps from the end of the warm-up to the end of the decay.
    pub cosine_steps: u64,
    /// Cosine: the fraction of `initial` at the end (and after).
    pub cosine_final_fraction: f64,
}

impl Schedule {
    /// The learning rate of the update that follows `step` updates.
    pub fn learning_rate(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            let progress = step as f64 / self.warmup_steps as f64;
            let start = self.warmup_start_fraction;
            return self.initial * (start + (1.0 - start) * progress);
        }
        let after = step - self.warmup_steps;
        match self.kind {
            ScheduleSetting::Staircase => staircase(self.initial, self.factor, self.decay_steps, after),
            ScheduleSetting::Constant => self.initial,
            ScheduleSetting::Cosine => {
                let progress = (after as f64 / self.cosine_steps.max(1) as f64).min(1.0);
                let end = self.cosine_final_fraction;
                self.initial * (end + (1.0 - end) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()))
            }
        }
    }
}

/// The original's staircase decay: `initial * factor ^ floor(step / decay_steps)`.
pub fn staircase(initial: f64, factor: f64, decay_steps: u64, step: u64) -> f64 {
    initial * factor.powi(i32::try_from(step / decay_steps.max(1)).unwrap_or(i32::MAX))
}

/// `int(examples_per_epoch / batch_size * num_epochs_per_decay)`, at least 1.
pub fn decay_steps(examples_per_epoch: u64, batch_size: u64, epochs_per_decay: f64) -> u64 {
    ((examples_per_epoch as f64 / batch_size.max(1) as f64 * epochs_per_decay) as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(kind: ScheduleSetting) -> Schedule {
        Schedule {
            initial: 0.1,
            kind,
            factor: 0.16,
            decay_steps: 100,
            warmup_steps: 0,
            warmup_start_fraction: 0.0,
            cosine_steps: 1000,
            cosine_final_fraction: 0.0,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn staircase_schedule() {
        assert_eq!(decay_steps(3170, 32, 30.0), 2971);
        let s = schedule(ScheduleSetting::Staircase);
        assert_eq!(s.learning_rate(99), 0.1);
        assert!(close(s.learning_rate(100), 0.016));
        assert!(close(s.learning_rate(250), 0.1 * 0.16 * 0.16));
    }

    #[test]
    fn a_warm_up_starts_at_the_stated_fraction_and_rises_linearly() {
        let s = Schedule { warmup_steps: 10, warmup_start_fraction: 0.25, ..schedule(ScheduleSetting::Constant) };
        assert!(close(s.learning_rate(0), 0.025));
        // 0.1 * (0.25 + 0.75 * 4 / 10) = 0.055
        assert!(close(s.learning_rate(4), 0.055));
        assert!(close(s.learning_rate(10), 0.1));
        assert!(close(s.learning_rate(5000), 0.1));
        // The staircase counts its steps from the end of the warm-up.
        let stairs = Schedule { warmup_steps: 10, ..schedule(ScheduleSetting::Staircase) };
        assert!(close(stairs.learning_rate(109), 0.1));
        assert!(close(stairs.learning_rate(110), 0.016));
    }

    #[test]
    fn cosine_decays_to_the_final_fraction_and_stays() {
        let s = Schedule { cosine_final_fraction: 0.1, ..schedule(ScheduleSetting::Cosine) };
        assert!(close(s.learning_rate(0), 0.1));
        // Half-way: 0.1 * (0.1 + 0.9 * 0.5) = 0.055.
        assert!(close(s.learning_rate(500), 0.055));
        // A quarter: cos(pi / 4) = 0.70710678...; 0.1 * (0.1 + 0.9 * 0.5 * 1.70710678...) = 0.086819805...
        assert!((s.learning_rate(250) - 0.086_819_805_153_394_64).abs() < 1e-12);
        assert!(close(s.learning_rate(1000), 0.01));
        assert!(close(s.learning_rate(5000), 0.01));
    }
}
