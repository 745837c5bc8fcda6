//! Moving averages of the weights, as `inception_train.py` keeps them:
//! `ExponentialMovingAverage(0.9999, num_updates=global_step)` over every
//! trainable variable and the batch-norm moving statistics (the original's
//! "double average"). The decay warms up as `min(0.9999, (1 + n) / (10 + n))`,
//! so early averages are not stuck near the initial weights. Evaluation and
//! `classify` use these averages.

use std::collections::HashMap;
use tch::Tensor;

use crate::flat::FlatVariables;

/// `MOVING_AVERAGE_DECAY` of the original.
pub const MOVING_AVERAGE_DECAY: f64 = 0.9999;

/// Prefix of the averages' names in a checkpoint.
pub const PREFIX: &str = "ema/";

pub struct MovingAverages {
    /// The decay once warmed up (`train.moving_average_decay`).
    max_decay: f64,
    /// (name, variable, shadow).
    shadows: Vec<(String, Tensor, Tensor)>,
    /// (shadows, variables) as whole buffers, when the variables lie in one
    /// ([`FlatVariables`]): the shadows are views of the first, laid out
    /// alike, and an update is one operation.
    flat: Option<(Tensor, Tensor)>,
}

/// The decay used at update `num_updates`.
pub fn decay(num_updates: u64) -> f64 {
    decay_up_to(MOVING_AVERAGE_DECAY, num_updates)
}

/// The decay used at update `num_updates` when it warms up to `max_decay`.
pub fn decay_up_to(max_decay: f64, num_updates: u64) -> f64 {
    max_decay.min((1.0 + num_updates as f64) / (10.0 + num_updates as f64))
}

impl MovingAverages {
    /// Shadows start as copies of the variables.
    pub fn new(mut vars: Vec<(String, Tensor)>) -> Self {
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let shadows = vars
            .into_iter()
            .map(|(n, v)| {
                let s = tch::no_grad(|| v.detach().copy());
                (n, v, s)
            })
            .collect();
        Self { max_decay: MOVING_AVERAGE_DECAY, shadows, flat: None }
    }

    /// Shadows of every variable of `flat`, themselves in one buffer.
    pub fn over_flat(flat: &FlatVariables) -> Self {
        let shadow_all = tch::no_grad(|| flat.all.detach().copy());
        let shadows = flat
            .vars
            .iter()
            .enumerate()
            .map(|(i, (n, v))| (n.clone(), v.shallow_clone(), flat.layout.view(&shadow_all, i, &v.size())))
            .collect();
        Self { max_decay: MOVING_AVERAGE_DECAY, shadows, flat: Some((shadow_all, flat.all.shallow_clone())) }
    }

    /// The decay once warmed up.
    pub fn max_decay(&self) -> f64 {
        self.max_decay
    }

    /// Warms up to `max_decay` instead of the original's 0.9999.
    pub fn with_max_decay(mut self, max_decay: f64) -> Self {
        self.max_decay = max_decay;
        self
    }

    /// `shadow = decay * shadow + (1 - decay) * variable` for every variable.
    pub fn update(&mut self, num_updates: u64) {
        let weight = 1.0 - decay_up_to(self.max_decay, num_updates);
        tch::no_grad(|| match &mut self.flat {
            Some((shadows, vars)) => {
                let _ = shadows.lerp_(vars, weight);
            }
            None => {
                for (_, v, s) in &mut self.shadows {
                    if s.is_floating_point() {
                        let _ = s.lerp_(v, weight);
                    }
                }
            }
        });
    }

    /// `ema/<name>` tensors for a checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.shadows.iter().map(|(n, _, s)| (format!("{PREFIX}{n}"), s.shallow_clone())).collect()
    }

    /// Restores shadows saved by [`MovingAverages::state`]; a shadow missing
    /// from the checkpoint restarts from its variable. Returns how many were found.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>) -> usize {
        let mut found = 0;
        tch::no_grad(|| {
            for (n, v, s) in &mut self.shadows {
                match tensors.get(&format!("{PREFIX}{n}")) {
                    Some(t) if t.size() == s.size() => {
                        s.copy_(t);
                        found += 1;
                    }
                    _ => s.copy_(v),
                }
            }
        });
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_up_then_fixed_decay() {
        assert!((decay(0) - 0.1).abs() < 1e-12);
        assert!((decay(90) - 0.91).abs() < 1e-12);
        assert_eq!(decay(10_000_000), MOVING_AVERAGE_DECAY);
        assert_eq!(decay_up_to(0.99, 10_000_000), 0.99);
        assert!((decay_up_to(0.99, 90) - 0.91).abs() < 1e-12, "the warm-up is the same");
    }

    #[test]
    fn shadows_follow_the_variables() {
        let v = Tensor::from_slice(&[0.0f32, 10.0]);
        let mut ema = MovingAverages::new(vec![("w".into(), v.shallow_clone())]);
        tch::no_grad(|| {
            let mut v2 = v.shallow_clone();
            v2.copy_(&Tensor::from_slice(&[1.0f32, 20.0]));
        });
        ema.update(0); // decay 0.1: shadow = 0.1 * old + 0.9 * new
        let s: Vec<f32> = Vec::try_from(&ema.state()[0].1).unwrap();
        assert!((s[0] - 0.9).abs() < 1e-6 && (s[1] - 19.0).abs() < 1e-5, "{s:?}");
        assert_eq!(ema.state()[0].0, "ema/w");
    }

    #[test]
    fn one_buffer_update_equals_the_per_variable_one() {
        tch::manual_seed(2);
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let _ = tch::nn::linear(vs.root() / "a", 70, 3, Default::default());
        let _ = vs.root().zeros_no_train("stat", &[5]);
        let trainable = vec!["a.bias".to_string(), "a.weight".to_string()];
        let flat = FlatVariables::new(&vs, &trainable).unwrap();
        let (mut whole, mut each) = (
            MovingAverages::over_flat(&flat),
            MovingAverages::new(flat.vars.iter().map(|(n, v)| (n.clone(), v.shallow_clone())).collect()),
        );
        assert!(whole.flat.is_some() && each.flat.is_none());
        for n in 0..3 {
            tch::no_grad(|| {
                let _ = flat.all.shallow_clone().g_add_(&flat.all.rand_like());
            });
            whole.update(n);
            each.update(n);
        }
        let sorted = |e: &MovingAverages| {
            let mut s: Vec<(String, Vec<f32>)> =
                e.state().into_iter().map(|(n, t)| (n, Vec::try_from(&t.reshape([-1])).unwrap())).collect();
            s.sort_by(|a, b| a.0.cmp(&b.0));
            s
        };
        assert_eq!(sorted(&whole), sorted(&each));
        assert_eq!(sorted(&whole).len(), 3);
    }
}
