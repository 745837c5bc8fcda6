//! The TorchScript export: the eval-mode forward traced through libtorch.
//! The weights are constants of the traced graph (libtorch's tracer sees
//! them as tensors, not parameters): `torch.jit.load(PATH, map_location=…)`
//! puts them on another device, `module.to(…)` does not.

use super::{write_atomically, Loaded};
use anyhow::Context;
use inception_model::{InceptionV3, Mode};
use serde_json::{json, Value};
use std::path::Path;
use tch::{CModule, Device, Kind, Tensor};

/// Batch size of the traced example; any other batch size runs as well
/// (the check below uses another one).
const TRACED_BATCH: i64 = 2;

/// Most the reloaded module's logits may differ from the model's.
const TOLERANCE: f64 = 1e-4;

/// Traces `model`'s eval-mode logits for `[N, 3, size, size]` inputs.
pub(crate) fn trace(model: &InceptionV3, size: i64) -> anyhow::Result<CModule> {
    let example = Tensor::rand([TRACED_BATCH, 3, size, size], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let traced = inception_model::catch_torch(|| {
        CModule::create_by_tracing("InceptionV3", "forward", &[example], &mut |inputs| {
            vec![model.forward(&inputs[0], Mode::Eval).0]
        })
    })
    .map_err(|f| anyhow::anyhow!("libtorch failed tracing the model: {}", f.message))?;
    traced.context("libtorch failed tracing the model")
}

/// Traces the model into `path` (replaced whole or not at all).
pub(crate) fn save(loaded: &Loaded, path: &Path) -> anyhow::Result<()> {
    let module = trace(&loaded.model, loaded.meta.model.image_size)?;
    write_atomically(path, |tmp| Ok(module.save(tmp)?))
}

/// Largest |logit difference| between the module saved at `path` and the
/// model, on a batch of another size than the traced one.
pub(crate) fn check(loaded: &Loaded, path: &Path) -> anyhow::Result<f64> {
    let size = loaded.meta.model.image_size;
    let module = CModule::load(path).with_context(|| format!("cannot load back {}", path.display()))?;
    let x = Tensor::rand([TRACED_BATCH + 1, 3, size, size], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let diff = inception_model::catch_torch(|| {
        tch::no_grad(|| {
            let ours = loaded.model.forward(&x, Mode::Eval).0;
            module.forward_ts(&[&x]).map(|theirs| (theirs - ours).abs().max().double_value(&[]))
        })
    })
    .map_err(|f| anyhow::anyhow!("the traced module failed on a batch of {}: {}", TRACED_BATCH + 1, f.message))??;
    if diff.is_nan() || diff > TOLERANCE {
        anyhow::bail!("the traced module's logits differ from the checkpoint's by {diff} (more than {TOLERANCE})");
    }
    Ok(diff)
}

/// `--format torchscript`: the traced module, checked by loading it back.
pub(super) fn export(loaded: &Loaded, output: &Path) -> anyhow::Result<Value> {
    save(loaded, output)?;
    let diff = check(loaded, output)?;
    tracing::info!(max_abs_logit_difference = diff, "the exported module loads and gives the checkpoint's logits");
    Ok(json!({
        "load": "module = torch.jit.load(PATH, map_location='cpu'); logits = module(x)",
        "devices": "traced on the CPU; its weights are graph constants: give map_location='cuda' to torch.jit.load \
                    to run on a GPU (module.to() does not move them)",
        "checked_max_abs_logit_difference": diff,
    }))
}
