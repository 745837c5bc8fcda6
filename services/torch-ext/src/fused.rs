//! Fused optimizer updates on the CPU (csrc/fused.cpp): one pass over the
//! flat buffers instead of ~10 libtorch operations, each a pass of its own
//! with temporaries. On 2 cores at 149 px this is most of the optimizer's
//! 0.1 s a step (docs/benchmarks.md).

use std::ffi::c_char;
use tch::{Device, Kind, Tensor};

use crate::{take_message, TorchExtError};

extern "C" {
    fn ext_fused_rmsprop(
        var: *mut std::ffi::c_void,
        grad: *const std::ffi::c_void,
        decay: *const std::ffi::c_void,
        ms: *mut std::ffi::c_void,
        mom: *mut std::ffi::c_void,
        lr: f64,
        rho: f64,
        momentum: f64,
        eps: f64,
    ) -> *mut c_char;
}

/// TensorFlow's RMSProp hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RmsPropStep {
    pub lr: f64,
    /// The mean square's decay (`rho`).
    pub decay: f64,
    pub momentum: f64,
    pub epsilon: f64,
}

/// Whether [`fused_rmsprop`] takes these buffers: contiguous fp32 on the CPU.
pub fn fusable(buffers: &[&Tensor]) -> bool {
    buffers.iter().all(|t| t.defined() && t.device() == Device::Cpu && t.kind() == Kind::Float && t.is_contiguous())
}

/// In place, on buffers of one length laid end to end:
/// `g = grad + l2 * var`, `ms += (1 - decay) (g² - ms)`,
/// `mom = momentum mom + lr g / sqrt(ms + epsilon)`, `var -= mom`.
/// `l2` holds each element's L2 factor (0 where none applies). The five
/// must be distinct contiguous fp32 CPU tensors; a refusal names which.
pub fn fused_rmsprop(
    var: &mut Tensor,
    grad: &Tensor,
    l2: &Tensor,
    ms: &mut Tensor,
    mom: &mut Tensor,
    step: RmsPropStep,
) -> Result<(), TorchExtError> {
    let pointers = [var.data_ptr(), grad.data_ptr(), l2.data_ptr(), ms.data_ptr(), mom.data_ptr()];
    for (i, p) in pointers.iter().enumerate() {
        // (Empty tensors may all have no memory: nothing to overlap.)
        if var.numel() > 0 && pointers[..i].contains(p) {
            return Err(TorchExtError("fused RMSProp: two of its buffers are the same memory".into()));
        }
    }
    // SAFETY: five live, distinct tensors (checked above); the C++ side
    // checks their kind, device, layout and length before touching them.
    let message = unsafe {
        ext_fused_rmsprop(
            var.as_mut_ptr().cast(),
            grad.as_ptr().cast(),
            l2.as_ptr().cast(),
            ms.as_mut_ptr().cast(),
            mom.as_mut_ptr().cast(),
            step.lr,
            step.decay,
            step.momentum,
            step.epsilon,
        )
    };
    take_message(message).map_or(Ok(()), |m| Err(TorchExtError(format!("fused RMSProp: {m}"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEP: RmsPropStep = RmsPropStep { lr: 0.01, decay: 0.9, momentum: 0.9, epsilon: 1.0 };

    /// The same arithmetic as separate libtorch operations.
    fn unfused(var: &mut Tensor, grad: &Tensor, l2: &Tensor, ms: &mut Tensor, mom: &mut Tensor, s: RmsPropStep) {
        let g = grad + l2 * &*var;
        let _ = ms.lerp_(&g.square(), 1.0 - s.decay);
        let update = &*mom * s.momentum + &g * s.lr / (&*ms + s.epsilon).sqrt();
        mom.copy_(&update);
        let _ = var.g_sub_(&update);
    }

    #[test]
    fn matches_the_unfused_operations_over_several_steps() {
        tch::manual_seed(1);
        // Not a multiple of the grain or of any vector width.
        let n = 200_003;
        let mut var = Tensor::randn([n], (Kind::Float, Device::Cpu));
        let l2 = Tensor::rand([n], (Kind::Float, Device::Cpu)).gt(0.5).to_kind(Kind::Float) * 4e-5;
        let (mut ms, mut mom) = (var.ones_like(), var.zeros_like());
        let (mut var2, mut ms2, mut mom2) = (var.copy(), ms.copy(), mom.copy());
        for _ in 0..3 {
            let grad = var.randn_like();
            fused_rmsprop(&mut var, &grad, &l2, &mut ms, &mut mom, STEP).unwrap();
            unfused(&mut var2, &grad, &l2, &mut ms2, &mut mom2, STEP);
        }
        for (fused, reference) in [(&var, &var2), (&ms, &ms2), (&mom, &mom2)] {
            let difference = (fused - reference).abs().max().double_value(&[]);
            assert!(difference < 1e-6, "differs by {difference}");
        }
        assert!(mom.abs().max().double_value(&[]) > 1e-4, "the update moved something");
    }

    #[test]
    fn refuses_mismatched_or_shared_buffers_naming_them() {
        let mut var = Tensor::zeros([8], (Kind::Float, Device::Cpu));
        let (mut ms, mut mom) = (var.ones_like(), var.zeros_like());
        let short = Tensor::zeros([7], (Kind::Float, Device::Cpu));
        let l2 = var.zeros_like();
        let e = fused_rmsprop(&mut var, &short, &l2, &mut ms, &mut mom, STEP).unwrap_err();
        assert!(e.0.contains("the gradients") && e.0.contains("8 elements"), "{e}");
        let doubles = Tensor::zeros([8], (Kind::Double, Device::Cpu));
        let e = fused_rmsprop(&mut var, &doubles, &l2, &mut ms, &mut mom, STEP).unwrap_err();
        assert!(e.0.contains("fp32"), "{e}");
        let mut alias = ms.shallow_clone();
        let e = fused_rmsprop(&mut var, &l2, &l2.zeros_like(), &mut ms, &mut alias, STEP).unwrap_err();
        assert!(e.0.contains("same memory"), "{e}");
        assert!(fusable(&[&var, &l2]) && !fusable(&[&doubles]) && !fusable(&[&var.view([2, 4]).transpose(0, 1)]));
    }
}
