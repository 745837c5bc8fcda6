//! The optimizers: RMSProp with TensorFlow 1's semantics, as
//! `inception_train.py` uses it (decay 0.9, momentum 0.9, epsilon 1.0; the
//! default), SGD with momentum (optionally Nesterov), and AdamW. libtorch's
//! RMSprop differs from TF's: it adds epsilon outside the square root and
//! starts the mean square at 0, which with epsilon = 1.0 changes every step.
//! Per variable, with slots `a` and `b`:
//!
//! ```text
//! RMSProp  a = ms  = decay * ms + (1 - decay) * g^2        (ms starts at 1)
//!          b = mom = momentum * mom + lr * g / sqrt(ms + epsilon)
//!          w = w - mom
//! SGD      a = mom = momentum * mom + g
//!          w = w - lr * mom            (Nesterov: w - lr * (g + momentum * mom))
//! AdamW    w = w - lr * wd * w         (decoupled weight decay)
//!          a = m = beta1 * m + (1 - beta1) * g,  b = v = beta2 * v + (1 - beta2) * g^2
//!          w = w - lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + epsilon)
//! ```
//!
//! For RMSProp and SGD, `g` includes the L2 term's gradient `weight_decay *
//! w` for the variables the loss regularises (added here rather than
//! through autograd), as slim's regularisers do.

use std::collections::HashMap;
use tch::Tensor;

use crate::flat::{Layout, ALIGN};

/// The update rule and its constants.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    /// TF 1's RMSProp.
    RmsProp { decay: f64, momentum: f64, epsilon: f64 },
    /// SGD with momentum.
    Sgd { momentum: f64, nesterov: bool },
    /// Adam with decoupled weight decay.
    AdamW { beta1: f64, beta2: f64, epsilon: f64 },
}

impl Rule {
    /// Checkpoint names of the two slots (`optimizer/<name>/<variable>`);
    /// SGD has one.
    fn slot_names(self) -> [Option<&'static str>; 2] {
        match self {
            Rule::RmsProp { .. } => [Some("ms"), Some("mom")],
            Rule::Sgd { .. } => [Some("mom"), None],
            Rule::AdamW { .. } => [Some("m"), Some("v")],
        }
    }

    /// The first slot's starting value (TF starts RMSProp's mean square at 1).
    fn first_slot_start(self) -> f64 {
        match self {
            Rule::RmsProp { .. } => 1.0,
            _ => 0.0,
        }
    }

    /// Whether weight decay is applied to the weights directly instead of
    /// through the gradient.
    fn decoupled(self) -> bool {
        matches!(self, Rule::AdamW { .. })
    }

    /// The rule's arithmetic on slots `a` and `b` (one variable's, or all
    /// of them end to end) for gradient `g`; returns what to subtract from
    /// the variables. `t` is the number of this update (1 for the first).
    fn update(self, a: &mut Tensor, b: &mut Tensor, g: &Tensor, lr: f64, t: u64) -> Tensor {
        match self {
            Rule::RmsProp { decay, momentum, epsilon } => {
                let _ = a.lerp_(&g.square(), 1.0 - decay);
                let _ = b.g_mul_scalar_(momentum);
                if lr != 0.0 {
                    // mom += lr * g / sqrt(ms + eps), as g / (sqrt(ms + eps) / lr).
                    let mut denom = &*a + epsilon;
                    let _ = denom.sqrt_();
                    let _ = denom.g_div_scalar_(lr);
                    let _ = b.addcdiv_(g, &denom);
                }
                b.shallow_clone()
            }
            Rule::Sgd { momentum, nesterov } => {
                let _ = a.g_mul_scalar_(momentum);
                let _ = a.g_add_(g);
                if nesterov {
                    (g + &*a * momentum) * lr
                } else {
                    &*a * lr
                }
            }
            Rule::AdamW { beta1, beta2, epsilon } => {
                let _ = a.lerp_(g, 1.0 - beta1);
                let _ = b.lerp_(&g.square(), 1.0 - beta2);
                let t = i32::try_from(t.max(1)).unwrap_or(i32::MAX);
                let (correction1, correction2) = (1.0 - beta1.powi(t), 1.0 - beta2.powi(t));
                let mut denom = &*b / correction2;
                let _ = denom.sqrt_();
                let _ = denom.g_add_scalar_(epsilon);
                &*a / denom * (lr / correction1)
            }
        }
    }
}

