//! With the same weights, our Inception-v3 in eval mode gives torchvision's
//! `inception_v3(transform_input=False)` logits. The reference is made by
//! torchvision in the project's virtualenv; without torchvision the test
//! says it skipped.

use inception_model::checkpoint::load_pretrained;
use inception_model::{InceptionV3, Mode, ModelConfig};
use std::path::PathBuf;
use std::process::Command;
use tch::{nn::VarStore, Device, Tensor};

fn python() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    if venv.is_file() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

#[test]
fn eval_logits_match_torchvision() {
    let py = python();
    let has_torchvision =
        Command::new(&py).args(["-c", "import torchvision"]).output().is_ok_and(|o| o.status.success());
    if !has_torchvision {
        eprintln!("SKIPPED eval_logits_match_torchvision: torchvision is not installed (scripts/setup.sh installs it)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("reference.safetensors");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/torchvision_reference.py");
    let out = Command::new(&py).arg(script).arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let mut tensors: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(&file).unwrap().into_iter().collect();
    let input = tensors.remove("test.input").unwrap();
    let expected = tensors.remove("test.logits").unwrap();
    let cfg = ModelConfig {
        num_classes: 7,
        image_size: 299,
        depth_multiplier: 1.0,
        min_depth: 16,
        dropout: 0.2,
        aux_logits: true,
        avg_pool_count_include_pad: true,
    };
    let vs = VarStore::new(Device::Cpu);
    let model = InceptionV3::new(&vs.root(), &cfg);
    let report = load_pretrained(&vs, &tensors, false).unwrap();
    assert!(report.reinitialised.is_empty(), "{report:?}");
    assert!(report.unexpected.iter().all(|k| k.ends_with("num_batches_tracked")), "{:?}", report.unexpected);
    let (logits, _) = tch::no_grad(|| model.forward(&input, Mode::Eval));
    let diff = (&logits - &expected).abs().max().double_value(&[]);
    assert!(diff < 1e-4, "max |ours - torchvision| = {diff}");

    // TF's pooling arithmetic (our default) gives other logits: the option matters.
    let tf_cfg = ModelConfig { avg_pool_count_include_pad: false, ..cfg };
    let vs2 = VarStore::new(Device::Cpu);
    let tf_model = InceptionV3::new(&vs2.root(), &tf_cfg);
    load_pretrained(&vs2, &tensors, false).unwrap();
    let (tf_logits, _) = tch::no_grad(|| tf_model.forward(&input, Mode::Eval));
    assert!((&tf_logits - &expected).abs().max().double_value(&[]) > 1e-3);
}
