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

use crate::flat::{Layout, ALIGN};

pub struct RmsProp {
    pub decay: f64,
    pub momentum: f64,
    pub epsilon: f64,
    pub weight_decay: f64,
    /// (name, variable, mean square, momentum) in a fixed order. The slot
    /// tensors are views of `ms_all` and `mom_all`.
    slots: Vec<(String, Tensor, Tensor, Tensor)>,
    /// Per slot: whether its variable gets weight decay.
    decayed: Vec<bool>,
    /// Every slot's mean square and momentum, end to end (slot order, laid
    /// out by `layout`): the update runs as a few operations over all
    /// variables at once instead of ~10 per variable (on a GPU, kernel
    /// launches add up: ~300 variables).
    ms_all: Tensor,
    mom_all: Tensor,
    layout: Layout,
    /// [`ALIGN`] zeros: the gaps between gradients laid end to end.
    zeros: Tensor,
    /// Set when the variables themselves lie end to end with `layout`
    /// ([`crate::flat::FlatVariables`]): then weight decay and `w -= mom`
    /// are one operation each too.
    flat: Option<FlatSlots>,
}

struct FlatSlots {
    /// The variables' buffer.
    vars: Tensor,
    /// `weight_decay` where a variable is regularised, 0 elsewhere.
    decay_mask: Tensor,
}

impl RmsProp {
    /// Slots for every named trainable variable; `weight_decay` applies to
    /// those for which `regularized(name)` holds. The variables share one
    /// device and kind.
    pub fn new(
        vars: Vec<(String, Tensor)>,
        decay: f64,
        momentum: f64,
        epsilon: f64,
        weight_decay: f64,
        regularized: impl Fn(&str) -> bool,
    ) -> Self {
        let decayed = vars.iter().map(|(n, _)| regularized(n)).collect();
        let layout = Layout::new(vars.iter().map(|(_, v)| v.numel() as i64));
        let options = vars.first().map_or((tch::Kind::Float, tch::Device::Cpu), |(_, v)| (v.kind(), v.device()));
        let (ms_all, mom_all, zeros) = tch::no_grad(|| {
            (
                Tensor::ones([layout.total], options),
                Tensor::zeros([layout.total], options),
                Tensor::zeros([ALIGN], options),
            )
        });
        let slots = vars
            .into_iter()
            .enumerate()
            .map(|(i, (n, v))| {
                let (ms, mom) = (layout.view(&ms_all, i, &v.size()), layout.view(&mom_all, i, &v.size()));
                (n, v, ms, mom)
            })
            .collect();
        Self { decay, momentum, epsilon, weight_decay, slots, decayed, ms_all, mom_all, layout, zeros, flat: None }
    }

    /// Uses `all`, the buffer the variables lie in end to end in slot order
    /// (the trainable part of [`crate::flat::FlatVariables`]), for whole-model
    /// updates. Ignored, with a warning, when the variables are not there.
    pub fn with_flat_variables(mut self, all: Tensor) -> Self {
        if !self.layout.holds(&all, &self.variables()) {
            tracing::warn!("the optimizer's variables are not laid out in one buffer: updating them one by one");
            return self;
        }
        let decay_mask = tch::no_grad(|| {
            let mask = Tensor::zeros([self.layout.total], (all.kind(), all.device()));
            for (i, decayed) in self.decayed.iter().enumerate() {
                if *decayed {
                    let _ = mask.narrow(0, self.layout.offsets[i], self.layout.lens[i]).fill_(self.weight_decay);
                }
            }
            mask
        });
        self.flat = Some(FlatSlots { vars: all, decay_mask });
        self
    }

    /// Whether whole-model updates run on one buffer of variables.
    pub fn is_flat(&self) -> bool {
        self.flat.is_some()
    }

    /// The variables, in slot order (the order [`RmsProp::step`] takes gradients in).
    pub fn variables(&self) -> Vec<Tensor> {
        self.slots.iter().map(|(_, v, _, _)| v.shallow_clone()).collect()
    }

    pub fn names(&self) -> Vec<String> {
        self.slots.iter().map(|(n, _, _, _)| n.clone()).collect()
    }

    /// Applies one update with learning rate `lr` from `gradients` (slot
    /// order; an undefined gradient leaves its variable alone). The weight
    /// decay term is added to `gradients` in place: pass this step's own.
    pub fn step(&mut self, lr: f64, gradients: &[Tensor]) {
        if gradients.len() == self.slots.len() && gradients.iter().all(Tensor::defined) {
            self.step_all(lr, gradients);
        } else {
            self.step_each(lr, gradients);
        }
    }