/// One optimizer over the trainable variables: its slots, and the whole-
/// model updates on flat buffers.
pub struct Optimizer {
    pub rule: Rule,
    pub weight_decay: f64,
    /// (name, variable, slot a, slot b) in a fixed order. The slot tensors
    /// are views of `a_all` and `b_all`.
    slots: Vec<(String, Tensor, Tensor, Tensor)>,
    /// Per slot: whether its variable gets weight decay.
    decayed: Vec<bool>,
    /// Every slot's state, end to end (slot order, laid out by `layout`):
    /// the update runs as a few operations over all variables at once
    /// instead of ~10 per variable (on a GPU, kernel launches add up: ~300
    /// variables).
    a_all: Tensor,
    b_all: Tensor,
    layout: Layout,
    /// [`ALIGN`] zeros: the gaps between gradients laid end to end.
    zeros: Tensor,
    /// Set when the variables themselves lie end to end with `layout`
    /// ([`crate::flat::FlatVariables`]): then weight decay and `w -= delta`
    /// are one operation each too.
    flat: Option<FlatSlots>,
    /// Updates applied so far (AdamW's bias correction counts them).
    updates: u64,
}

/// The optimizer of inception_train.py.
pub type RmsProp = Optimizer;

struct FlatSlots {
    /// The variables' buffer.
    vars: Tensor,
    /// `weight_decay` where a variable is regularised, 0 elsewhere.
    decay_mask: Tensor,
}

impl Optimizer {
    /// TF RMSProp over every named trainable variable; `weight_decay`
    /// applies to those for which `regularized(name)` holds. The variables
    /// share one device and kind.
    pub fn new(
        vars: Vec<(String, Tensor)>,
        decay: f64,
        momentum: f64,
        epsilon: f64,
        weight_decay: f64,
        regularized: impl Fn(&str) -> bool,
    ) -> Self {
        Self::with_rule(vars, Rule::RmsProp { decay, momentum, epsilon }, weight_decay, regularized)
    }

