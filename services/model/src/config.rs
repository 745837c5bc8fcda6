//! The shape of a model: everything needed to rebuild it from a checkpoint.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Outputs, including the background class 0: labels + 1.
    pub num_classes: i64,
    /// Square input side in pixels (at least [`MIN_IMAGE_SIZE`]).
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

    // `!(x > 0.0)` on purpose: unlike `x <= 0.0`, it also refuses NaN.
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    pub fn validate(&self) -> Result<(), String> {
        if self.image_size < MIN_IMAGE_SIZE {
            return Err(format!("image size {} is below the minimum of {MIN_IMAGE_SIZE}", self.image_size));
        }
        if self.num_classes < 2 {
            return Err(format!("num_classes = {} (labels + background) must be at least 2", self.num_classes));
        }
        if !(self.depth_multiplier > 0.0) || self.min_depth < 1 {
            return Err("depth_multiplier and min_depth must be positive".into());
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
}
