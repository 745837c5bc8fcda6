//! Inception-v3 on libtorch: the network, the original's loss, and the
//! checkpoint format shared by the trainer, the evaluator and `classify`.

pub mod checkpoint;
pub mod config;
pub mod inception;
pub mod loss;

pub use config::ModelConfig;
pub use inception::{images_to_input, InceptionV3, Mode};

/// Turns cuDNN's autotuner (PyTorch's `cudnn.benchmark`) on or off when
/// `device` is a CUDA device: with a fixed batch shape, the first step times
/// the convolution algorithms and later steps use the fastest.
pub fn set_cudnn_benchmark(device: tch::Device, enabled: bool) {
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(enabled);
    }
}

/// Picks the device named by a `device` setting: `auto`, `cpu` or `cuda:N`.
pub fn device_from_setting(setting: &str) -> Result<tch::Device, String> {
    match setting {
        "auto" => Ok(tch::Device::cuda_if_available()),
        "cpu" => Ok(tch::Device::Cpu),
        s => {
            let n = s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| format!("device {s:?}: use auto, cpu or cuda:N"))?;
            if n >= tch::Cuda::device_count() as usize {
                return Err(format!("device {s}: only {} CUDA devices visible", tch::Cuda::device_count()));
            }
            Ok(tch::Device::Cuda(n))
        }
    }
}
