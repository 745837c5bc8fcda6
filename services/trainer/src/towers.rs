//! Towers (`inception_train.py`'s multi-GPU training): the batch is split
//! over N model replicas, each computes its loss and gradients on its own
//! device, the gradients are averaged onto the first tower's variables and
//! one update is applied. Batch-norm statistics come from the last tower
//! only, as in the original ("stats accumulate extremely fast").
//!
//! Tower 0 is the master model; towers 1..N are replicas whose variables are
//! refreshed from the master before every step.

use inception_model::{InceptionV3, ModelConfig};
use tch::nn::VarStore;
use tch::{Device, Tensor};

pub struct Replica {
    pub vs: VarStore,
    pub model: InceptionV3,
    /// (master variable, replica variable) for every variable.
    pairs: Vec<(Tensor, Tensor)>,
    /// (master, replica) running statistics, copied back after the last tower.
    stats: Vec<(Tensor, Tensor)>,
}

impl Replica {
    pub fn new(master: &VarStore, cfg: &ModelConfig, device: Device) -> Self {
        let vs = VarStore::new(device);
        let model = InceptionV3::new(&vs.root(), cfg);
        let mine = vs.variables();
        let mut pairs = Vec::new();
        let mut stats = Vec::new();
        for (name, m) in master.variables() {
            if let Some(r) = mine.get(&name) {
                if name.ends_with("running_mean") || name.ends_with("running_var") {
                    stats.push((m.shallow_clone(), r.shallow_clone()));
                }
                pairs.push((m, r.shallow_clone()));
            }
        }
        Self { vs, model, pairs, stats }
    }

    /// Copies the master's variables into this replica.
    pub fn pull(&mut self) {
        tch::no_grad(|| {
            for (m, r) in &mut self.pairs {
                r.copy_(m);
            }
        });
    }

    /// Copies this replica's batch-norm statistics into the master.
    pub fn push_statistics(&mut self) {
        tch::no_grad(|| {
            for (m, r) in &mut self.stats {
                m.copy_(r);
            }
        });
    }

    /// Adds this replica's gradients into the master's.
    pub fn add_gradients_to_master(&mut self) {
        tch::no_grad(|| {
            for (m, r) in &self.pairs {
                let rg = r.grad();
                if !rg.defined() {
                    continue;
                }
                let mut mg = m.grad();
                if mg.defined() {
                    let _ = mg.g_add_(&rg.to_device(m.device()));
                }
            }
        });
    }

    pub fn zero_grad(&mut self) {
        for (_, r) in &mut self.pairs {
            let mut g = r.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }
}

/// The devices of N towers starting at `first`: consecutive CUDA devices, or
/// N times the CPU.
pub fn tower_devices(first: Device, n: usize) -> Result<Vec<Device>, String> {
    match first {
        Device::Cuda(i) => {
            let available = tch::Cuda::device_count() as usize;
            if i + n > available {
                return Err(format!("train.num_gpus = {n} from cuda:{i} needs {} GPUs; {available} visible", i + n));
            }
            Ok((i..i + n).map(Device::Cuda).collect())
        }
        other => Ok(vec![other; n]),
    }
}
