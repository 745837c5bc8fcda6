//! channels_last (issue 19): the batch arrives NHWC, and the network keeps
//! that memory layout from the input through every layer to the last
//! feature map, forward and backward, so that oneDNN (CPU) and cuDNN (GPU)
//! run their NHWC kernels without converting at each layer.

use inception_model::inception::{images_to_input, InceptionV3, Mode};
use inception_model::ModelConfig;
use tch::{nn::VarStore, Device, Kind, Tensor};

/// Whether a 4-D tensor has channels_last strides (C innermost).
fn is_channels_last(t: &Tensor) -> bool {
    let (size, stride) = (t.size(), t.stride());
    let [_, c, h, w] = size[..] else { return false };
    stride[1] == 1 && stride[3] == c && stride[2] == w * c && stride[0] == h * w * c
}

#[test]
fn the_layout_survives_the_forward_and_backward_passes() {
    tch::manual_seed(0);
    let vs = VarStore::new(Device::Cpu);
    // 139 px leaves a 3x3 last feature map: at 75 px it is 1x1, where
    // both layouts have the same strides.
    let model = InceptionV3::new(&vs.root(), &ModelConfig { image_size: 139, ..ModelConfig::tiny(6) });
    let batch = Tensor::randint(256, [2, 139, 139, 3], (Kind::Uint8, Device::Cpu));
    let x = images_to_input(&batch).set_requires_grad(true);
    assert!(is_channels_last(&x), "the input: {:?}", x.stride());
    let (features, _) = model.features(&x, Mode::Train { bn_momentum: 0.1 });
    assert_eq!(features.size()[2..], [3, 3]);
    assert!(is_channels_last(&features), "the last feature map: {:?} {:?}", features.size(), features.stride());
    let loss = features.sum(Kind::Float);
    let grads = Tensor::run_backward(&[&loss], &[&x], false, false);
    assert!(is_channels_last(&grads[0]), "the gradient of the input: {:?}", grads[0].stride());
}
