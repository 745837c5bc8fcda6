//! bf16 under autocast (issue 19): the network's outputs stay close to fp32,
//! the loss and its gradients come back in fp32 for the fp32 master weights,
//! and the layout stays channels_last.

use inception_model::inception::{images_to_input, InceptionV3, Mode};
use inception_model::precision::Precision;
use inception_model::ModelConfig;
use tch::{nn::VarStore, Device, Kind, Tensor};

/// Weight initialisation and the inputs draw from libtorch's global
/// generator: the tests must not draw concurrently, or their data differ.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn model() -> (VarStore, InceptionV3) {
    tch::manual_seed(0);
    let vs = VarStore::new(Device::Cpu);
    let model = InceptionV3::new(&vs.root(), &ModelConfig { image_size: 139, dropout: 0.0, ..ModelConfig::tiny(6) });
    (vs, model)
}

#[test]
fn bf16_logits_are_close_to_fp32_and_come_back_in_fp32() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (_vs, model) = model();
    let x = images_to_input(&Tensor::randint(256, [4, 139, 139, 3], (Kind::Uint8, Device::Cpu)));
    let (full, _) = tch::no_grad(|| model.forward_in(Precision::Fp32, &x, Mode::Eval));
    let (low, _) = tch::no_grad(|| model.forward_in(Precision::Bf16, &x, Mode::Eval));
    assert_eq!(low.kind(), Kind::Float, "logits are handed back in fp32");
    // bf16 keeps 8 bits of mantissa: ~0.4 % per operation, a few percent
    // over 90-odd layers of a random network.
    let scale = full.abs().max().double_value(&[]).max(1e-6);
    let difference = (&low - &full).abs().max().double_value(&[]);
    assert!(difference > 0.0, "bf16 was used: the logits differ from fp32's");
    assert!(difference / scale < 0.1, "bf16 logits differ from fp32 by {difference} (largest logit {scale})");
    // The top class agrees wherever fp32's lead over the runner-up exceeds
    // what bf16 may move two logits (a random network's logits are close).
    let (top2, _) = full.topk(2, 1, true, true);
    let mut compared = 0;
    for row in 0..full.size()[0] {
        let lead = top2.double_value(&[row, 0]) - top2.double_value(&[row, 1]);
        if lead > 2.0 * difference {
            assert_eq!(low.get(row).argmax(0, false), full.get(row).argmax(0, false), "row {row}: lead {lead}");
            compared += 1;
        }
    }
    assert!(compared > 0, "no row's lead exceeds bf16's rounding ({difference}): nothing compared");
    assert!(!inception_torch_ext::autocast_enabled(inception_torch_ext::AutocastDevice::Cpu), "left again");
}

#[test]
fn bf16_training_keeps_fp32_weights_and_gradients() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (vs, model) = model();
    let x = images_to_input(&Tensor::randint(256, [2, 139, 139, 3], (Kind::Uint8, Device::Cpu)));
    let (logits, aux) = model.forward_in(Precision::Bf16, &x, Mode::Train { bn_momentum: 0.1 });
    let labels = Tensor::from_slice(&[1i64, 3]);
    let loss = logits.cross_entropy_for_logits(&labels) + aux.expect("aux head").cross_entropy_for_logits(&labels);
    assert_eq!(loss.kind(), Kind::Float);
    let vars: Vec<Tensor> = vs.trainable_variables();
    let grads = Tensor::run_backward(&[&loss], &vars, false, false);
    for (v, g) in vars.iter().zip(&grads) {
        assert_eq!((v.kind(), g.kind()), (Kind::Float, Kind::Float), "fp32 master weights and gradients");
    }
    let total: f64 = grads.iter().map(|g| g.abs().sum(Kind::Double).double_value(&[])).sum();
    assert!(total.is_finite() && total > 0.0, "gradients flow: {total}");
}
