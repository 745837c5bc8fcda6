//! The ONNX export: the traced TorchScript module converted by PyTorch in
//! Python (`onnx.py`, embedded in the binary). libtorch has no ONNX
//! exporter of its own; a Python without torch or onnx is named with what
//! it lacks and how to install it.

use super::{torchscript, write_atomically, Loaded};
use anyhow::Context;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// The converter, run with `python -c`.
const SCRIPT: &str = include_str!("onnx.py");

/// ONNX opset written: onnxruntime has run it since 1.12.
pub(crate) const OPSET: u32 = 17;

/// The `onnx` release the converter was tested with (scripts/setup.sh pins it).
const ONNX_PIN: &str = "onnx==1.23.2";

/// The PyTorch of the project (scripts/setup.sh; what tch links).
const TORCH_PIN: &str = "torch==2.13.0";

/// Exit status of the converter when a package is missing.
const MISSING: i32 = 3;

/// `--format onnx`: traces to a temporary TorchScript file and converts it with `python`.
pub(super) fn export(loaded: &Loaded, output: &Path, python: &Path) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir().context("cannot make a temporary folder for the traced module")?;
    let traced = dir.path().join("traced.pt");
    torchscript::save(loaded, &traced)?;
    let size = loaded.meta.model.image_size;
    let mut versions = Value::Null;
    write_atomically(output, |tmp| {
        versions = convert(python, &traced, tmp, size)?;
        Ok(())
    })?;
    Ok(json!({
        "load": "session = onnxruntime.InferenceSession(PATH); logits = session.run(['logits'], {'input': x})[0]",
        "opset": OPSET,
        "converted_by": versions,
    }))
}

/// Runs the converter; its JSON line (versions) on success.
fn convert(python: &Path, traced: &Path, out: &Path, size: i64) -> anyhow::Result<Value> {
    let output = Command::new(python)
        .arg("-c")
        .arg(SCRIPT)
        .arg(traced)
        .arg(out)
        .arg(size.to_string())
        .arg(OPSET.to_string())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            anyhow::anyhow!(
                "ONNX export is unavailable: cannot run {} ({e}). It runs PyTorch's exporter in Python: give \
                 --python (or INCEPTION_PYTHON) a Python with torch and onnx; scripts/setup.sh makes the project's \
                 .venv with both",
                python.display()
            )
        })?;
    if !output.status.success() {
        return Err(failure(python, &output));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    Ok(stdout.lines().rev().find_map(|l| serde_json::from_str(l).ok()).unwrap_or(Value::Null))
}

/// Why the converter failed, with what to install when a package is missing.
fn failure(python: &Path, output: &Output) -> anyhow::Error {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let python = python.display();
    match missing_package(&stderr) {
        Some(package) if output.status.code() == Some(MISSING) => {
            let pin = match package {
                "onnx" => ONNX_PIN,
                "torch" => TORCH_PIN,
                other => other,
            };
            anyhow::anyhow!(
                "ONNX export is unavailable: {python} has no `{package}` package (ONNX export runs PyTorch's \
                 exporter, which needs torch and onnx). Install it with `{python} -m pip install {pin}`, or run \
                 scripts/setup.sh, or give --python a Python that has it"
            )
        }
        _ => anyhow::anyhow!(
            "{python} failed converting to ONNX ({}): {}",
            output.status,
            stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no message")
        ),
    }
}

/// The package a "missing: <package> (...)" line names.
fn missing_package(stderr: &str) -> Option<&str> {
    stderr.lines().find_map(|l| l.strip_prefix("missing: ")).and_then(|rest| rest.split_whitespace().next())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_missing_package_is_read_from_the_converter() {
        assert_eq!(missing_package("missing: onnx (No module named 'onnx')\n"), Some("onnx"));
        assert_eq!(missing_package("Traceback...\n"), None);
    }
}
