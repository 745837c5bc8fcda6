//! libtorch features that tch 0.26 does not bind, through a small C++ shim
//! (csrc/shim.cpp, built by build.rs with the `cc` crate against the headers
//! of the libtorch tch links), and c10d for multi-process training
//! ([`distributed`]: a TCPStore rendezvous and Gloo collectives, from
//! csrc/distributed.cpp, and NCCL ones from csrc/nccl.cpp where build.rs
//! finds NCCL's parts).
//!
//! Autocast: tch only toggles CUDA autocast and sets no dtype. [`Autocast`]
//! enables libtorch's autocast on the CPU or CUDA with bf16 or fp16 for the
//! current thread, as `torch.autocast(device, dtype)` does: matrix products
//! and convolutions run in the low precision, the weights stay fp32
//! (cast once per forward, cached), and operations autocast keeps in fp32
//! (softmax, losses, norms of its lists) stay there.

use std::ffi::{c_char, c_int, CStr};
use std::marker::PhantomData;

pub mod distributed;
pub mod fused;

extern "C" {
    fn ext_autocast_enter(device: c_int, dtype: c_int) -> *mut c_char;
    fn ext_autocast_exit(device: c_int, was_enabled: c_int) -> *mut c_char;
    fn ext_autocast_is_enabled(device: c_int) -> c_int;
    fn ext_free_message(message: *mut c_char);
}

/// A libtorch call that threw; what it said.
#[derive(Debug, thiserror::Error)]
#[error("libtorch: {0}")]
pub struct TorchExtError(pub String);

/// Where autocast applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutocastDevice {
    /// The CPU (oneDNN's bf16 kernels; fp16 is slow there).
    Cpu,
    /// CUDA devices.
    Cuda,
}

impl AutocastDevice {
    fn code(self) -> c_int {
        match self {
            AutocastDevice::Cpu => 0,
            AutocastDevice::Cuda => 1,
        }
    }

    /// The autocast device of a tch device.
    pub fn of(device: tch::Device) -> Self {
        if device.is_cuda() {
            AutocastDevice::Cuda
        } else {
            AutocastDevice::Cpu
        }
    }
}

/// The low precision autocast computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LowPrecision {
    /// bfloat16: fp32's range, so no loss scaling.
    BFloat16,
    /// IEEE half: needs loss scaling against underflowing gradients.
    Float16,
}

/// The text of a message a shim entry point returned (and frees it); `None`
/// for the null of success.
pub(crate) fn take_message(message: *mut c_char) -> Option<String> {
    if message.is_null() {
        return None;
    }
    // SAFETY: a non-null result is a NUL-terminated string malloc'd by the
    // shim, read once here and freed by the shim's own free.
    let text = unsafe { CStr::from_ptr(message) }.to_string_lossy().into_owned();
    unsafe { ext_free_message(message) };
    Some(text)
}

/// Turns a returned message into an error.
fn check(message: *mut c_char) -> Result<(), TorchExtError> {
    take_message(message).map_or(Ok(()), |text| Err(TorchExtError(text)))
}

/// Whether autocast is on for `device` in this thread.
pub fn autocast_enabled(device: AutocastDevice) -> bool {
    // SAFETY: reads thread-local libtorch state; no pointers cross.
    unsafe { ext_autocast_is_enabled(device.code()) != 0 }
}

/// Autocast on for this thread while the guard lives (libtorch's autocast
/// state is thread-local, so the guard cannot move to another thread).
#[must_use = "autocast ends when the guard is dropped"]
pub struct Autocast {
    device: AutocastDevice,
    was_enabled: bool,
    /// Not `Send`: the state it changed belongs to this thread.
    _thread: PhantomData<*const ()>,
}

impl Autocast {
    /// Enters autocast on `device` computing in `precision`.
    pub fn enter(device: AutocastDevice, precision: LowPrecision) -> Result<Self, TorchExtError> {
        let was_enabled = autocast_enabled(device);
        let dtype = match precision {
            LowPrecision::BFloat16 => 0,
            LowPrecision::Float16 => 1,
        };
        // SAFETY: plain integers cross; errors come back as a message.
        check(unsafe { ext_autocast_enter(device.code(), dtype) })?;
        Ok(Self { device, was_enabled, _thread: PhantomData })
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        // SAFETY: as in `enter`; a failure here can only be reported.
        if let Err(e) = check(unsafe { ext_autocast_exit(self.device.code(), c_int::from(self.was_enabled)) }) {
            eprintln!("leaving autocast: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    #[test]
    fn matrix_products_run_in_bf16_inside_and_fp32_outside() {
        let a = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([8, 3], (Kind::Float, Device::Cpu));
        assert!(!autocast_enabled(AutocastDevice::Cpu));
        {
            let _guard = Autocast::enter(AutocastDevice::Cpu, LowPrecision::BFloat16).unwrap();
            assert!(autocast_enabled(AutocastDevice::Cpu));
            let c = a.matmul(&b);
            assert_eq!(c.kind(), Kind::BFloat16, "autocast casts a matmul down");
            {
                let _inner = Autocast::enter(AutocastDevice::Cpu, LowPrecision::BFloat16).unwrap();
            }
            assert!(autocast_enabled(AutocastDevice::Cpu), "leaving a nested guard keeps the outer one");
        }
        assert!(!autocast_enabled(AutocastDevice::Cpu));
        assert_eq!(a.matmul(&b).kind(), Kind::Float, "back to full precision");
    }
}
