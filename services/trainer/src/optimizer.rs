//! RMSProp with TensorFlow 1's semantics, as `inception_train.py` uses it
//! (decay 0.9, momentum 0.9, epsilon 1.0). libtorch's RMSprop differs: it
//! adds epsilon outside the square root and starts the mean square at 0,
//! which with epsilon = 1.0 changes every step. Here, per variable:
//!
//! ```text
//! ms  = decay * ms + (1 - decay) * g^2        (ms starts at 1)
//! mom = momentum * mom + lr * g / sqrt(ms + epsilon)
//! w   = w - mom
//! ```
//!
//! `g` includes the L2 term's gradient `weight_decay * w` for the variables
//! the loss regularises (added here rather than through autograd).

use std::collections::HashMap;
use tch::Tensor;

pub struct RmsProp {
    pub decay: f64,
    pub momentum: f64,
    pub epsilon: f64,
    pub weight_decay: f64,
    /// (name, variable, mean square, momentum) in a fixed order.
    slots: Vec<(String, Tensor, Tensor, Tensor)>,
    /// Per slot: whether its variable gets weight decay.
    decayed: Vec<bool>,
}

impl RmsProp {
    /// Slots for every named trainable variable; `weight_decay` applies to
    /// those for which `regularized(name)` holds.
    pub fn new(
        vars: Vec<(String, Tensor)>,
        decay: f64,
        momentum: f64,
        epsilon: f64,
        weight_decay: f64,
        regularized: impl Fn(&str) -> bool,
    ) -> Self {
        let decayed = vars.iter().map(|(n, _)| regularized(n)).collect();
        let slots = vars
            .into_iter()
            .map(|(n, v)| {
                let ms = tch::no_grad(|| v.ones_like());
                let mom = tch::no_grad(|| v.zeros_like());
                (n, v, ms, mom)
            })
            .collect();
        Self { decay, momentum, epsilon, weight_decay, slots, decayed }
    }

    /// The variables, in slot order (the order [`RmsProp::step`] takes gradients in).
    pub fn variables(&self) -> Vec<Tensor> {
        self.slots.iter().map(|(_, v, _, _)| v.shallow_clone()).collect()
    }

    pub fn names(&self) -> Vec<String> {
        self.slots.iter().map(|(n, _, _, _)| n.clone()).collect()
    }

    /// Applies one update with learning rate `lr` from `gradients` (slot
    /// order; an undefined gradient leaves its variable alone). In-place
    /// operations keep it to a few passes over each variable.
    pub fn step(&mut self, lr: f64, gradients: &[Tensor]) {
        let (decay, momentum, eps, wd) = (self.decay, self.momentum, self.epsilon, self.weight_decay);
        tch::no_grad(|| {
            for (((_, v, ms, mom), decayed), g) in self.slots.iter_mut().zip(&self.decayed).zip(gradients) {
                if !g.defined() {
                    continue;
                }
                let mut g = g.shallow_clone();
                if *decayed && wd != 0.0 {
                    // g += wd * v without a temporary: a 0-dim factor broadcasts.
                    let _ = g.addcmul_(v, &Tensor::from(wd).to_kind(v.kind()).to_device(v.device()));
                }
                let _ = ms.lerp_(&g.square(), 1.0 - decay);
                let _ = mom.g_mul_scalar_(momentum);
                if lr != 0.0 {
                    // mom += lr * g / sqrt(ms + eps), as g / (sqrt(ms + eps) / lr).
                    let mut denom = &*ms + eps;
                    let _ = denom.sqrt_();
                    let _ = denom.g_div_scalar_(lr);
                    let _ = mom.addcdiv_(&g, &denom);
                }
                let _ = v.g_sub_(&*mom);
            }
        });
    }

    /// The variables that get weight decay.
    pub fn regularized_variables(&self) -> Vec<Tensor> {
        self.slots.iter().zip(&self.decayed).filter(|(_, d)| **d).map(|((_, v, _, _), _)| v.shallow_clone()).collect()
    }

    /// Slot tensors for a checkpoint: `optimizer/ms/<name>`, `optimizer/mom/<name>`.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.slots
            .iter()
            .flat_map(|(n, _, ms, mom)| {
                [(format!("optimizer/ms/{n}"), ms.shallow_clone()), (format!("optimizer/mom/{n}"), mom.shallow_clone())]
            })
            .collect()
    }

    /// Restores slots saved by [`RmsProp::state`]; returns how many were found.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>) -> usize {
        let mut found = 0;
        tch::no_grad(|| {
            for (n, _, ms, mom) in &mut self.slots {
                if let (Some(a), Some(b)) = (tensors.get(&format!("optimizer/ms/{n}")), tensors.get(&format!("optimizer/mom/{n}"))) {
                    if a.size() == ms.size() && b.size() == mom.size() {
                        ms.copy_(a);
                        mom.copy_(b);
                        found += 1;
                    }
                }
            }
        });
        found
    }
}

/// The original's staircase decay: `initial * factor ^ floor(step / decay_steps)`.
pub fn learning_rate(initial: f64, factor: f64, decay_steps: u64, step: u64) -> f64 {
    initial * factor.powi((step / decay_steps.max(1)) as i32)
}

/// `int(examples_per_epoch / batch_size * num_epochs_per_decay)`, at least 1.
pub fn decay_steps(examples_per_epoch: u64, batch_size: u64, epochs_per_decay: f64) -> u64 {
    ((examples_per_epoch as f64 / batch_size.max(1) as f64 * epochs_per_decay) as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn matches_tensorflow_rmsprop_by_hand() {
        let w = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let mut opt = RmsProp::new(vec![("w".into(), w.shallow_clone())], 0.9, 0.9, 1.0, 0.01, |_| true);
        // loss = sum(w^2) / 2 -> g = w, plus weight decay 0.01 * w
        let (mut ms, mut mom, mut x) = ([1.0f64, 1.0], [0.0f64, 0.0], [1.0f64, -2.0]);
        for _ in 0..3 {
            let loss = (&w * &w).sum(Kind::Float).multiply_scalar(0.5);
            let grads = Tensor::run_backward(&[&loss], &opt.variables(), false, false);
            opt.step(0.1, &grads);
            for i in 0..2 {
                let g = x[i] + 0.01 * x[i];
                ms[i] = 0.9 * ms[i] + 0.1 * g * g;
                mom[i] = 0.9 * mom[i] + 0.1 * g / (ms[i] + 1.0).sqrt();
                x[i] -= mom[i];
            }
        }
        let got: Vec<f64> = Vec::<f32>::try_from(&w).unwrap().into_iter().map(f64::from).collect();
        for i in 0..2 {
            assert!((got[i] - x[i]).abs() < 1e-5, "{got:?} vs {x:?}");
        }
        let state = opt.state();
        assert_eq!(state[0].0, "optimizer/ms/w");
    }

    #[test]
    fn staircase_schedule() {
        assert_eq!(decay_steps(3170, 32, 30.0), 2971);
        assert_eq!(learning_rate(0.1, 0.16, 100, 99), 0.1);
        assert!((learning_rate(0.1, 0.16, 100, 250) - 0.1 * 0.16 * 0.16).abs() < 1e-12);
    }
}
