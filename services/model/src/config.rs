//! The shape of a model: everything needed to rebuild it from a checkpoint.

use inception_core::limits::{MAX_DEPTH_MULTIPLIER, MAX_IMAGE_SIZE, MAX_MIN_DEPTH, MAX_NUM_CLASSES};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Outputs, including the background class 0: labels + 1.
    pub num_classes: i64,
    /// Square input side in pixels (at least [`MIN_IMAGE_SIZE`], at most
    /// [`MAX_IMAGE_SIZE`]).
    pub image_size: i64,
    /// Channel multiplier (TF-slim `depth_multiplier`); 1.0 is Inception-v3.
    pub depth_multiplier: f64,
    /// Smallest channel count of any layer (TF-slim `min_depth`).
    pub min_depth: i64,
    /// Dropout probability before the logits (the original keeps 0.8: 0.2).
    pub dropout: f64,
    /// Build the auxiliary classifier on Mixed_6e.
    pub aux_logits: bool,
    /// Average pools count padded pixels, as torchvision does; TF (and the
    /// default here) averages over real pixels only. Set it to fine-tune
    /// torchvision/timm weights under the arithmetic they were trained with.
    #[serde(default)]
    pub avg_pool_count_include_pad: bool,
}

/// Below this the stride-2 stages leave no pixels for Mixed_7a.
pub const MIN_IMAGE_SIZE: i64 = 75;

impl ModelConfig {
    /// The smallest model the tests train: 75 px, depth multiplier 0.1,
    /// at least 8 channels per layer, dropout 0.2, with the auxiliary head.
    pub fn tiny(num_classes: i64) -> Self {
        Self {
            num_classes,
            image_size: 75,
            depth_multiplier: 0.1,
            min_depth: 8,
            dropout: 0.2,
            aux_logits: true,
            avg_pool_count_include_pad: false,
        }
    }

    /// Channels of a layer that has `n` in Inception-v3.
    pub fn depth(&self, n: i64) -> i64 {
        ((n as f64 * self.depth_multiplier) as i64).max(self.min_depth)
    }

    /// Spatial side of Mixed_6e's output (17 at 299).
    pub fn mixed_6e_size(&self) -> i64 {
        let pool = |s: i64| (s - 3) / 2 + 1;
        let s = pool(self.image_size); // Conv2d_1a 3x3/2
        let s = s - 2; // Conv2d_2a 3x3
        let s = pool(s); // maxpool1
        let s = s - 2; // Conv2d_4a 3x3
        let s = pool(s); // maxpool2 -> Mixed_5x
        pool(s) // Mixed_6a
    }

    /// Kernel of the auxiliary head's average pool: 5, or smaller for small
    /// inputs (TF-slim's `_reduced_kernel_size_for_small_input`).
    pub fn aux_pool_kernel(&self) -> i64 {
        self.mixed_6e_size().min(5)
    }

    /// Kernel of the auxiliary head's 768-channel conv: 5x5 at 299.
    pub fn aux_conv_kernel(&self) -> i64 {
        let pooled = (self.mixed_6e_size() - self.aux_pool_kernel()) / 3 + 1;
        pooled.min(5)
    }

    /// Checks every field against its bounds ([`inception_core::limits`]),
    /// so that no configuration, whether from settings or a checkpoint's
    /// metadata, builds a model that cannot work or cannot fit in memory.
    /// Called before any model is built.
    pub fn validate(&self) -> Result<(), String> {
        let (classes, side) = (i64::from(MAX_NUM_CLASSES), i64::from(MAX_IMAGE_SIZE));
        if !(MIN_IMAGE_SIZE..=side).contains(&self.image_size) {
            return Err(format!("image_size = {} must be in [{MIN_IMAGE_SIZE}, {side}] pixels", self.image_size));
        }
        if !(2..=classes).contains(&self.num_classes) {
            return Err(format!("num_classes = {} (labels + background) must be in [2, {classes}]", self.num_classes));
        }
        if !(self.depth_multiplier > 0.0 && self.depth_multiplier <= MAX_DEPTH_MULTIPLIER) {
            return Err(format!("depth_multiplier = {} must be in (0, {MAX_DEPTH_MULTIPLIER}]", self.depth_multiplier));
        }
        if !(1..=i64::from(MAX_MIN_DEPTH)).contains(&self.min_depth) {
            return Err(format!("min_depth = {} must be in [1, {MAX_MIN_DEPTH}]", self.min_depth));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("dropout = {} must be in [0, 1)", self.dropout));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(size: i64) -> ModelConfig {
        ModelConfig {
            num_classes: 6,
            image_size: size,
            depth_multiplier: 1.0,
            min_depth: 16,
            dropout: 0.2,
            aux_logits: true,
            avg_pool_count_include_pad: false,
        }
    }

    #[test]
    fn sizes_match_the_published_network() {
        assert_eq!(at(299).mixed_6e_size(), 17);
        assert_eq!(at(299).aux_pool_kernel(), 5);
        assert_eq!(at(299).aux_conv_kernel(), 5);
        assert_eq!(at(75).mixed_6e_size(), 3);
        assert_eq!(at(75).aux_conv_kernel(), 1);
        let narrow = ModelConfig { depth_multiplier: 0.1, ..at(299) };
        assert_eq!(narrow.depth(64), 16);
        assert_eq!(narrow.depth(384), 38);
        assert!(at(74).validate().is_err());
    }

    #[test]
    fn every_field_is_bounded() {
        assert!(at(299).validate().is_ok());
        let refused = [
            ModelConfig { num_classes: 1_000_000_000, ..at(299) },
            ModelConfig { num_classes: 1, ..at(299) },
            ModelConfig { image_size: 100_000, ..at(299) },
            ModelConfig { depth_multiplier: 1e6, ..at(299) },
            ModelConfig { depth_multiplier: f64::INFINITY, ..at(299) },
            ModelConfig { depth_multiplier: f64::NAN, ..at(299) },
            ModelConfig { min_depth: 1_000_000, ..at(299) },
            ModelConfig { dropout: f64::NAN, ..at(299) },
            ModelConfig { dropout: 1.0, ..at(299) },
        ];
        for cfg in refused {
            assert!(cfg.validate().is_err(), "{cfg:?} accepted");
        }
        let err = ModelConfig { num_classes: 1_000_000_000, ..at(299) }.validate().unwrap_err();
        assert!(err.contains("num_classes = 1000000000") && err.contains("100000"), "{err}");
    }
}
