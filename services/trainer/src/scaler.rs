//! Dynamic loss scaling for fp16 (`train.precision = "fp16"`), as PyTorch's
//! `GradScaler`: the loss is multiplied by a scale before the backward pass
//! so that small gradients do not underflow in half precision; the
//! gradients are divided by it again. A step whose gradients overflowed
//! (inf or NaN) is skipped and the scale halved; after `growth_interval`
//! good steps in a row it doubles.

use tch::Tensor;

/// The loss scale and its bookkeeping.
#[derive(Debug, Clone)]
pub struct LossScaler {
    scale: f64,
    good_steps: u32,
    growth_interval: u32,
}

/// PyTorch's defaults.
const INITIAL_SCALE: f64 = 65536.0;
const GROWTH_INTERVAL: u32 = 2000;

impl Default for LossScaler {
    fn default() -> Self {
        Self { scale: INITIAL_SCALE, good_steps: 0, growth_interval: GROWTH_INTERVAL }
    }
}

impl LossScaler {
    /// What the loss is multiplied by before the backward pass.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Divides `gradients` by the scale in place; false (and the scale
    /// halved) when any of them is not finite: the step must be skipped.
    pub fn unscale(&mut self, gradients: &mut [Tensor]) -> bool {
        let inverse = 1.0 / self.scale;
        let finite = tch::no_grad(|| {
            gradients.iter_mut().filter(|g| g.defined()).all(|g| {
                let _ = g.g_mul_scalar_(inverse);
                g.isfinite().all().int64_value(&[]) != 0
            })
        });
        self.update(finite);
        finite
    }

    fn update(&mut self, finite: bool) {
        if !finite {
            self.scale = (self.scale / 2.0).max(1.0);
            self.good_steps = 0;
            return;
        }
        self.good_steps += 1;
        if self.good_steps >= self.growth_interval {
            self.scale *= 2.0;
            self.good_steps = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn an_overflow_is_skipped_and_halves_the_scale_good_steps_grow_it() {
        let mut scaler = LossScaler { growth_interval: 3, ..Default::default() };
        let grad = || Tensor::from_slice(&[65536.0f32, -131072.0]);
        let mut good = vec![grad()];
        assert!(scaler.unscale(&mut good));
        assert_eq!(Vec::<f32>::try_from(&good[0]).unwrap(), vec![1.0, -2.0], "divided by the scale");
        let mut overflowed = vec![grad(), Tensor::from_slice(&[f32::INFINITY])];
        assert!(!scaler.unscale(&mut overflowed), "an infinite gradient: skip the step");
        assert_eq!(scaler.scale(), 32768.0);
        let mut nan = vec![Tensor::full([2], f64::NAN, (Kind::Float, Device::Cpu))];
        assert!(!scaler.unscale(&mut nan));
        assert_eq!(scaler.scale(), 16384.0);
        for _ in 0..3 {
            assert!(scaler.unscale(&mut [grad()]));
        }
        assert_eq!(scaler.scale(), 32768.0, "three good steps in a row double it");
        let mut tiny = LossScaler { scale: 1.0, ..Default::default() };
        assert!(!tiny.unscale(&mut [Tensor::from_slice(&[f32::NAN])]));
        assert_eq!(tiny.scale(), 1.0, "never below 1");
    }
}
