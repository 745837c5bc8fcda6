//! DistributedDataParallel's bucketing engine, `c10d::Reducer`, through
//! csrc/reducer.cpp: a [`GradientReducer`] hooks the parameters' gradient
//! accumulators, so that a backward pass that accumulates into `.grad`
//! (`Tensor::backward`, not `run_backward`) all-reduces each bucket of
//! gradients as soon as it is ready, overlapping communication with the rest
//! of the pass, and ends with every parameter's `.grad` averaged over the
//! ranks (a view of its bucket).
//!
//! Per step, on every rank: [`GradientReducer::before_forward`], the forward
//! pass, [`GradientReducer::before_backward`], then
//! [`GradientReducer::backward`], whose error names the rank. Every parameter
//! must get a gradient in every backward pass (no unused parameters).

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_void};
use std::ptr::{self, NonNull};

use tch::{Kind, Tensor};

use super::{DistributedError, ExtProcessGroup, ProcessGroup};
use crate::take_message;

#[repr(C)]
struct ExtReducer {
    _private: [u8; 0],
}

extern "C" {
    fn ext_reducer_new(
        group: *mut ExtProcessGroup,
        rank: c_int,
        world_size: c_int,
        params: *const *mut c_void,
        count: usize,
        out: *mut *mut ExtReducer,
    ) -> *mut c_char;
    fn ext_reducer_before_forward(reducer: *mut ExtReducer) -> *mut c_char;
    fn ext_reducer_before_backward(reducer: *mut ExtReducer) -> *mut c_char;
    fn ext_reducer_free(reducer: *mut ExtReducer);
}

/// Gradient all-reduce overlapped with the backward pass, over a
/// [`ProcessGroup`]'s backend (it keeps the backend alive on its own).
pub struct GradientReducer {
    raw: NonNull<ExtReducer>,
    rank: u32,
    world_size: u32,
    failed: Cell<bool>,
}

// SAFETY: as ProcessGroup: no thread affinity, used from one thread at a time.
unsafe impl Send for GradientReducer {}

impl ProcessGroup {
    /// A reducer over `params`: leaf f32 tensors that require gradients, on
    /// the device this group's collectives take, in the same order on every
    /// rank.
    pub fn gradient_reducer(&self, params: &[Tensor]) -> Result<GradientReducer, DistributedError> {
        let operation = format!("making a gradient reducer over {} parameters", params.len());
        self.check_usable(&operation)?;
        if params.is_empty() {
            return Err(self.error(operation, "there are no parameters"));
        }
        for (i, p) in params.iter().enumerate() {
            if !p.defined() || !p.requires_grad() || p.kind() != Kind::Float || !self.takes(p.device()) {
                let what = if p.defined() { format!("{:?} on {:?}", p.kind(), p.device()) } else { "undefined".into() };
                return Err(self.error(
                    operation,
                    format!("parameter {i} ({what}) is not an f32 tensor that requires grad on this group's device"),
                ));
            }
        }
        // The C++ side copies the handles; the pointers need only outlive the call.
        let mut handles: Vec<Tensor> = params.iter().map(Tensor::shallow_clone).collect();
        let pointers: Vec<*mut c_void> = handles.iter_mut().map(|t| t.as_mut_ptr().cast()).collect();
        let mut raw = ptr::null_mut();
        // Validated to fit in c_int when the group was made.
        let (rank, world_size) = (self.rank as c_int, self.world_size as c_int);
        // SAFETY: the group is live; `pointers` are `at::Tensor*` valid for the call.
        let message = unsafe {
            ext_reducer_new(self.raw.as_ptr(), rank, world_size, pointers.as_ptr(), pointers.len(), &mut raw)
        };
        if let Some(message) = take_message(message) {
            return Err(self.error(operation, message));
        }
        let raw = NonNull::new(raw).ok_or_else(|| self.error("making a gradient reducer", "no reducer was made"))?;
        Ok(GradientReducer { raw, rank: self.rank, world_size: self.world_size, failed: Cell::new(false) })
    }
}

impl GradientReducer {
    /// Before each step's forward pass. After the first backward pass it
    /// rebuilds the buckets in the order gradients became ready (a
    /// collective: rank 0's order is taken by all).
    pub fn before_forward(&self) -> Result<(), DistributedError> {
        // SAFETY: `raw` is live.
        self.call("preparing the forward pass", |raw| unsafe { ext_reducer_before_forward(raw) })
    }

    /// Before each step's backward pass: its gradients are to be all-reduced.
    pub fn before_backward(&self) -> Result<(), DistributedError> {
        // SAFETY: `raw` is live.
        self.call("preparing the backward pass", |raw| unsafe { ext_reducer_before_backward(raw) })
    }

    /// The backward pass of `loss` (accumulating into `.grad`), with the
    /// bucket all-reduces it starts and waits for. A failure (a peer gone, a
    /// collective timed out) names this rank and breaks the reducer.
    pub fn backward(&self, loss: &Tensor) -> Result<(), DistributedError> {
        let operation = "the backward pass and its all-reduces";
        self.check_usable(operation)?;
        loss.f_backward().map_err(|e| {
            self.failed.set(true);
            self.error(operation, e.to_string())
        })
    }

    fn call(&self, operation: &str, f: impl FnOnce(*mut ExtReducer) -> *mut c_char) -> Result<(), DistributedError> {
        self.check_usable(operation)?;
        match take_message(f(self.raw.as_ptr())) {
            Some(message) => {
                self.failed.set(true);
                Err(self.error(operation, message))
            }
            None => Ok(()),
        }
    }

    fn check_usable(&self, operation: &str) -> Result<(), DistributedError> {
        if self.failed.get() {
            return Err(self.error(operation, "an earlier step failed; the reducer is broken"));
        }
        Ok(())
    }

    fn error(&self, operation: &str, message: impl Into<String>) -> DistributedError {
        DistributedError {
            rank: self.rank,
            world_size: self.world_size,
            operation: format!("gradient reducer: {operation}"),
            message: message.into(),
        }
    }
}

impl Drop for GradientReducer {
    fn drop(&mut self) {
        // SAFETY: owned, freed once; removes the autograd hooks.
        unsafe { ext_reducer_free(self.raw.as_ptr()) }
    }
}
