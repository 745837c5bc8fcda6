//! The recipe `inception train DIR` trains a user's photos with:
//! settings that learn well from scratch on a small dataset in a short CPU
//! budget, measured on the learning benchmark (docs/benchmarks.md,
//! `scripts/bench-learn.sh`). The services' own defaults stay the original's,
//! for fidelity; `inception train` only sets what the user has not set
//! (with `--set` or an `INCEPTION__SECTION__KEY` variable).

/// One setting of the recipe: its `SECTION__KEY`, value and reason.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Choice {
    pub(crate) key: &'static str,
    pub(crate) value: String,
    pub(crate) why: &'static str,
}

impl Choice {
    /// The setting as written in a file or with `--set`: `train.optimizer`.
    pub(crate) fn setting(&self) -> String {
        self.key.to_lowercase().replacen("__", ".", 1)
    }
}

/// The recipe for `steps` training steps: AdamW with a short warm-up and a
/// cosine decay that ends at the last step, crops that keep most of the
/// object, and milder colour distortion.
pub(crate) fn for_photos(steps: u64) -> Vec<Choice> {
    let choice = |key, value: String, why| Choice { key, value, why };
    let warmup = (steps / 20).clamp(1, 500);
    vec![
        choice("TRAIN__OPTIMIZER", "adamw".into(), "adapts per weight: forgiving of the learning rate on new data"),
        choice("TRAIN__INITIAL_LEARNING_RATE", "0.002".into(), "AdamW's rate for training from scratch"),
        choice("TRAIN__WEIGHT_DECAY", "0.05".into(), "decoupled weight decay, AdamW's usual strength"),
        choice("TRAIN__LR_SCHEDULE", "cosine".into(), "decays to zero exactly at the last step"),
        choice("TRAIN__WARMUP_STEPS", warmup.to_string(), "5 % of the steps: no early blow-up with fresh weights"),
        choice("TRAIN__WARMUP_START_FRACTION", "0.1".into(), "the warm-up starts at a tenth of the rate"),
        choice(
            "AUGMENT__CROP_AREA_MIN",
            "0.35".into(),
            "crops keep most of the object (the original's 5 % is for ImageNet)",
        ),
        choice(
            "AUGMENT__COLOR_STRENGTH",
            "0.5".into(),
            "half the original's colour jitter: colour often tells classes apart",
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recipe_is_valid_settings_and_its_warm_up_follows_the_steps() {
        let choices = for_photos(2000);
        assert_eq!(choices.iter().find(|c| c.key == "TRAIN__WARMUP_STEPS").map(|c| c.value.as_str()), Some("100"));
        // Every choice is a real setting with an acceptable value.
        let overrides: Vec<(String, String)> = choices.iter().map(|c| (c.setting(), c.value.clone())).collect();
        let settings = inception_core::Settings::load(None, &overrides).unwrap();
        assert_eq!(settings.train.optimizer, inception_core::settings::OptimizerSetting::AdamW);
        assert_eq!(settings.augment.crop_area_min, 0.35);
    }
}
