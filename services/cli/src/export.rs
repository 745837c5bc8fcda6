//! `inception export CHECKPOINT --format torchscript|onnx|torchvision
//! --output PATH`: a checkpoint's inference network in a form other tools
//! load, with the weights the evaluator and `inception classify` use (the
//! moving averages where the checkpoint has them).
//!
//! * `torchscript`: the eval-mode forward (logits only, no auxiliary head)
//!   traced through libtorch; `torch.jit.load(PATH)` in Python, `CModule`
//!   in tch, `torch::jit::load` in C++.
//! * `onnx`: that traced module converted by the PyTorch of the project's
//!   virtualenv (`torch.onnx.export`, which needs the `onnx` package); a
//!   Python without it is named with what is missing.
//! * `torchvision`: a safetensors state dict with torchvision's names for
//!   `torchvision.models.inception_v3(weights=None, ...)`; only for a model
//!   of torchvision's shape (depth multiplier 1, padded average pools).
//!
//! Beside every export, `PATH.json` says what it takes and gives: the input
//! (layout, size, channel order, value scaling, preprocessing), the output
//! (logits, index 0 the background), the labels and how to load it.

mod onnx;
mod torchscript;
mod torchvision;

use anyhow::Context;
use inception_cli::UsageError;
use inception_core::cli::CommonArgs;
use inception_core::Settings;
use inception_model::checkpoint::{self, CheckpointMeta};
use inception_model::InceptionV3;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use tch::nn::VarStore;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// A TorchScript module traced through libtorch (`torch.jit.load`).
    Torchscript,
    /// ONNX, converted by the virtualenv's PyTorch (needs the `onnx` package).
    Onnx,
    /// A safetensors state dict for `torchvision.models.inception_v3`.
    Torchvision,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Torchscript => "torchscript",
            Format::Onnx => "onnx",
            Format::Torchvision => "torchvision",
        }
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct ExportArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// What `inception classify --checkpoint` takes: `latest`, `best`, the
    /// store key of a checkpoint's metadata, or a local copy of that file
    /// with its .safetensors beside it.
    #[arg(value_name = "CHECKPOINT")]
    checkpoint: String,
    /// What to write.
    #[arg(long, value_enum)]
    format: Format,
    /// The file to write (replaced if it exists); its description goes to PATH.json.
    #[arg(long, value_name = "PATH")]
    output: PathBuf,
    /// Training run whose `latest` or `best` checkpoint to use (pipeline.run).
    #[arg(long)]
    run: Option<String>,
    /// The Python whose PyTorch converts to ONNX; by default the project's
    /// .venv (found above the binary or the current folder), else python3.
    #[arg(long, env = "INCEPTION_PYTHON", value_name = "PYTHON")]
    python: Option<PathBuf>,
}

/// A checkpoint loaded for inference on the CPU: its weights frozen.
pub(crate) struct Loaded {
    pub(crate) meta: CheckpointMeta,
    /// The metadata's key in the store it was read from.
    pub(crate) key: String,
    pub(crate) vs: VarStore,
    pub(crate) model: InceptionV3,
    /// Whether the moving averages of the weights were used.
    pub(crate) averaged: bool,
}

/// `outer`: the `--config` and `--set` given before the subcommand.
pub(crate) fn run(outer: &CommonArgs, args: ExportArgs) -> anyhow::Result<bool> {
    let mut overrides = Vec::new();
    inception_core::cli::flag(&mut overrides, "pipeline.run", &args.run);
    let settings = inception_cli::merged_settings_flags(&[outer, &args.common]).settings(overrides)?;
    check_output(&args.output)?;
    let loaded = load(&settings, &args.checkpoint)?;
    refuse_overwriting(&args.checkpoint, &loaded.meta, &args.output)?;
    let extra = match args.format {
        Format::Torchscript => torchscript::export(&loaded, &args.output)?,
        Format::Torchvision => torchvision::export(&loaded, &args.output)?,
        Format::Onnx => onnx::export(&loaded, &args.output, &python(args.python.clone()))?,
    };
    let description = describe(&args, &settings, &loaded, extra);
    let sidecar = sidecar_path(&args.output);
    write_atomically(&sidecar, |tmp| Ok(std::fs::write(tmp, serde_json::to_vec_pretty(&description)?)?))?;
    println!(
        "wrote {} ({}, step {} of {}) and its description {}",
        args.output.display(),
        args.format.name(),
        loaded.meta.step,
        args.checkpoint,
        sidecar.display()
    );
    Ok(true)
}

/// Refuses an output that is a folder or whose folder does not exist,
/// before any checkpoint is read.
fn check_output(output: &Path) -> Result<(), UsageError> {
    if output.is_dir() {
        return Err(UsageError(format!("--output {} is a folder: give the file to write", output.display())));
    }
    let dir = parent(output);
    if !dir.is_dir() {
        return Err(UsageError(format!("--output {}: folder {} does not exist", output.display(), dir.display())));
    }
    Ok(())
}

/// Refuses an output (or its description) that is the local checkpoint's
/// metadata or weights file: the export would replace the checkpoint.
fn refuse_overwriting(checkpoint: &str, meta: &CheckpointMeta, output: &Path) -> Result<(), UsageError> {
    let source = Path::new(checkpoint);
    if matches!(checkpoint, "latest" | "best") || !source.is_file() {
        return Ok(());
    }
    let weights = Path::new(&meta.weights).file_name().map(|name| parent(source).join(name));
    let same = |a: &Path, b: &Path| matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b);
    for target in [output.to_path_buf(), sidecar_path(output)] {
        if same(&target, source) || weights.as_deref().is_some_and(|w| same(&target, w)) {
            return Err(UsageError(format!(
                "--output {} would replace the checkpoint's own file {}: write the export elsewhere",
                output.display(),
                target.display()
            )));
        }
    }
    Ok(())
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// `PATH.json`: the description of the export at `PATH`.
pub(crate) fn sidecar_path(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(".json");
    PathBuf::from(name)
}

