//! Mixed precision (`train.precision`, `eval.precision`): which arithmetic a
//! device runs the network in, and libtorch's autocast around a pass. The
//! weights, batch norm, softmax, the loss, the optimizer and the moving
//! averages stay fp32; autocast casts convolutions and matrix products down.

use inception_core::settings::PrecisionSetting;
use inception_torch_ext::{Autocast, AutocastDevice, LowPrecision, TorchExtError};
use tch::Device;

/// The arithmetic a pass runs in, once `auto` is resolved for a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    Fp32,
    Bf16,
    Fp16,
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
        })
    }
}

/// Whether this CPU has bf16 instructions (`avx512_bf16`, or Intel AMX's
/// `amx_bf16`): there oneDNN's bf16 kernels train faster than fp32.
/// Measured (docs/benchmarks.md, issue 19): on an AMD EPYC with
/// `avx512_bf16` and no AMX, the training step at 149 px 1.54x and at
/// 299 px 1.74x fp32's; on Intel Xeons with AMX, PyTorch's own bf16 autocast
/// 1.56x fp32's. Without them bf16 is emulated and slower.
pub fn cpu_has_bf16() -> bool {
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| {
        info.lines()
            .filter(|l| l.starts_with("flags"))
            .take(1)
            .any(|l| l.split_whitespace().any(|f| f == "avx512_bf16" || f == "amx_bf16"))
    })
}

impl Precision {
    /// `setting` on `device`: `auto` per the measured defaults; fp16 on a
    /// CPU is refused (slow there, and bf16 needs no loss scaling); bf16 on
    /// a CPU without bf16 instructions is allowed with a warning (emulated,
    /// it trained at 1/11 of fp32's speed on an AVX2-only AMD EPYC).
    pub fn resolve(setting: PrecisionSetting, device: Device, key: &str) -> Result<Self, String> {
        match (setting, device.is_cuda()) {
            (PrecisionSetting::Fp32, _) => Ok(Precision::Fp32),
            (PrecisionSetting::Bf16, true) => Ok(Precision::Bf16),
            (PrecisionSetting::Bf16, false) => {
                if !cpu_has_bf16() {
                    tracing::warn!(
                        "{key} = \"bf16\" on a CPU without avx512_bf16 or amx_bf16: bf16 is emulated there, \
                         many times slower than fp32 (\"auto\" picks fp32 on it)"
                    );
                }
                Ok(Precision::Bf16)
            }
            (PrecisionSetting::Fp16, true) => Ok(Precision::Fp16),
            (PrecisionSetting::Fp16, false) => {
                Err(format!("{key} = \"fp16\" needs a CUDA device; on the CPU use \"bf16\" or \"fp32\""))
            }
            (PrecisionSetting::Auto, true) => Ok(Precision::Bf16),
            (PrecisionSetting::Auto, false) if cpu_has_bf16() => Ok(Precision::Bf16),
            (PrecisionSetting::Auto, false) => Ok(Precision::Fp32),
        }
    }

    /// Autocast for a pass on `device` (none in fp32). Keep the guard for
    /// the forward pass; it must stay on the thread that made it.
    pub fn autocast(self, device: Device) -> Result<Option<Autocast>, TorchExtError> {
        let low = match self {
            Precision::Fp32 => return Ok(None),
            Precision::Bf16 => LowPrecision::BFloat16,
            Precision::Fp16 => LowPrecision::Float16,
        };
        Autocast::enter(AutocastDevice::of(device), low).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_resolve_per_device() {
        let cpu = Device::Cpu;
        assert_eq!(Precision::resolve(PrecisionSetting::Bf16, cpu, "train.precision"), Ok(Precision::Bf16));
        assert_eq!(Precision::resolve(PrecisionSetting::Fp32, Device::Cuda(0), "k"), Ok(Precision::Fp32));
        assert_eq!(Precision::resolve(PrecisionSetting::Auto, Device::Cuda(0), "k"), Ok(Precision::Bf16));
        let auto = if cpu_has_bf16() { Precision::Bf16 } else { Precision::Fp32 };
        assert_eq!(Precision::resolve(PrecisionSetting::Auto, cpu, "k"), Ok(auto));
        let err = Precision::resolve(PrecisionSetting::Fp16, cpu, "train.precision").unwrap_err();
        assert!(err.contains("train.precision") && err.contains("CUDA"), "{err}");
    }
}
