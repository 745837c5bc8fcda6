//! `inception export`, the real binary: each format is loaded in PyTorch
//! (tests/export_check.py, in the project's virtualenv) and its logits on a
//! fixed input are compared with our model's on the checkpoint's moving
//! averages, within 1e-4. Without torch in the virtualenv the tests say
//! they skipped.

mod support;

use inception_core::keys;
use inception_model::checkpoint::{self, CheckpointMeta};
use inception_model::{InceptionV3, Mode, ModelConfig};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use support::{inception, store_setting, write};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

const LABELS: [&str; 3] = ["daisy", "dandelion", "roses"];
const TOLERANCE: f64 = 1e-4;
/// Not the traced batch size (2): the exports take any batch.
const BATCH: i64 = 3;
/// libtorch's random generator is one for the process: tests that seed it
/// take turns, so each draws the same weights whatever runs beside it.
static SEEDED: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn python() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    if venv.is_file() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

fn python_has(module: &str) -> bool {
    Command::new(python()).args(["-c", &format!("import {module}")]).output().is_ok_and(|o| o.status.success())
}

/// False (after saying so) when the virtualenv has no PyTorch to load exports with.
fn torch_available(test: &str) -> bool {
    let ok = python_has("torch");
    if !ok {
        eprintln!("SKIPPED {test}: {} has no torch (scripts/setup.sh installs it)", python().display());
    }
    ok
}

