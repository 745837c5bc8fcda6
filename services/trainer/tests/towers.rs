//! Towers on one device, run in turn or at once (one thread each, as on
//! several GPUs): the update applied is the average of what each
//! tower computes on its share of the batch (batch norm aside: each tower
//! normalises with its own batch statistics, as in the original, so one tower
//! on the whole batch differs by exactly that).

use inception_core::Settings;
use inception_model::ModelConfig;
use inception_trainer::TrainState;
use tch::{Device, Kind, Tensor};

fn cfg() -> ModelConfig {
    ModelConfig { dropout: 0.0, ..ModelConfig::tiny(6) }
}

/// Weight initialisation draws from libtorch's global generator: tests that
/// compare same-seed models must not build models concurrently.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn state(towers: usize) -> TrainState {
    let settings = Settings::defaults().unwrap();
    let labels = (1..=5).map(|i| format!("class{i}")).collect();
    TrainState::new(&cfg(), labels, &settings, &vec![Device::Cpu; towers])
}

/// The averaged gradients a step would apply, by name.
fn gradients(s: &mut TrainState, images: &Tensor, labels: &Tensor) -> Vec<(String, Tensor)> {
    let (grads, _) = s.compute_gradients(images, labels).unwrap();
    s.optimizer.names().into_iter().zip(grads).collect()
}

fn max_difference(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|((na, ta), (nb, tb))| {
            assert_eq!(na, nb);
            (ta - tb).abs().max().double_value(&[])
        })
        .fold(0.0, f64::max)
}

#[test]
fn two_towers_apply_the_average_of_their_gradients_once() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(5);
    let images = Tensor::randint(256, [8, 75, 75, 3], (Kind::Uint8, Device::Cpu));
    let labels = Tensor::from_slice(&[1i64, 2, 3, 4, 5, 1, 2, 3]);
    let (first, second) = (images.narrow(0, 0, 4), images.narrow(0, 4, 4));

    // What each tower computes alone.
    let ga = gradients(&mut state(1), &first, &labels.narrow(0, 0, 4));
    let gb = gradients(&mut state(1), &second, &labels.narrow(0, 4, 4));
    let average: Vec<(String, Tensor)> =
        ga.iter().zip(&gb).map(|((n, a), (_, b))| (n.clone(), (a + b) / 2.0)).collect();
    assert!(max_difference(&ga, &gb) > 1e-4, "the halves' gradients differ, so averaging is observable");

    let scale = average.iter().map(|(_, g)| g.abs().max().double_value(&[])).fold(0.0, f64::max);
    // In turn (one device) and at once (one thread per tower, as on several GPUs).
    for concurrent in [true, false] {
        let mut two = state(2);
        assert!(!two.concurrent_towers, "two towers on one CPU run in turn by default");
        two.concurrent_towers = concurrent;
        let diff = max_difference(&gradients(&mut two, &images, &labels), &average);
        assert!(
            diff < 1e-6 * scale.max(1.0),
            "concurrent={concurrent}: the towers' gradient differs from the average by {diff} (scale {scale})"
        );
    }
    let mut two = state(2);
    assert!(two.replicas[0].pulls_one_buffer(), "the replica's variables lie in one buffer laid out as the master's");

    // One step applies it once.
    let before: Vec<(String, Tensor)> = two.vs.variables().into_iter().map(|(n, t)| (n, t.copy())).collect();
    two.train_step(&images, &labels, 0.1).unwrap();
    assert_eq!(two.step, 1);
    let moved = before.iter().any(|(n, t)| (t - &two.vs.variables()[n]).abs().max().double_value(&[]) > 1e-4);
    assert!(moved, "the update was applied");
}

#[test]
fn batch_norm_statistics_come_from_the_last_tower() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let first = Tensor::zeros([2, 75, 75, 3], (Kind::Uint8, Device::Cpu));
    let last = Tensor::full([2, 75, 75, 3], 255, (Kind::Uint8, Device::Cpu));
    let labels = Tensor::from_slice(&[1i64, 2, 3, 4]);
    let mut only_last = state(1);
    only_last.train_step(&last, &labels.narrow(0, 2, 2), 0.0).unwrap();
    let name = "Conv2d_1a_3x3.bn.running_mean";
    for concurrent in [false, true] {
        let mut two = state(2);
        two.concurrent_towers = concurrent;
        two.train_step(&Tensor::cat(&[&first, &last], 0), &labels, 0.0).unwrap();
        let (a, b) = (&two.vs.variables()[name], &only_last.vs.variables()[name]);
        assert!(
            (a - b).abs().max().double_value(&[]) < 1e-5,
            "concurrent={concurrent}: running mean of the last tower's half"
        );
    }
}

