//! `tf.nn.in_top_k`: the target is a hit when fewer than `k` classes score
//! strictly higher, so ties at the k-th place count as hits.

use tch::{Kind, Tensor};

/// `logits`: `[N, C]`; `labels`: `[N]` int64. Returns `[N]` booleans.
pub fn in_top_k(logits: &Tensor, labels: &Tensor, k: i64) -> Tensor {
    let target = logits.gather(1, &labels.unsqueeze(1), false);
    logits.gt_tensor(&target).sum_dim_intlist(1, false, Kind::Int64).lt(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_at_the_boundary_are_hits() {
        let logits = Tensor::from_slice(&[0.1f32, 0.5, 0.5, 0.2, 1.0, 0.0]).view([2, 3]);
        let labels = Tensor::from_slice(&[2i64, 2]);
        let hits: Vec<bool> = Vec::<bool>::try_from(&in_top_k(&logits, &labels, 1)).unwrap();
        // Row 0: class 2 ties with class 1 for first place -> hit. Row 1: class 2 is last.
        assert_eq!(hits, vec![true, false]);
        let hits: Vec<bool> = Vec::<bool>::try_from(&in_top_k(&logits, &labels, 2)).unwrap();
        assert_eq!(hits, vec![true, false]);
        let hits: Vec<bool> = Vec::<bool>::try_from(&in_top_k(&logits, &labels, 3)).unwrap();
        assert_eq!(hits, vec![true, true]);
    }
}