/// Random weights whose logits depend on the input: batch-norm statistics
/// measured on a random batch (each layer's output normalised, as after
/// training), random affine batch-norm parameters, logits weights scaled to
/// give logits of about 1. With `averaged`, moving averages that differ
/// from the weights: only an export of the averages gives the evaluator's
/// logits.
fn weights(cfg: &ModelConfig, averaged: bool) -> Vec<(String, Tensor)> {
    let _seeded = SEEDED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    tch::manual_seed(7);
    let vs = VarStore::new(Device::Cpu);
    let model = InceptionV3::new(&vs.root(), cfg);
    // By name: the variables come in a hash map's order, which changes from run to run.
    let sorted = || {
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    };
    tch::no_grad(|| {
        for (name, var) in sorted() {
            let uniform = |lo: f64, hi: f64| var.rand_like() * (hi - lo) + lo;
            let value = match name.rsplit('.').next() {
                Some("weight") if name.contains(".bn.") => uniform(0.5, 1.5),
                Some("bias") if name.contains(".bn.") => uniform(-0.2, 0.2),
                Some("weight") if name.ends_with("fc.weight") => var.randn_like() * (3.0 / var.size()[1] as f64).sqrt(),
                Some("bias") if name.ends_with("fc.bias") => uniform(-0.1, 0.1),
                _ => continue,
            };
            var.shallow_clone().copy_(&value);
        }
        // Momentum 1: the running statistics become this batch's.
        let batch = Tensor::rand([8, 3, cfg.image_size, cfg.image_size], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let _ = model.forward(&batch, Mode::Train { bn_momentum: 1.0 });
    });
    let mut named: Vec<(String, Tensor)> = Vec::new();
    for (name, var) in sorted() {
        let raw = var.detach().copy();
        if averaged {
            let ema = if name.ends_with("running_var") { &raw * 1.2 } else { &raw * (raw.randn_like() * 0.05 + 1.0) };
            named.push((format!("ema/{name}"), ema));
        }
        named.push((name, raw));
    }
    named
}

/// Writes checkpoint step 10 of run `default` into the file store at
/// `store` (weights, metadata as JSON, `checkpoint` pointer); returns the
/// metadata's path.
fn checkpoint_in(store: &Path, cfg: &ModelConfig, averaged: bool) -> PathBuf {
    let step = 10;
    let bytes = checkpoint::tensors_to_bytes(&weights(cfg, averaged)).unwrap();
    let weights_key = keys::checkpoint_weights("default", step);
    write(&store.join(&weights_key), &bytes);
    let meta = json!({
        "format_version": checkpoint::FORMAT_VERSION,
        "run": "default",
        "step": step,
        "labels": LABELS,
        "model": cfg,
        "bn_updates": 0,
        "examples_seen": 0,
        "weights": weights_key,
        "created_unix": 0,
    });
    let key = keys::checkpoint_metadata("default", step);
    let metadata = write(&store.join(&key), &serde_json::to_vec(&meta).unwrap());
    let pointer = json!({ "step": step, "metadata": key, "all": [key] });
    write(&store.join(keys::checkpoint_pointer("default")), &serde_json::to_vec(&pointer).unwrap());
    metadata
}

/// Our logits for `input` from the checkpoint whose metadata is `metadata`,
/// as the evaluator computes them (moving averages where there are some),
/// and those of its raw weights.
fn our_logits(metadata: &Path, input: &Tensor) -> (Tensor, Tensor) {
    let meta: CheckpointMeta = serde_json::from_slice(&std::fs::read(metadata).unwrap()).unwrap();
    let tensors = checkpoint::read_weights_file(&metadata.with_extension("safetensors")).unwrap();
    let vs = VarStore::new(Device::Cpu);
    let model = {
        let _seeded = SEEDED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        InceptionV3::new(&vs.root(), &meta.model)
    };
    let forward = || tch::no_grad(|| model.forward(input, Mode::Eval).0);
    checkpoint::load_into(&vs, &tensors).unwrap();
    let raw = forward();
    checkpoint::load_for_inference(&vs, &tensors).unwrap();
    (forward(), raw)
}

/// A fixed input batch in [-1, 1], NCHW.
fn input(size: i64) -> Tensor {
    let _seeded = SEEDED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    tch::manual_seed(11);
    Tensor::rand([BATCH, 3, size, size], (Kind::Float, Device::Cpu)) * 2.0 - 1.0
}

fn write_f32(path: &Path, t: &Tensor) {
    let values = Vec::<f32>::try_from(&t.flatten(0, -1)).unwrap();
    std::fs::write(path, values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
}

fn read_f32(path: &Path, rows: i64) -> Tensor {
    let bytes = std::fs::read(path).unwrap();
    let values: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    Tensor::from_slice(&values).view([rows, -1])
}

/// The logits PyTorch (or onnxruntime) computes with the export at `path`;
/// `None` (after saying so) when a package to load it with is missing.
fn their_logits(format: &str, path: &Path, input: &Tensor) -> Option<Tensor> {
    let dir = tempfile::tempdir().unwrap();
    let (x, out) = (dir.path().join("input.f32"), dir.path().join("logits.f32"));
    write_f32(&x, input);
    let size = input.size()[3].to_string();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/export_check.py");
    let o = Command::new(python())
        .arg(script)
        .args([format.as_ref(), path.as_os_str(), x.as_os_str(), BATCH.to_string().as_ref(), size.as_ref()])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    if o.status.code() == Some(3) {
        eprintln!("SKIPPED comparing {format} logits: {}", stderr.trim());
        return None;
    }
    assert!(o.status.success(), "export_check.py {format}: {stderr}");
    Some(read_f32(&out, BATCH))
}

/// `inception export ARGS… --python <venv>`; its stdin is closed.
fn export(args: &[&std::ffi::OsStr]) -> Output {
    let mut c = inception(args);
    c.arg("--python").arg(python()).stdin(Stdio::null());
    c.output().unwrap()
}

fn os<S: AsRef<std::ffi::OsStr> + ?Sized>(s: &S) -> &std::ffi::OsStr {
    s.as_ref()
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn description(output: &Path) -> Value {
    let mut sidecar = output.as_os_str().to_owned();
    sidecar.push(".json");
    serde_json::from_slice(&std::fs::read(PathBuf::from(sidecar)).unwrap()).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

/// Exports `metadata` as `format` to `output`, checks the description and
/// compares PyTorch's logits with ours; returns the largest difference
/// (`None`: a package to load it with is missing).
fn export_and_compare(format: &str, checkpoint: &[&std::ffi::OsStr], metadata: &Path, output: &Path) -> Option<f64> {
    let mut args = vec![os("export")];
    args.extend_from_slice(checkpoint);
    args.extend([os("--format"), os(format), os("--output"), output.as_os_str()]);
    let o = export(&args);
    assert!(o.status.success(), "{}", text(&o));
    let doc = description(output);
    let size = doc["model"]["image_size"].as_i64().unwrap();
    assert_eq!(doc["format"], format);
    assert_eq!(doc["input"]["layout"], "NCHW");
    assert_eq!(doc["input"]["shape"], json!(["batch", 3, size, size]));
    assert_eq!(doc["input"]["range"], json!([-1.0, 1.0]));
    assert_eq!(doc["labels"], json!(["background", "daisy", "dandelion", "roses"]));
    assert_eq!(doc["num_classes"], 4);
    let x = input(size);
    let (ours, raw) = our_logits(metadata, &x);
    let theirs = their_logits(format, output, &x)?;
    // What varies over the batch comes from the network, not the biases.
    let spread = max_diff(&ours, &ours.mean_dim(0, true, Kind::Float).expand_as(&ours));
    assert!(spread > 1e-2, "{format}: logits barely depend on the input ({spread}): a weak comparison");
    let diff = max_diff(&ours, &theirs);
    eprintln!("{format}: max |ours - exported| = {diff:e} (logits vary by {spread:.3} over the batch)");
    assert!(diff < TOLERANCE, "{format}: max |ours - exported| = {diff}");
    if doc["checkpoint"]["weights"].as_str().unwrap().starts_with("moving averages") {
        assert!(max_diff(&raw, &theirs) > 1e-3, "{format}: the raw weights were exported, not the averages");
    }
    Some(diff)
}

#[test]
fn torchscript_gives_our_logits_from_a_local_file_and_from_latest() {
    if !torch_available("torchscript_gives_our_logits_from_a_local_file_and_from_latest") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let metadata = checkpoint_in(&store, &ModelConfig::tiny(4), true);
    let output = dir.path().join("tiny.pt");
    export_and_compare("torchscript", &[metadata.as_os_str()], &metadata, &output).unwrap();
    let doc = description(&output);
    assert_eq!(doc["checkpoint"]["step"], 10);
    assert!(doc["checkpoint"]["weights"].as_str().unwrap().starts_with("moving averages"), "{doc}");

    // `latest` of the run in a store, as `inception classify --checkpoint latest`.
    let set = store_setting(&store);
    let latest = dir.path().join("latest.pt");
    export_and_compare("torchscript", &[os("latest"), os("--set"), os(&set)], &metadata, &latest).unwrap();
    assert_eq!(description(&latest)["checkpoint"]["metadata"], keys::checkpoint_metadata("default", 10));
}

#[test]
fn onnx_gives_our_logits() {
    if !torch_available("onnx_gives_our_logits") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let metadata = checkpoint_in(&dir.path().join("store"), &ModelConfig::tiny(4), true);
    let output = dir.path().join("tiny.onnx");
    if !python_has("onnx") {
        let o = export(&[os("export"), metadata.as_os_str(), os("--format=onnx"), os("--output"), output.as_os_str()]);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(text(&o).contains("no `onnx` package"), "{}", text(&o));
        eprintln!("SKIPPED onnx_gives_our_logits: {} has no onnx; checked that the export says so", python().display());
        return;
    }
    export_and_compare("onnx", &[metadata.as_os_str()], &metadata, &output);
    let doc = description(&output);
    assert_eq!(doc["onnx"]["opset"], 17);
    if python_has("onnxruntime") {
        let checked = doc["onnx"]["converted_by"]["checked_max_abs_logit_difference"].as_f64();
        assert!(checked.is_some_and(|d| d < TOLERANCE), "the converter's own check: {doc}");
    }
}

#[test]
fn onnx_names_what_is_missing() {
    if !torch_available("onnx_names_what_is_missing") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let metadata = checkpoint_in(&dir.path().join("store"), &ModelConfig::tiny(4), true);
    let output = dir.path().join("tiny.onnx");
    // An `onnx` that cannot be imported, ahead of any installed one.
    let shadow = dir.path().join("shadow");
    write(&shadow.join("onnx/__init__.py"), b"raise ImportError(\"No module named 'onnx'\")\n");
    let args = [os("export"), metadata.as_os_str(), os("--format"), os("onnx"), os("--output"), output.as_os_str()];
    let mut c = inception(args);
    c.arg("--python").arg(python()).env("PYTHONPATH", &shadow).stdin(Stdio::null());
    let o = c.output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("ONNX export is unavailable") && text(&o).contains("pip install onnx=="), "{}", text(&o));
    assert!(!output.exists(), "no half export left");

    let mut c = inception(args);
    c.args(["--python", "/nonexistent/python"]).stdin(Stdio::null());
    let o = c.output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("cannot run /nonexistent/python"), "{}", text(&o));
}

#[test]
fn torchvision_loads_the_state_dict_and_gives_our_logits() {
    if !torch_available("torchvision_loads_the_state_dict_and_gives_our_logits") {
        return;
    }
    // torchvision's shape: full width, padded average pools; at 75 px the
    // auxiliary head is smaller than torchvision's, so it is left out.
    let cfg =
        ModelConfig { depth_multiplier: 1.0, min_depth: 16, avg_pool_count_include_pad: true, ..ModelConfig::tiny(4) };
    let dir = tempfile::tempdir().unwrap();
    let metadata = checkpoint_in(&dir.path().join("store"), &cfg, false);
    let output = dir.path().join("torchvision.safetensors");
    export_and_compare("torchvision", &[metadata.as_os_str()], &metadata, &output);
    let doc = description(&output);
    assert_eq!(doc["torchvision"]["constructor"]["aux_logits"], false, "{doc}");
    assert_eq!(doc["torchvision"]["constructor"]["num_classes"], 4);
    let names: HashMap<String, Tensor> = Tensor::read_safetensors(&output).unwrap().into_iter().collect();
    assert!(names.contains_key("Mixed_7c.branch3x3dbl_3b.bn.num_batches_tracked"));
    assert!(!names.keys().any(|n| n.starts_with("AuxLogits.") || n.starts_with("ema/")));
}

#[test]
fn torchvision_refuses_another_shape_naming_why() {
    let dir = tempfile::tempdir().unwrap();
    let metadata = checkpoint_in(&dir.path().join("store"), &ModelConfig::tiny(4), true);
    let output = dir.path().join("tiny.safetensors");
    let o = export(&[
        os("export"),
        metadata.as_os_str(),
        os("--format"),
        os("torchvision"),
        os("--output"),
        output.as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    for part in ["depth_multiplier = 0.1", "avg_pool_count_include_pad = false", "--format torchscript"] {
        assert!(stderr.contains(part), "{part}: {stderr}");
    }
    assert!(!output.exists() && !dir.path().join("tiny.safetensors.json").exists());
}

#[test]
fn a_weights_file_a_missing_folder_or_the_checkpoint_itself_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let metadata = checkpoint_in(&dir.path().join("store"), &ModelConfig::tiny(4), true);
    let weights = metadata.with_extension("safetensors");
    let output = dir.path().join("m.pt");
    let o = export(&[
        os("export"),
        weights.as_os_str(),
        os("--format"),
        os("torchscript"),
        os("--output"),
        output.as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("give its metadata file"), "{}", text(&o));
    // The checkpoint's own weights are not replaced by an export.
    let before = std::fs::read(&weights).unwrap();
    let o = export(&[
        os("export"),
        metadata.as_os_str(),
        os("--format"),
        os("torchscript"),
        os("--output"),
        weights.as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("would replace the checkpoint's own file"), "{}", text(&o));
    assert_eq!(std::fs::read(&weights).unwrap(), before);
    let nowhere = dir.path().join("no/such/folder/m.pt");
    let o = export(&[
        os("export"),
        metadata.as_os_str(),
        os("--format"),
        os("torchscript"),
        os("--output"),
        nowhere.as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("does not exist"), "{}", text(&o));
}