#[test]
fn variables_stay_in_one_buffer_that_the_optimizer_and_averages_update() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut s = state(1);
    assert!(s.optimizer.is_flat(), "the optimizer updates the variables' buffer");
    let name = "Mixed_5b.branch1x1.conv.weight";
    let initial = s.vs.variables()[name].copy();
    let images = Tensor::randint(256, [4, 75, 75, 3], (Kind::Uint8, Device::Cpu));
    s.train_step(&images, &Tensor::from_slice(&[1i64, 2, 3, 4]), 0.1).unwrap();
    let flat = s.flat.as_ref().expect("the model's variables share one kind and device");
    let vars: Vec<Tensor> = flat.vars.iter().map(|(_, v)| v.shallow_clone()).collect();
    assert!(flat.layout.holds(&flat.all, &vars), "still views of the buffer after a step");
    let now = s.vs.variables()[name].copy();
    assert!((&now - &initial).abs().max().double_value(&[]) > 1e-6, "the step moved the variable");
    // The average after one update: decay * initial + (1 - decay) * now.
    let d = inception_trainer::ema::decay(s.step);
    let expected = &initial * d + &now * (1.0 - d);
    let shadow = s.averages.state().into_iter().find(|(n, _)| n == &format!("ema/{name}")).unwrap().1;
    assert!((&shadow - &expected).abs().max().double_value(&[]) < 1e-6, "the average followed the variable");
}

/// In bf16 (issue 19) the towers still apply the average of what each
/// computes alone: every tower runs the same bf16 kernels on its share, so
/// the same 1e-6 bound holds, and the gradients come back in fp32 for the
/// fp32 master weights. Against fp32, the loss and the logits layer's
/// gradient agree; the whole gradient of a freshly initialised network does
/// not (cosine about 0.1): batch norm's backward subtracts nearly equal
/// terms, and bf16 rounds them. PyTorch's own autocast gives the same on
/// torchvision's Inception-v3 at 139 px (cosine 0.098 over all gradients,
/// 0.91 for fc, batch 8), so this is bf16, not this code; the learning
/// benchmark judges training.
#[test]
fn in_bf16_two_towers_average_too_and_stay_close_to_fp32() {
    use inception_model::precision::Precision;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(5);
    let images = Tensor::randint(256, [8, 75, 75, 3], (Kind::Uint8, Device::Cpu));
    let labels = Tensor::from_slice(&[1i64, 2, 3, 4, 5, 1, 2, 3]);
    let (first, second) = (images.narrow(0, 0, 4), images.narrow(0, 4, 4));
    let bf16 = |towers: usize| {
        let mut s = state(towers);
        s.set_precision(Precision::Bf16);
        s
    };
    let ga = gradients(&mut bf16(1), &first, &labels.narrow(0, 0, 4));
    let gb = gradients(&mut bf16(1), &second, &labels.narrow(0, 4, 4));
    let average: Vec<(String, Tensor)> =
        ga.iter().zip(&gb).map(|((n, a), (_, b))| (n.clone(), (a + b) / 2.0)).collect();
    let scale = average.iter().map(|(_, g)| g.abs().max().double_value(&[])).fold(0.0, f64::max);
    let mut two = bf16(2);
    let (towers, low_loss) = two.compute_gradients(&images, &labels).unwrap();
    let towers: Vec<(String, Tensor)> = two.optimizer.names().into_iter().zip(towers).collect();
    assert!(towers.iter().all(|(_, g)| g.kind() == Kind::Float), "fp32 gradients");
    let diff = max_difference(&towers, &average);
    assert!(diff < 1e-6 * scale.max(1.0), "bf16 towers differ from their average by {diff} (scale {scale})");

    let mut full = state(2);
    let (full_grads, full_loss) = full.compute_gradients(&images, &labels).unwrap();
    assert!((low_loss - full_loss).abs() < 0.05 * full_loss, "loss: bf16 {low_loss}, fp32 {full_loss}");
    let fc = |g: &[(String, Tensor)]| g.iter().find(|(n, _)| n == "fc.weight").map(|(_, t)| t.flatten(0, -1)).unwrap();
    let full_grads: Vec<(String, Tensor)> = full.optimizer.names().into_iter().zip(full_grads).collect();
    let cosine = Tensor::cosine_similarity(&fc(&towers), &fc(&full_grads), 0, 1e-12).double_value(&[]);
    // 0.62 measured here (8-channel layers, 4 images per tower's batch norm);
    // PyTorch's 0.91 is for the full width. Random directions give about 0.
    assert!(cosine > 0.3, "the logits layer's gradient points where fp32's does: cosine {cosine}");
    assert!(max_difference(&towers, &full_grads) > 0.0, "bf16 was used: the gradients differ from fp32's");
}
