//! The original's loss (`inception_model.loss` + slim's regularisers):
//! softmax cross-entropy with label smoothing 0.1 on the logits, the same
//! with weight 0.4 on the auxiliary logits, plus `4e-5 * sum(w^2) / 2` over
//! every conv and fully connected weight ([`LossWeights::default`]; each is a
//! setting). The trainer applies the L2 term's gradient (`4e-5 * w`) in the
//! optimizer instead of through autograd (the same update, fewer passes over
//! the weights) and reports [`l2_value`].

use tch::{Reduction, Tensor};

pub const LABEL_SMOOTHING: f64 = 0.1;
pub const AUX_LOSS_WEIGHT: f64 = 0.4;
pub const WEIGHT_DECAY: f64 = 0.00004;

/// The weights of the loss's terms (`train.label_smoothing`,
/// `train.aux_loss_weight`, `train.weight_decay`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossWeights {
    /// Label smoothing of both cross-entropies.
    pub label_smoothing: f64,
    /// Weight of the auxiliary head's cross-entropy.
    pub aux_weight: f64,
    /// Weight of the L2 term `sum(w^2) / 2`.
    pub weight_decay: f64,
}

impl Default for LossWeights {
    /// The original's: 0.1, 0.4 and 4e-5.
    fn default() -> Self {
        Self { label_smoothing: LABEL_SMOOTHING, aux_weight: AUX_LOSS_WEIGHT, weight_decay: WEIGHT_DECAY }
    }
}

/// `labels` are class indices (int64) with 0 the background class.
pub fn total_loss(
    weights: &LossWeights,
    logits: &Tensor,
    aux: Option<&Tensor>,
    labels: &Tensor,
    regularized: &[Tensor],
) -> Tensor {
    let smoothing = weights.label_smoothing;
    let ce = |l: &Tensor| l.cross_entropy_loss::<Tensor>(labels, None, Reduction::Mean, -100, smoothing);
    let mut loss = ce(logits);
    if let Some(a) = aux {
        loss += ce(a) * weights.aux_weight;
    }
    if !regularized.is_empty() && weights.weight_decay != 0.0 {
        let l2: Tensor = regularized.iter().map(|w| w.square().sum(tch::Kind::Float)).sum();
        loss += l2 * (weights.weight_decay / 2.0);
    }
    loss
}

/// The L2 term's value `weight_decay * sum(w^2) / 2`, without building a graph.
pub fn l2_value(regularized: &[Tensor], weight_decay: f64) -> f64 {
    if regularized.is_empty() || weight_decay == 0.0 {
        return 0.0;
    }
    // Norms reduce without a temporary copy; one device sync for all.
    let squares: Vec<Tensor> = tch::no_grad(|| regularized.iter().map(|w| w.norm().square()).collect());
    Tensor::stack(&squares, 0).sum(tch::Kind::Float).double_value(&[]) * weight_decay / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn smoothing_and_aux_weight_match_hand_computation() {
        let logits = Tensor::from_slice(&[2.0f32, 0.0, -1.0]).view([1, 3]);
        let labels = Tensor::from_slice(&[0i64]);
        // Smoothed target y = 0.9 * onehot + 0.1 / 3.
        let logp: Vec<f64> = {
            let z = [2.0f64, 0.0, -1.0];
            let lse = z.iter().map(|v| v.exp()).sum::<f64>().ln();
            z.iter().map(|v| v - lse).collect()
        };
        let target = [0.9 + 0.1 / 3.0, 0.1 / 3.0, 0.1 / 3.0];
        let ce: f64 = -target.iter().zip(&logp).map(|(t, l)| t * l).sum::<f64>();
        let original = LossWeights::default();
        let got = total_loss(&original, &logits, None, &labels, &[]).double_value(&[]);
        assert!((got - ce).abs() < 1e-5, "{got} vs {ce}");
        let with_aux = total_loss(&original, &logits, Some(&logits), &labels, &[]).double_value(&[]);
        assert!((with_aux - 1.4 * ce).abs() < 1e-5);
        let w = Tensor::from_slice(&[3.0f32, 4.0]).to_device(Device::Cpu).to_kind(Kind::Float);
        let with_l2 = total_loss(&original, &logits, None, &labels, &[w.shallow_clone()]).double_value(&[]);
        assert!((with_l2 - (ce + 0.00004 * 25.0 / 2.0)).abs() < 1e-6);
        assert!((l2_value(&[w.shallow_clone()], 0.00004) - 0.00004 * 25.0 / 2.0).abs() < 1e-9);
        // Other weights: no smoothing, aux weight 1, decay 0.01.
        let plain_ce = -logp[0];
        let other = LossWeights { label_smoothing: 0.0, aux_weight: 1.0, weight_decay: 0.01 };
        let got = total_loss(&other, &logits, Some(&logits), &labels, &[w]).double_value(&[]);
        assert!((got - (2.0 * plain_ce + 0.01 * 25.0 / 2.0)).abs() < 1e-5, "{got}");
    }
}
