//! bf16 under autocast (issue 19): the network's outputs stay close to fp32,
//! the loss and its gradients come back in fp32 for the fp32 master weights,
//! and the layout stays channels_last.

use inception_model::inception::{images_to_input, InceptionV3, Mode};
use inception_model::precision::Precision;
use inception_model::ModelConfig;
use tch::{nn::VarStore, Device, Kind, Tensor};

fn model() -> (VarStore, InceptionV3) {
    tch::manual_seed(0);
    let vs = VarStore::new(Device::Cpu);
    let model = InceptionV3::new(&vs.root(), &ModelConfig { image_size: 139, dropout: 0.0, ..ModelConfig::tiny(6) });
    (vs, model)
}

#[test]
fn bf16_logits_are_close_to_fp32_and_come_back_in_fp32() {
    let (_vs, model) = model();
    let x = images_to_input(&Tensor::randint(256, [4, 139, 139, 3], (Kind::Uint8, Device::Cpu)));
    let (full, _) = tch::no_grad(|| model.forward_in(Precision::Fp32, &x, Mode::Eval));
    let (low, _) = tch::no_grad(|| model.forward_in(Precision::Bf16, &x, Mode::Eval));
    assert_eq!(low.kind(), Kind::Float, "logits are handed back in fp32");
    // bf16 keeps 8 bits of mantissa: ~0.4 % per operation, a few percent
    // over 90-odd layers of a random network. The ranking of the top class
    // is what scoring uses, and it agrees.
    let scale = full.abs().max().double_value(&[]).max(1e-6);
    let worst = (&low - &full).abs().max().double_value(&[]) / scale;
    assert!(worst < 0.1, "bf16 logits differ from fp32 by {worst:.4} of their largest magnitude");
    assert!(low.argmax(1, false).equal(&full.argmax(1, false)), "the same top-1 classes");
    assert!(!inception_torch_ext::autocast_enabled(inception_torch_ext::AutocastDevice::Cpu), "left again");
}

#[test]
fn bf16_training_keeps_fp32_weights_and_gradients() {
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