    /// `rule` over every named trainable variable; `weight_decay` applies to
    /// those for which `regularized(name)` holds.
    pub fn with_rule(
        vars: Vec<(String, Tensor)>,
        rule: Rule,
        weight_decay: f64,
        regularized: impl Fn(&str) -> bool,
    ) -> Self {
        let decayed = vars.iter().map(|(n, _)| regularized(n)).collect();
        let layout = Layout::new(vars.iter().map(|(_, v)| v.numel() as i64));
        let options = vars.first().map_or((tch::Kind::Float, tch::Device::Cpu), |(_, v)| (v.kind(), v.device()));
        let (a_all, b_all, zeros) = tch::no_grad(|| {
            (
                Tensor::full([layout.total], rule.first_slot_start(), options),
                Tensor::zeros([layout.total], options),
                Tensor::zeros([ALIGN], options),
            )
        });
        let slots = vars
            .into_iter()
            .enumerate()
            .map(|(i, (n, v))| {
                let (a, b) = (layout.view(&a_all, i, &v.size()), layout.view(&b_all, i, &v.size()));
                (n, v, a, b)
            })
            .collect();
        Self { rule, weight_decay, slots, decayed, a_all, b_all, layout, zeros, flat: None, updates: 0 }
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

    /// Sets the number of updates applied so far (a resumed run's step).
    pub fn set_updates(&mut self, updates: u64) {
        self.updates = updates;
    }

    /// The variables, in slot order (the order [`Optimizer::step`] takes gradients in).
    pub fn variables(&self) -> Vec<Tensor> {
        self.slots.iter().map(|(_, v, _, _)| v.shallow_clone()).collect()
    }

    /// The variables' names, in slot order.
    pub fn names(&self) -> Vec<String> {
        self.slots.iter().map(|(n, _, _, _)| n.clone()).collect()
    }

    /// Applies one update with learning rate `lr` from `gradients` (slot
    /// order; an undefined gradient leaves its variable alone). The weight
    /// decay term is added to `gradients` in place: pass this step's own.
    pub fn step(&mut self, lr: f64, gradients: &[Tensor]) {
        self.updates += 1;
        if gradients.len() == self.slots.len() && gradients.iter().all(Tensor::defined) {
            self.step_all(lr, gradients);
        } else {
            self.step_each(lr, gradients);
        }
    }

    /// The update over all slots at once: the gradients (with their weight
    /// decay unless it is decoupled) end to end, then the rule's arithmetic
    /// on the whole slot buffers, then `w -= delta` (per variable unless they
    /// lie in one buffer).
    fn step_all(&mut self, lr: f64, gradients: &[Tensor]) {
        tch::no_grad(|| {
            if self.fused_rmsprop(lr, gradients) {
                return;
            }
            let coupled = self.weight_decay != 0.0 && !self.rule.decoupled();
            let g = match &self.flat {
                Some(flat) => {
                    let mut g = self.layout.gather(gradients, &self.zeros);
                    if coupled {
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
            self.decay_decoupled(lr);
            let (mut a, mut b) = (self.a_all.shallow_clone(), self.b_all.shallow_clone());
            let delta = self.rule.update(&mut a, &mut b, &g, lr, self.updates);
            match &mut self.flat {
                Some(flat) => {
                    let _ = flat.vars.g_sub_(&delta);
                }
                None => {
                    for (i, (_, v, _, _)) in self.slots.iter_mut().enumerate() {
                        let _ = v.g_sub_(&self.layout.view(&delta, i, &v.size()));
                    }
                }
            }
        });
    }

    /// TF RMSProp with its coupled weight decay in one fused pass over the
    /// flat CPU buffers ([`inception_torch_ext::fused`]); false, with nothing
    /// changed, where that does not apply (another rule, variables not in
    /// one buffer, another device or kind), and the caller runs the ops.
    fn fused_rmsprop(&mut self, lr: f64, gradients: &[Tensor]) -> bool {
        use inception_torch_ext::fused::{fusable, fused_rmsprop, RmsPropStep};
        let Rule::RmsProp { decay, momentum, epsilon } = self.rule else { return false };
        let Some(flat) = &mut self.flat else { return false };
        if !fusable(&[&flat.vars, &flat.decay_mask, &self.a_all, &self.b_all]) {
            return false;
        }
        // Read in place: each gradient as the layout places its variable.
        let in_place = gradients.len() == self.layout.lens.len()
            && gradients.iter().zip(&self.layout.lens).all(|(g, len)| fusable(&[g]) && g.numel() as i64 == *len);
        let gathered;
        let (grads, offsets): (&[Tensor], &[i64]) = if in_place {
            (gradients, &self.layout.offsets)
        } else {
            gathered = [self.layout.gather(gradients, &self.zeros)];
            (&gathered, &[0])
        };
        let (mut a, mut b) = (self.a_all.shallow_clone(), self.b_all.shallow_clone());
        let step = RmsPropStep { lr, decay, momentum, epsilon };
        match fused_rmsprop(&mut flat.vars, grads, offsets, &flat.decay_mask, &mut a, &mut b, step) {
            Ok(()) => true,
            Err(e) => {
                // Refused before touching anything: the ops do the update.
                tracing::warn!("{e}; updating with separate operations");
                false
            }
        }
    }

    /// The same update variable by variable, skipping those without a gradient.
    fn step_each(&mut self, lr: f64, gradients: &[Tensor]) {
        tch::no_grad(|| {
            let wd_factor = self.weight_decay_factor();
            let decoupled = self.rule.decoupled() && self.weight_decay != 0.0 && lr != 0.0;
            for (((_, v, a, b), decayed), g) in self.slots.iter().zip(&self.decayed).zip(gradients) {
                if !g.defined() {
                    continue;
                }
                let g = self.with_weight_decay(g, v, *decayed, &wd_factor);
                let (mut a, mut b, mut v) = (a.shallow_clone(), b.shallow_clone(), v.shallow_clone());
                if decoupled && *decayed {
                    let _ = v.g_mul_scalar_(1.0 - lr * self.weight_decay);
                }
                let delta = self.rule.update(&mut a, &mut b, &g, lr, self.updates);
                let _ = v.g_sub_(&delta);
            }
        });
    }

    /// AdamW's `w -= lr * wd * w` on the regularised variables.
    fn decay_decoupled(&mut self, lr: f64) {
        if !self.rule.decoupled() || self.weight_decay == 0.0 || lr == 0.0 {
            return;
        }
        match &mut self.flat {
            Some(flat) => {
                let shrink = &flat.vars * &flat.decay_mask * lr;
                let _ = flat.vars.g_sub_(&shrink);
            }
            None => {
                for ((_, v, _, _), decayed) in self.slots.iter_mut().zip(&self.decayed) {
                    if *decayed {
                        let _ = v.g_mul_scalar_(1.0 - lr * self.weight_decay);
                    }
                }
            }
        }
    }

    /// `weight_decay` as a 0-dim tensor on the slots' device, so that adding
    /// `wd * v` broadcasts without a temporary.
    fn weight_decay_factor(&self) -> Tensor {
        Tensor::from(self.weight_decay).to_kind(self.a_all.kind()).to_device(self.a_all.device())
    }

    /// `g + wd * v` for a regularised variable under a coupled rule, added
    /// in place (the gradients are this step's own); `g` itself otherwise.
    fn with_weight_decay(&self, g: &Tensor, v: &Tensor, decayed: bool, wd_factor: &Tensor) -> Tensor {
        let mut g = g.shallow_clone();
        if decayed && self.weight_decay != 0.0 && !self.rule.decoupled() {
            let _ = g.addcmul_(v, wd_factor);
        }
        g
    }

    /// The variables that get weight decay.
    pub fn regularized_variables(&self) -> Vec<Tensor> {
        self.slots.iter().zip(&self.decayed).filter(|(_, d)| **d).map(|((_, v, _, _), _)| v.shallow_clone()).collect()
    }

    /// The weight of the L2 term in the loss: `weight_decay` for the rules
    /// that add it to the gradient, 0 for AdamW (its decay is not a loss).
    pub fn l2_weight(&self) -> f64 {
        if self.rule.decoupled() {
            0.0
        } else {
            self.weight_decay
        }
    }

    /// Slot tensors for a checkpoint: `optimizer/<slot>/<name>` (RMSProp:
    /// `ms` and `mom`; SGD: `mom`; AdamW: `m` and `v`).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let names = self.rule.slot_names();
        self.slots
            .iter()
            .flat_map(|(n, _, a, b)| {
                names
                    .iter()
                    .zip([a, b])
                    .filter_map(move |(slot, t)| Some((format!("optimizer/{}/{n}", (*slot)?), t.shallow_clone())))
            })
            .collect()
    }

    /// Restores slots saved by [`Optimizer::state`]; returns how many
    /// variables had all their slots found.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>) -> usize {
        let names = self.rule.slot_names();
        let mut found = 0;
        tch::no_grad(|| {
            for (n, _, a, b) in &mut self.slots {
                // All of a variable's slots, or none of them.
                let saved: Vec<(&Tensor, &mut Tensor)> = names
                    .iter()
                    .zip([a, b])
                    .filter_map(|(slot, target)| {
                        slot.map(|slot| (tensors.get(&format!("optimizer/{slot}/{n}")), target))
                    })
                    .filter_map(|(saved, target)| saved.filter(|s| s.size() == target.size()).map(|s| (s, target)))
                    .collect();
                if saved.len() == names.iter().flatten().count() {
                    for (from, to) in saved {
                        to.copy_(from);
                    }
                    found += 1;
                }
            }
        });
        found
    }
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

    /// Runs `opt` for three steps on `loss = sum(w^2) / 2` (g = w) from
    /// w = [1, -2], beside `by_hand`, which updates (w, slot a, slot b) of
    /// one element for gradient g and update number t the same way.
    fn against_hand_computation(mut opt: Optimizer, by_hand: impl Fn(&mut [f64; 3], f64, u64), start: f64) {
        let w = opt.variables()[0].shallow_clone();
        let mut expected = [[1.0, start, 0.0], [-2.0, start, 0.0]];
        for t in 1..=3 {
            let loss = (&w * &w).sum(Kind::Float).multiply_scalar(0.5);
            let grads = Tensor::run_backward(&[&loss], &opt.variables(), false, false);
            opt.step(0.1, &grads);
            for e in &mut expected {
                let g = e[0];
                by_hand(e, g, t);
            }
        }
        let got: Vec<f64> = Vec::<f32>::try_from(&w).unwrap().into_iter().map(f64::from).collect();
        for (g, e) in got.iter().zip(&expected) {
            assert!((g - e[0]).abs() < 1e-5, "{got:?} vs {expected:?}");
        }
    }

    fn one_variable() -> Vec<(String, Tensor)> {
        vec![("w".into(), Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true))]
    }

    #[test]
    fn sgd_with_momentum_and_l2_matches_hand_computation() {
        let opt = Optimizer::with_rule(one_variable(), Rule::Sgd { momentum: 0.9, nesterov: false }, 0.01, |_| true);
        against_hand_computation(
            opt,
            |e, g, _| {
                let g = g + 0.01 * e[0];
                e[1] = 0.9 * e[1] + g;
                e[0] -= 0.1 * e[1];
            },
            0.0,
        );
    }

    #[test]
    fn nesterov_sgd_matches_hand_computation() {
        let opt = Optimizer::with_rule(one_variable(), Rule::Sgd { momentum: 0.9, nesterov: true }, 0.0, |_| true);
        against_hand_computation(
            opt,
            |e, g, _| {
                e[1] = 0.9 * e[1] + g;
                e[0] -= 0.1 * (g + 0.9 * e[1]);
            },
            0.0,
        );
    }

    #[test]
    fn adamw_matches_hand_computation() {
        let rule = Rule::AdamW { beta1: 0.9, beta2: 0.999, epsilon: 1e-8 };
        let opt = Optimizer::with_rule(one_variable(), rule, 0.05, |_| true);
        assert_eq!(opt.l2_weight(), 0.0, "decoupled decay is no loss term");
        against_hand_computation(
            opt,
            |e, g, t| {
                e[0] -= 0.1 * 0.05 * e[0];
                e[1] = 0.9 * e[1] + 0.1 * g;
                e[2] = 0.999 * e[2] + 0.001 * g * g;
                let (m, v) = (e[1] / (1.0 - 0.9f64.powi(t as i32)), e[2] / (1.0 - 0.999f64.powi(t as i32)));
                e[0] -= 0.1 * m / (v.sqrt() + 1e-8);
            },
            0.0,
        );
    }

    #[test]
    fn every_rule_updates_the_same_on_one_buffer_and_variable_by_variable() {
        let rules =
            [Rule::Sgd { momentum: 0.9, nesterov: true }, Rule::AdamW { beta1: 0.9, beta2: 0.999, epsilon: 1e-8 }];
        for rule in rules {
            let (mut flat, grads) = three_flat_with(5, rule);
            let (mut each, _) = three_with(5, rule);
            for lr in [0.1, 0.05] {
                flat.step(lr, &grads.iter().map(Tensor::copy).collect::<Vec<_>>());
                each.updates += 1;
                each.step_each(lr, &grads.iter().map(Tensor::copy).collect::<Vec<_>>());
                let (a, b) = (snapshot(&flat), snapshot(&each));
                for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
                    assert!((x - y).abs() < 1e-6, "{rule:?} at lr {lr}: {x} vs {y}");
                }
            }
            let names: Vec<String> = flat.state().into_iter().map(|(n, _)| n).collect();
            let slots_per_variable = names.len() / 3;
            assert_eq!(slots_per_variable, if matches!(rule, Rule::Sgd { .. }) { 1 } else { 2 }, "{names:?}");
        }
    }

