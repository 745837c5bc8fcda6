//! Batch norm folded into the convolutions for inference: the logits equal
//! the unfolded eval-mode network's, in fp32 and in bf16, and training mode
//! ignores the folded copies.

use inception_model::inception::{images_to_input, InceptionV3, Mode};
use inception_model::precision::Precision;
use inception_model::ModelConfig;
use tch::{nn::VarStore, Device, Kind, Tensor};

/// Weight initialisation and the inputs draw from libtorch's global
/// generator: the tests must not draw concurrently, or their data differ.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A tiny network whose batch norms carry statistics and affine parameters
/// far from the identity (fresh ones would make folding trivial).
fn trained_looking_model() -> (VarStore, InceptionV3) {
    tch::manual_seed(0);
    let vs = VarStore::new(Device::Cpu);
    let model = InceptionV3::new(&vs.root(), &ModelConfig { image_size: 139, dropout: 0.0, ..ModelConfig::tiny(6) });
    tch::no_grad(|| {
        for (name, mut t) in vs.variables() {
            let fresh = if name.ends_with("running_mean") || name.ends_with("bn.bias") {
                t.randn_like() * 0.2
            } else if name.ends_with("running_var") {
                t.rand_like() + 0.5
            } else if name.ends_with("bn.weight") {
                t.randn_like() * 0.2 + 1.0
            } else {
                continue;
            };
            t.copy_(&fresh);
        }
    });
    (vs, model)
}

fn input() -> Tensor {
    images_to_input(&Tensor::randint(256, [3, 139, 139, 3], (Kind::Uint8, Device::Cpu)))
}

fn largest_difference(a: &Tensor, b: &Tensor) -> (f64, f64) {
    let scale = a.abs().max().double_value(&[]).max(1e-6);
    ((a - b).abs().max().double_value(&[]), scale)
}

#[test]
fn folded_logits_equal_the_unfolded_ones_in_fp32() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (_vs, mut model) = trained_looking_model();
    let x = input();
    let (unfolded, _) = tch::no_grad(|| model.forward(&x, Mode::Eval));
    model.fold_batch_norm();
    let (folded, _) = tch::no_grad(|| model.forward(&x, Mode::Eval));
    let (difference, scale) = largest_difference(&folded, &unfolded);
    // The same arithmetic reassociated: fp32 rounding over ~95 layers.
    assert!(difference / scale < 1e-4, "folded logits differ by {difference} (largest logit {scale})");
    assert!(scale > 1e-3, "the logits are not trivially zero");
}

#[test]
fn folded_bf16_logits_stay_within_bf16_rounding_of_fp32() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (_vs, mut model) = trained_looking_model();
    let x = input();
    let (reference, _) = tch::no_grad(|| model.forward_in(Precision::Fp32, &x, Mode::Eval));
    let (unfolded, _) = tch::no_grad(|| model.forward_in(Precision::Bf16, &x, Mode::Eval));
    model.fold_batch_norm();
    let (folded, _) = tch::no_grad(|| model.forward_in(Precision::Bf16, &x, Mode::Eval));
    assert_eq!(folded.kind(), Kind::Float);
    let (unfolded_error, scale) = largest_difference(&unfolded, &reference);
    let (folded_error, _) = largest_difference(&folded, &reference);
    // As precision.rs: a few percent of the largest logit in bf16; folding
    // must not add more than bf16 itself does.
    assert!(folded_error / scale < 0.1, "folded bf16 differs by {folded_error} (largest logit {scale})");
    assert!(folded_error < 2.0 * unfolded_error + 1e-3 * scale, "folded {folded_error}, unfolded {unfolded_error}");
}

#[test]
fn training_mode_ignores_the_folded_copies() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (_vs, mut model) = trained_looking_model();
    let x = input();
    let train = Mode::Train { bn_momentum: 0.0 };
    let (before, _) = tch::no_grad(|| model.forward(&x, train));
    model.fold_batch_norm();
    let (after, _) = tch::no_grad(|| model.forward(&x, train));
    let (difference, scale) = largest_difference(&after, &before);
    assert!(difference / scale < 1e-6, "training mode changed by folding: {difference}");
    // Batch statistics, not running ones: not what the folded eval gives.
    let (eval, _) = tch::no_grad(|| model.forward(&x, Mode::Eval));
    assert!(
        largest_difference(&eval, &after).0 / scale > 1e-3,
        "the two modes must differ for this test to mean anything"
    );
}
