//! Inception-v3 on libtorch: the network, the original's loss, and the
//! checkpoint format shared by the trainer, the evaluator and `classify`.

pub mod checkpoint;
pub mod config;
pub mod inception;
pub mod loss;
pub mod precision;

pub use config::ModelConfig;
pub use inception::{images_to_input, InceptionV3, Mode};

/// What libtorch said when an operation failed. tch turns libtorch's C++
/// exceptions into panics; services catch them around a step or a batch
/// ([`catch_torch`]) and report this instead of unwinding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorchFailure {
    /// The exception's first line (libtorch appends a C++ backtrace).
    pub message: String,
    /// Out of memory (CUDA's "out of memory", the CPU allocator's "not
    /// enough memory"): the fix is a smaller batch, not a code change.
    pub out_of_memory: bool,
}

impl TorchFailure {
    pub fn from_message(message: &str) -> Self {
        let first = message.lines().find(|l| !l.trim().is_empty()).unwrap_or("unknown failure").trim().to_string();
        let lower = message.to_ascii_lowercase();
        Self { message: first, out_of_memory: lower.contains("out of memory") || lower.contains("not enough memory") }
    }

    fn from_panic(panic: &(dyn std::any::Any + Send)) -> Self {
        let text = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("unknown failure");
        Self::from_message(text)
    }
}

/// Runs `f`, returning a libtorch failure (a panic) as a [`TorchFailure`].
pub fn catch_torch<T>(f: impl FnOnce() -> T) -> Result<T, TorchFailure> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|panic| TorchFailure::from_panic(panic.as_ref()))
}

/// Turns cuDNN's autotuner (PyTorch's `cudnn.benchmark`) on or off when
/// `device` is a CUDA device: with a fixed batch shape, the first step times
/// the convolution algorithms and later steps use the fastest.
pub fn set_cudnn_benchmark(device: tch::Device, enabled: bool) {
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(enabled);
    }
}

/// Sets libtorch's CPU threads (`train.threads`, `eval.threads`); 0 leaves
/// libtorch's default, one per core. On a machine shared by several
/// services, fewer threads per service avoid OpenMP threads spinning on
/// cores another service needs (measured: an evaluator and a trainer with
/// two threads each on 2 cores ran 5x slower than alone).
pub fn set_cpu_threads(threads: u32, key: &str) {
    if threads > 0 {
        tch::set_num_threads(i32::try_from(threads).unwrap_or(i32::MAX));
        tracing::info!("libtorch uses {threads} CPU threads ({key})");
    }
}

/// Picks the device named by a `device` setting: `auto`, `cpu` or `cuda:N`.
pub fn device_from_setting(setting: inception_core::settings::DeviceSetting) -> Result<tch::Device, String> {
    use inception_core::settings::DeviceSetting;
    match setting {
        DeviceSetting::Auto => Ok(tch::Device::cuda_if_available()),
        DeviceSetting::Cpu => Ok(tch::Device::Cpu),
        DeviceSetting::Cuda(n) => {
            if n >= tch::Cuda::device_count() as usize {
                return Err(format!("device {setting}: only {} CUDA devices visible", tch::Cuda::device_count()));
            }
            Ok(tch::Device::Cuda(n))
        }
    }
}
