//! The torchvision export: a safetensors state dict with the names and
//! shapes `torchvision.models.inception_v3` expects. Our variables already
//! have torchvision's names (`Mixed_6b.branch7x7_2.conv.weight`, the
//! parity test in services/model/tests/torchvision_parity.rs checks the
//! arithmetic); torchvision's batch norms also keep `num_batches_tracked`,
//! added here. Only a model of torchvision's shape exports: every layer at
//! its Inception-v3 width and average pools that count the padding.

use super::{write_atomically, Loaded};
use inception_cli::UsageError;
use inception_model::ModelConfig;
use serde_json::{json, Value};
use std::path::Path;
use tch::Tensor;

/// The fewest channels any layer of Inception-v3 has (Conv2d_1a_3x3, Mixed_5b's pool branch).
const NARROWEST_LAYER: i64 = 32;

/// Kernel of torchvision's auxiliary head's pool and of its conv1.
const TORCHVISION_AUX_KERNEL: i64 = 5;

/// Why torchvision's `inception_v3` cannot hold this model; empty when it can.
pub(crate) fn incompatibilities(cfg: &ModelConfig) -> Vec<String> {
    let mut why = Vec::new();
    if cfg.depth_multiplier != 1.0 || cfg.min_depth > NARROWEST_LAYER {
        why.push(format!(
            "its layers are not Inception-v3's widths (model.depth_multiplier = {}, model.min_depth = {}; \
             torchvision's are fixed: depth multiplier 1, min depth at most {NARROWEST_LAYER})",
            cfg.depth_multiplier, cfg.min_depth
        ));
    }
    if !cfg.avg_pool_count_include_pad {
        why.push(
            "its average pools leave the padding out of the mean (model.avg_pool_count_include_pad = false, TF's \
             arithmetic); torchvision's count it, so the same weights would give other logits"
                .to_string(),
        );
    }
    why
}

/// Whether the auxiliary head has torchvision's shapes (its kernels shrink
/// below 299 px, as in TF-slim); it is left out otherwise (`aux_logits=False`).
pub(crate) fn keeps_aux(cfg: &ModelConfig) -> bool {
    cfg.aux_logits && cfg.aux_pool_kernel() == TORCHVISION_AUX_KERNEL && cfg.aux_conv_kernel() == TORCHVISION_AUX_KERNEL
}

/// The state dict: the loaded variables by name (without the auxiliary
/// head unless `aux`) and one `num_batches_tracked` per batch norm.
pub(crate) fn state_dict(variables: Vec<(String, Tensor)>, aux: bool, step: u64) -> Vec<(String, Tensor)> {
    let batches = i64::try_from(step).unwrap_or(i64::MAX);
    let mut named: Vec<(String, Tensor)> = Vec::new();
    for (name, tensor) in variables {
        if !aux && name.starts_with("AuxLogits.") {
            continue;
        }
        if let Some(bn) = name.strip_suffix(".running_mean") {
            named.push((format!("{bn}.num_batches_tracked"), Tensor::from(batches)));
        }
        named.push((name, tensor));
    }
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

/// `--format torchvision`: refused, naming why, for a model of another shape.
pub(super) fn export(loaded: &Loaded, output: &Path) -> anyhow::Result<Value> {
    let cfg = &loaded.meta.model;
    let why = incompatibilities(cfg);
    if !why.is_empty() {
        return Err(UsageError(format!(
            "{} cannot be a torchvision state dict: {}. Export it as --format torchscript or --format onnx, \
             which run any shape",
            loaded.key,
            why.join("; ")
        ))
        .into());
    }
    let aux = keeps_aux(cfg);
    let named = state_dict(loaded.vs.variables().into_iter().collect(), aux, loaded.meta.step);
    write_atomically(output, |tmp| Ok(Tensor::write_safetensors(&named, tmp)?))?;
    let constructor = json!({
        "weights": null,
        "aux_logits": aux,
        "transform_input": false,
        "init_weights": false,
        "num_classes": cfg.num_classes,
    });
    Ok(json!({
        "constructor": constructor,
        "load": format!(
            "model = torchvision.models.inception_v3(weights=None, aux_logits={}, transform_input=False, \
             init_weights=False, num_classes={}); model.load_state_dict(safetensors.torch.load_file(PATH)); \
             model.eval(); logits = model(x)",
            if aux { "True" } else { "False" },
            cfg.num_classes
        ),
        "aux_logits": if aux {
            "kept (torchvision's shapes)"
        } else if cfg.aux_logits {
            "left out: at this image size its kernels are smaller than torchvision's 5x5"
        } else {
            "the checkpoint has none"
        },
        "tensors": named.len(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(image_size: i64) -> ModelConfig {
        ModelConfig {
            image_size,
            depth_multiplier: 1.0,
            min_depth: 16,
            avg_pool_count_include_pad: true,
            ..ModelConfig::tiny(4)
        }
    }

    #[test]
    fn only_torchvision_shaped_models_export() {
        assert!(incompatibilities(&full(299)).is_empty());
        let tiny = incompatibilities(&ModelConfig::tiny(4));
        assert_eq!(tiny.len(), 2, "{tiny:?}");
        assert!(tiny[0].contains("depth_multiplier = 0.1") && tiny[1].contains("avg_pool_count_include_pad"));
        let tf_pools = ModelConfig { avg_pool_count_include_pad: false, ..full(299) };
        assert_eq!(incompatibilities(&tf_pools).len(), 1);
    }

    #[test]
    fn the_aux_head_is_kept_only_at_torchvision_shapes() {
        assert!(keeps_aux(&full(299)));
        assert!(!keeps_aux(&full(75)), "a 1x1 aux conv at 75 px");
        assert!(!keeps_aux(&ModelConfig { aux_logits: false, ..full(299) }));
    }

    #[test]
    fn batch_norms_get_num_batches_tracked_and_aux_can_be_left_out() {
        let t = || Tensor::zeros([1], (tch::Kind::Float, tch::Device::Cpu));
        let vars = vec![
            ("fc.bias".to_string(), t()),
            ("Conv2d_1a_3x3.bn.running_mean".to_string(), t()),
            ("AuxLogits.fc.bias".to_string(), t()),
        ];
        let named = state_dict(vars, false, 7);
        let names: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["Conv2d_1a_3x3.bn.num_batches_tracked", "Conv2d_1a_3x3.bn.running_mean", "fc.bias"]);
        assert_eq!(named[0].1.int64_value(&[]), 7);
    }
}