    /// The update over all slots at once: the gradients (with their weight
    /// decay) end to end, then the RMSProp arithmetic on the whole slot
    /// buffers, then `w -= mom` (per variable unless they lie in one buffer).
    fn step_all(&mut self, lr: f64, gradients: &[Tensor]) {
        tch::no_grad(|| {
            let g = match &self.flat {
                Some(flat) => {
                    let mut g = self.layout.gather(gradients, &self.zeros);
                    if self.weight_decay != 0.0 {
                        let _ = g.addcmul_(&flat.vars, &flat.decay_mask);
                    }
                    g
                }
                None => {
                    let wd_factor = self.weight_decay_factor();
                    let decayed: Vec<Tensor> = self
                        .slots
                        .iter()
                        .zip(&self.decayed)
                        .zip(gradients)
                        .map(|(((_, v, _, _), decayed), g)| self.with_weight_decay(g, v, *decayed, &wd_factor))
                        .collect();
                    self.layout.gather(&decayed, &self.zeros)
                }
            };
            let (mut ms, mut mom) = (self.ms_all.shallow_clone(), self.mom_all.shallow_clone());
            self.update_slots(&mut ms, &mut mom, &g, lr);
            match &mut self.flat {
                Some(flat) => {
                    let _ = flat.vars.g_sub_(&self.mom_all);
                }
                None => {
                    for (_, v, _, mom) in &mut self.slots {
                        let _ = v.g_sub_(&*mom);
                    }
                }
            }
        });
    }

    /// The same update variable by variable, skipping those without a gradient.
    fn step_each(&mut self, lr: f64, gradients: &[Tensor]) {
        tch::no_grad(|| {
            let wd_factor = self.weight_decay_factor();
            for (((_, v, ms, mom), decayed), g) in self.slots.iter().zip(&self.decayed).zip(gradients) {
                if !g.defined() {
                    continue;
                }
                let g = self.with_weight_decay(g, v, *decayed, &wd_factor);
                let (mut ms, mut mom, mut v) = (ms.shallow_clone(), mom.shallow_clone(), v.shallow_clone());
                self.update_slots(&mut ms, &mut mom, &g, lr);
                let _ = v.g_sub_(&mom);
            }
        });
    }

    /// `weight_decay` as a 0-dim tensor on the slots' device, so that adding
    /// `wd * v` broadcasts without a temporary.
    fn weight_decay_factor(&self) -> Tensor {
        Tensor::from(self.weight_decay).to_kind(self.ms_all.kind()).to_device(self.ms_all.device())
    }

    /// `g + wd * v` for a regularised variable, added in place (the
    /// gradients are this step's own); `g` itself otherwise.
    fn with_weight_decay(&self, g: &Tensor, v: &Tensor, decayed: bool, wd_factor: &Tensor) -> Tensor {
        let mut g = g.shallow_clone();
        if decayed && self.weight_decay != 0.0 {
            let _ = g.addcmul_(v, wd_factor);
        }
        g
    }

    /// The RMSProp arithmetic on slots `ms` and `mom` (one variable's, or
    /// all of them end to end) for gradient `g`.
    fn update_slots(&self, ms: &mut Tensor, mom: &mut Tensor, g: &Tensor, lr: f64) {
        let _ = ms.lerp_(&g.square(), 1.0 - self.decay);
        let _ = mom.g_mul_scalar_(self.momentum);
        if lr != 0.0 {
            // mom += lr * g / sqrt(ms + eps), as g / (sqrt(ms + eps) / lr).
            let mut denom = &*ms + self.epsilon;
            let _ = denom.sqrt_();
            let _ = denom.g_div_scalar_(lr);
            let _ = mom.addcdiv_(g, &denom);
        }
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
                if let (Some(a), Some(b)) =
                    (tensors.get(&format!("optimizer/ms/{n}")), tensors.get(&format!("optimizer/mom/{n}")))
                {
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

    /// Three variables of different shapes, the first and last decayed.
    fn three(seed: i64) -> (RmsProp, Vec<Tensor>) {
        tch::manual_seed(seed);
        let shapes: [&[i64]; 3] = [&[4, 3], &[5], &[2, 2, 2]];
        let vars: Vec<(String, Tensor)> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("v{i}"), Tensor::randn(*s, (Kind::Float, tch::Device::Cpu))))
            .collect();
        let grads = shapes.iter().map(|s| Tensor::randn(*s, (Kind::Float, tch::Device::Cpu))).collect();
        (RmsProp::new(vars, 0.9, 0.9, 1.0, 0.04, |n| n != "v1"), grads)
    }