/// The checkpoint `checkpoint` names, resolved as `inception classify`
/// resolves it, on the CPU with the weights the evaluator uses.
fn load(settings: &Settings, checkpoint: &str) -> anyhow::Result<Loaded> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let located = runtime.block_on(crate::classify::locate(settings, checkpoint))?;
    let (key, meta, tensors) = runtime
        .block_on(async {
            let key = inception_evaluator::classify::metadata_key(&located.store, &settings.pipeline.run, &located.key)
                .await
                .map_err(anyhow::Error::msg)?;
            let (meta, tensors) = checkpoint::read(&located.store, &key).await?;
            anyhow::Ok((key, meta, tensors))
        })
        .with_context(|| located.cannot_load(checkpoint))?;
    let mut vs = VarStore::new(tch::Device::Cpu);
    let model = InceptionV3::new(&vs.root(), &meta.model);
    let averaged = checkpoint::load_for_inference(&vs, &tensors).with_context(|| located.cannot_load(checkpoint))?;
    // Traced weights become constants of the graph, which must not require gradients.
    vs.freeze();
    tracing::debug!(key, averaged, "checkpoint loaded for export");
    Ok(Loaded { meta, key, vs, model, averaged })
}

/// The Python that converts to ONNX: `--python`, else the project's .venv
/// above the binary or the current folder, else `python3` on the PATH.
fn python(explicit: Option<PathBuf>) -> PathBuf {
    explicit.or_else(project_venv_python).unwrap_or_else(|| PathBuf::from("python3"))
}

fn project_venv_python() -> Option<PathBuf> {
    let starts = [std::env::current_exe().ok(), std::env::current_dir().ok()];
    starts.iter().flatten().flat_map(|p| p.ancestors()).map(|d| d.join(".venv/bin/python")).find(|p| p.is_file())
}

/// Writes `output` through `write` on a temporary file beside it, renamed
/// into place only when complete: a failed export leaves no half file.
pub(crate) fn write_atomically(output: &Path, write: impl FnOnce(&Path) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let suffix = output.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    let tmp = tempfile::Builder::new()
        .prefix(".inception-export-")
        .suffix(&suffix)
        .tempfile_in(parent(output))
        .with_context(|| format!("cannot write beside {}", output.display()))?;
    write(tmp.path()).with_context(|| format!("cannot write {}", output.display()))?;
    tmp.persist(output).with_context(|| format!("cannot write {}", output.display()))?;
    Ok(())
}

/// What the export takes and gives, for `PATH.json`; `extra` is the
/// format's own part (how to load it, converter versions).
fn describe(args: &ExportArgs, settings: &Settings, loaded: &Loaded, extra: Value) -> Value {
    let cfg = &loaded.meta.model;
    let labels: Vec<String> =
        (0..cfg.num_classes).map(|i| inception_evaluator::scores::label_name(&loaded.meta.labels, i)).collect();
    json!({
        "format": args.format.name(),
        "file": args.output.file_name().map(|n| n.to_string_lossy().into_owned()),
        "input": input_spec(cfg.image_size, settings.augment.eval_central_fraction),
        "output": {
            "name": "logits",
            "shape": ["batch", cfg.num_classes],
            "dtype": "float32",
            "meaning": "unnormalised scores (softmax gives probabilities); index 0 is the background class, \
                        index i >= 1 is labels[i]; no auxiliary logits",
        },
        "num_classes": cfg.num_classes,
        "labels": labels,
        "checkpoint": {
            "given": args.checkpoint,
            "metadata": loaded.key,
            "run": loaded.meta.run,
            "step": loaded.meta.step,
            "weights": if loaded.averaged { "moving averages (ema/…), as the evaluator uses" } else { "raw variables (the checkpoint has no moving averages)" },
        },
        "model": cfg,
        args.format.name(): extra,
    })
}

/// The input every format takes: what `inception classify` feeds the network.
fn input_spec(size: i64, central_fraction: f64) -> Value {
    json!({
        "name": "input",
        "layout": "NCHW",
        "shape": ["batch", 3, size, size],
        "dtype": "float32",
        "channels": "RGB",
        "range": [-1.0, 1.0],
        "scaling": "x = pixel / 255 * 2 - 1 for 8-bit pixels (torchvision's inception_v3 with transform_input=False; \
                    not ImageNet mean/std normalisation)",
        "preprocessing": format!(
            "decode to RGB; crop the central {central_fraction} of each side (TF1 integer offsets); resize to \
             {size}x{size} bilinearly with TF1's mapping src = dst * in / out (no half-pixel shift)"
        ),
        "central_fraction": central_fraction,
        "batch": "any size",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_description_sits_beside_the_export() {
        assert_eq!(sidecar_path(Path::new("out/model.pt")), PathBuf::from("out/model.pt.json"));
        assert_eq!(sidecar_path(Path::new("model")), PathBuf::from("model.json"));
        assert_eq!(parent(Path::new("model.onnx")), Path::new("."));
    }

    #[test]
    fn the_input_is_nchw_rgb_in_minus_one_to_one() {
        let spec = input_spec(75, 0.875);
        assert_eq!(spec["layout"], "NCHW");
        assert_eq!(spec["shape"], json!(["batch", 3, 75, 75]));
        assert_eq!(spec["range"], json!([-1.0, 1.0]));
        assert!(spec["preprocessing"].as_str().is_some_and(|p| p.contains("0.875")));
    }
}
