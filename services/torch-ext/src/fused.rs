//! Fused optimizer updates on the CPU (csrc/fused.cpp): one pass over the
//! flat buffers instead of ~10 libtorch operations, each a pass of its own
//! with temporaries, reading each variable's gradient where it lies. On 2
//! cores at 149 px this is most of the optimizer's 0.1 s a step
//! (docs/benchmarks.md).

use std::ffi::{c_char, c_void};
use tch::{Device, Kind, Tensor};

use crate::{take_message, TorchExtError};

extern "C" {
    fn ext_fused_rmsprop(
        var: *mut c_void,
        grads: *const *const c_void,
        offsets: *const i64,
        count: i64,
        decay: *const c_void,
        ms: *mut c_void,
        mom: *mut c_void,
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
/// `mom = momentum mom + lr g / sqrt(ms + epsilon)`, `var -= mom`, where
/// `grad` is `grads[i]` (any shape) from `offsets[i]` on: ascending offsets,
/// no two gradients overlapping, and zero where no gradient lies (an
/// undefined one, or the gaps between them). `l2` holds each element's L2
/// factor (0 where none applies). The four buffers must be distinct
/// contiguous fp32 CPU tensors, and the gradients contiguous fp32 CPU
/// tensors apart from them; a refusal, before anything is changed, names
/// what is wrong.
pub fn fused_rmsprop(
    var: &mut Tensor,
    grads: &[Tensor],
    offsets: &[i64],
    l2: &Tensor,
    ms: &mut Tensor,
    mom: &mut Tensor,
    step: RmsPropStep,
) -> Result<(), TorchExtError> {
    if grads.len() != offsets.len() {
        return Err(TorchExtError(format!("fused RMSProp: {} gradients but {} offsets", grads.len(), offsets.len())));
    }
    let pointers = [var.data_ptr(), l2.data_ptr(), ms.data_ptr(), mom.data_ptr()];
    for (i, p) in pointers.iter().enumerate() {
        // (Empty tensors may all have no memory: nothing to overlap.)
        if var.numel() > 0 && pointers[..i].contains(p) {
            return Err(TorchExtError("fused RMSProp: two of its buffers are the same memory".into()));
        }
    }
    let grad_pointers: Vec<*const c_void> = grads.iter().map(|g| g.as_ptr().cast()).collect();
    let count = i64::try_from(grads.len()).map_err(|_| TorchExtError("fused RMSProp: too many gradients".into()))?;
    // SAFETY: four live, distinct tensors (checked above) and `count` live
    // gradients with as many offsets; the C++ side checks kinds, devices,
    // layouts, lengths, bounds and overlaps before touching any.
    let message = unsafe {
        ext_fused_rmsprop(
            var.as_mut_ptr().cast(),
            grad_pointers.as_ptr(),
            offsets.as_ptr(),
            count,
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
            fused_rmsprop(&mut var, &[grad.shallow_clone()], &[0], &l2, &mut ms, &mut mom, STEP).unwrap();
            unfused(&mut var2, &grad, &l2, &mut ms2, &mut mom2, STEP);
        }
        for (fused, reference) in [(&var, &var2), (&ms, &ms2), (&mom, &mom2)] {
            let difference = (fused - reference).abs().max().double_value(&[]);
            assert!(difference < 1e-6, "differs by {difference}");
        }
        assert!(mom.abs().max().double_value(&[]) > 1e-4, "the update moved something");
    }

    #[test]
    fn reads_gradients_in_place_with_gaps_as_zeros() {
        tch::manual_seed(2);
        // Pieces of several shapes, a gap after each, one undefined, and a
        // tail with no gradient: the same as their gather into one buffer.
        let n = 300_000;
        let shapes: [&[i64]; 4] = [&[3, 5, 7], &[70_000], &[2, 50_000], &[40_001]];
        let offsets = [0, 128, 70_400, 190_000];
        let mut grads: Vec<Tensor> = shapes.iter().map(|s| Tensor::randn(*s, (Kind::Float, Device::Cpu))).collect();
        grads[2] = Tensor::new();
        let mut var = Tensor::randn([n], (Kind::Float, Device::Cpu));
        let l2 = var.full_like(4e-5);
        let (mut ms, mut mom) = (var.ones_like(), var.ones_like());
        let (mut var2, mut ms2, mut mom2) = (var.copy(), ms.copy(), mom.copy());
        let gathered = var.zeros_like();
        for (g, at) in grads.iter().zip(offsets) {
            if g.defined() {
                gathered.narrow(0, at, g.numel() as i64).copy_(&g.reshape([-1]));
            }
        }
        fused_rmsprop(&mut var, &grads, &offsets, &l2, &mut ms, &mut mom, STEP).unwrap();
        fused_rmsprop(&mut var2, &[gathered.shallow_clone()], &[0], &l2, &mut ms2, &mut mom2, STEP).unwrap();
        assert_eq!((&var, &ms, &mom), (&var2, &ms2, &mom2), "bit for bit");
        let (mut var3, mut ms3, mut mom3) = (var.copy(), ms.copy(), mom.copy());
        unfused(&mut var3, &gathered, &l2, &mut ms3, &mut mom3, STEP);
        fused_rmsprop(&mut var, &grads, &offsets, &l2, &mut ms, &mut mom, STEP).unwrap();
        let difference = (&var - &var3).abs().max().double_value(&[]);
        assert!(difference < 1e-6, "differs from the unfused operations by {difference}");
    }

    #[test]
    fn refuses_mismatched_or_shared_buffers_naming_them() {
        let mut var = Tensor::zeros([8], (Kind::Float, Device::Cpu));
        let (mut ms, mut mom) = (var.ones_like(), var.zeros_like());
        let short = Tensor::zeros([7], (Kind::Float, Device::Cpu));
        let l2 = var.zeros_like();
        let e = fused_rmsprop(&mut var, &[short.shallow_clone()], &[2], &l2, &mut ms, &mut mom, STEP).unwrap_err();
        assert!(e.0.contains("gradient 0") && e.0.contains("runs past the 8 elements"), "{e}");
        let pair = [short.narrow(0, 0, 3), short.narrow(0, 3, 3)];
        let e = fused_rmsprop(&mut var, &pair, &[0, 2], &l2, &mut ms, &mut mom, STEP).unwrap_err();
        assert!(e.0.contains("gradient 1") && e.0.contains("overlaps the one before"), "{e}");
        let e = fused_rmsprop(&mut var, &pair, &[0], &l2, &mut ms, &mut mom, STEP).unwrap_err();
        assert!(e.0.contains("2 gradients but 1 offsets"), "{e}");
        let doubles = Tensor::zeros([8], (Kind::Double, Device::Cpu));
        let e = fused_rmsprop(&mut var, &[doubles.shallow_clone()], &[0], &l2, &mut ms, &mut mom, STEP).unwrap_err();
        assert!(e.0.contains("gradient 0") && e.0.contains("fp32"), "{e}");
        let e = fused_rmsprop(&mut var, &[ms.narrow(0, 2, 2)], &[0], &l2, &mut ms, &mut mom, STEP).unwrap_err();
        assert!(e.0.contains("shares memory"), "{e}");
        let mut alias = ms.shallow_clone();
        let e = fused_rmsprop(&mut var, &[short], &[0], &l2.zeros_like(), &mut ms, &mut alias, STEP).unwrap_err();
        assert!(e.0.contains("same memory"), "{e}");
        assert_eq!(ms, var.ones_like(), "nothing changed by a refusal");
        assert!(fusable(&[&var, &l2]) && !fusable(&[&doubles]) && !fusable(&[&var.view([2, 4]).transpose(0, 1)]));
    }
}
