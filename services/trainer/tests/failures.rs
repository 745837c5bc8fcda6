//! A step that libtorch fails (tch panics on a C++ exception: a GPU out of
//! memory, a shape it refuses) is an error that says what to do, not a
//! panic unwinding through the trainer.

use inception_core::Settings;
use inception_model::{ModelConfig, TorchFailure};
use inception_trainer::{step_failure, TrainError, TrainState};
use tch::{Device, Kind, Tensor};

#[test]
fn a_libtorch_failure_in_a_step_is_returned_as_an_error() {
    let cfg = ModelConfig { dropout: 0.0, ..ModelConfig::tiny(3) };
    let settings = Settings::defaults().unwrap();
    let mut state = TrainState::new(&cfg, vec!["a".into(), "b".into()], &settings, &[Device::Cpu]);
    // Two channels where the first convolution takes three: libtorch throws.
    let images = Tensor::zeros([2, 75, 75, 2], (Kind::Uint8, Device::Cpu));
    let labels = Tensor::from_slice(&[1i64, 2]);
    match state.guarded_step(&images, &labels, 0.1) {
        Err(TrainError::Libtorch { step, message }) => {
            assert_eq!(step, 1);
            assert!(message.contains("channels"), "libtorch's reason is kept: {message}");
            assert!(!message.contains('\n'), "one line, without the C++ backtrace: {message}");
        }
        other => panic!("expected a libtorch error, got {other:?}"),
    }
    assert_eq!(state.step, 0, "the failed step is not counted");
    // The state is still usable for a good batch.
    let good = Tensor::zeros([2, 75, 75, 3], (Kind::Uint8, Device::Cpu));
    state.guarded_step(&good, &labels, 0.1).unwrap();
    assert_eq!(state.step, 1);
}

#[test]
fn running_out_of_memory_names_the_settings_to_change() {
    let message = "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB\nException raised from malloc at c10/cuda/CUDACachingAllocator.cpp:1234";
    let e = step_failure(TorchFailure::from_message(message), 7, 256, "Cuda(0)".into());
    assert!(matches!(e, TrainError::OutOfMemory { step: 7, batch: 256, .. }), "{e:?}");
    let text = e.to_string();
    for wanted in [
        "out of memory on Cuda(0) at step 7 with a batch of 256",
        "pipeline.batch_size",
        "train.num_gpus",
        "Tried to allocate 2.00 GiB",
    ] {
        assert!(text.contains(wanted), "{wanted:?} missing from: {text}");
    }
    assert!(!text.contains("Exception raised"), "the C++ backtrace is left out: {text}");
    // The CPU allocator words it otherwise; the fix is the same.
    let cpu = step_failure(
        TorchFailure::from_message("DefaultCPUAllocator: not enough memory: you tried to allocate 123 bytes."),
        1,
        32,
        "Cpu".into(),
    );
    assert!(matches!(cpu, TrainError::OutOfMemory { .. }), "{cpu:?}");
    let other =
        step_failure(TorchFailure::from_message("Expected all tensors to be on the same device"), 1, 32, "Cpu".into());
    assert!(matches!(other, TrainError::Libtorch { .. }), "{other:?}");
}