    /// Three variables of different shapes, the first and last decayed.
    fn three(seed: i64) -> (RmsProp, Vec<Tensor>) {
        three_with(seed, Rule::RmsProp { decay: 0.9, momentum: 0.9, epsilon: 1.0 })
    }

    fn three_with(seed: i64, rule: Rule) -> (Optimizer, Vec<Tensor>) {
        tch::manual_seed(seed);
        let shapes: [&[i64]; 3] = [&[4, 3], &[5], &[2, 2, 2]];
        let vars: Vec<(String, Tensor)> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("v{i}"), Tensor::randn(*s, (Kind::Float, tch::Device::Cpu))))
            .collect();
        let grads = shapes.iter().map(|s| Tensor::randn(*s, (Kind::Float, tch::Device::Cpu))).collect();
        (Optimizer::with_rule(vars, rule, 0.04, |n| n != "v1"), grads)
    }

    /// [`three`] with the variables moved into one buffer, as
    /// [`crate::flat::FlatVariables`] lays them out.
    fn three_flat(seed: i64) -> (RmsProp, Vec<Tensor>) {
        three_flat_with(seed, Rule::RmsProp { decay: 0.9, momentum: 0.9, epsilon: 1.0 })
    }

    fn three_flat_with(seed: i64, rule: Rule) -> (Optimizer, Vec<Tensor>) {
        let (opt, grads) = three_with(seed, rule);
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

    fn snapshot(opt: &Optimizer) -> Vec<Vec<f32>> {
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
            each.updates += 1;
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
            // The flat CPU buffers take the fused pass, whose arithmetic is
            // the same up to float rounding (lr * g / d, not g / (d / lr)).
            for (f, e) in snapshot(&flat).iter().flatten().zip(snapshot(&each).iter().flatten()) {
                assert!((f - e).abs() <= 1e-6 * e.abs().max(1.0), "after a step at lr {lr}: {f} against {e}");
            }
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
}