    /// [`three`] with the variables moved into one buffer, as
    /// [`crate::flat::FlatVariables`] lays them out.
    fn three_flat(seed: i64) -> (RmsProp, Vec<Tensor>) {
        let (opt, grads) = three(seed);
        let vars = opt.variables();
        let layout = Layout::new(vars.iter().map(|v| v.numel() as i64));
        let all = Tensor::full([layout.total], 7.0, (Kind::Float, tch::Device::Cpu));
        for (i, v) in vars.into_iter().enumerate() {
            let mut v = v;
            let place = layout.view(&all, i, &v.size());
            place.shallow_clone().copy_(&v);
            v.set_data(&place);
        }
        let opt = opt.with_flat_variables(all);
        assert!(opt.is_flat());
        (opt, grads)
    }

    fn snapshot(opt: &RmsProp) -> Vec<Vec<f32>> {
        opt.slots
            .iter()
            .flat_map(|(_, v, ms, mom)| [v, ms, mom].map(|t| Vec::<f32>::try_from(&t.reshape([-1])).unwrap()))
            .collect()
    }

    #[test]
    fn all_at_once_equals_variable_by_variable() {
        let (mut together, grads) = three(3);
        let (mut each, _) = three(3);
        for lr in [0.1, 0.05, 0.0] {
            together.step(lr, &grads.iter().map(Tensor::copy).collect::<Vec<_>>());
            each.step_each(lr, &grads.iter().map(Tensor::copy).collect::<Vec<_>>());
            assert_eq!(snapshot(&together), snapshot(&each), "after a step at lr {lr}");
        }
        // An undefined gradient: that variable and its slots stay as they are.
        let before = snapshot(&together);
        let partial = vec![grads[0].copy(), Tensor::new(), grads[2].copy()];
        together.step(0.1, &partial);
        let after = snapshot(&together);
        assert_eq!(after[3..6], before[3..6], "v1 and its slots untouched");
        assert_ne!(after[0], before[0], "v0 moved");
    }

    #[test]
    fn one_buffer_of_variables_equals_variable_by_variable() {
        let (mut flat, grads) = three_flat(5);
        let (mut each, _) = three(5);
        assert!(!each.is_flat());
        for lr in [0.1, 0.05] {
            flat.step(lr, &grads.iter().map(Tensor::copy).collect::<Vec<_>>());
            each.step_each(lr, &grads.iter().map(Tensor::copy).collect::<Vec<_>>());
            assert_eq!(snapshot(&flat), snapshot(&each), "after a step at lr {lr}");
        }
        // Variables not where the layout puts them: refused, updated one by one.
        let (opt, _) = three(5);
        let elsewhere = Tensor::zeros([opt.layout.total], (Kind::Float, tch::Device::Cpu));
        assert!(!opt.with_flat_variables(elsewhere).is_flat());
    }

    #[test]
    fn slot_views_survive_a_checkpoint_round_trip() {
        let (mut opt, grads) = three(4);
        opt.step(0.1, &grads);
        let bytes = inception_model::checkpoint::tensors_to_bytes(&opt.state()).unwrap();
        let loaded = inception_model::checkpoint::tensors_from_bytes(&bytes).unwrap();
        let (mut fresh, _) = three(4);
        assert_eq!(fresh.load_state(&loaded), 3);
        let slots = |o: &RmsProp| {
            snapshot(o).into_iter().enumerate().filter(|(i, _)| i % 3 != 0).map(|(_, s)| s).collect::<Vec<_>>()
        };
        assert_eq!(slots(&fresh), slots(&opt), "mean squares and momenta restored, the last variable's included");
        // Restored into the shared buffers: the next update uses them.
        fresh.step(0.1, &grads);
        assert_ne!(slots(&fresh), slots(&opt));
    }

    #[test]
    fn staircase_schedule() {
        assert_eq!(decay_steps(3170, 32, 30.0), 2971);
        assert_eq!(learning_rate(0.1, 0.16, 100, 99), 0.1);
        assert!((learning_rate(0.1, 0.16, 100, 250) - 0.1 * 0.16 * 0.16).abs() < 1e-12);
    }
}
