//! Towers (`inception_train.py`'s multi-GPU training): the batch is split
//! over N model replicas, each computes its loss and gradients on its own
//! device, the gradients are averaged onto the first tower's variables and
//! one update is applied. Batch-norm statistics come from the last tower
//! only, as in the original ("stats accumulate extremely fast").
//!
//! Tower 0 is the master model; towers 1..N are replicas whose variables are
//! refreshed from the master before every step. Towers on distinct devices
//! run at once, one thread each (`TrainState::concurrent_towers`).

use crate::flat::FlatVariables;
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
    /// Trainable variables in the optimizer's slot order.
    pub trainable: Vec<Tensor>,
    /// (master's buffer, replica's buffer) when both models' variables lie
    /// in one buffer each, laid out alike: a pull is then one copy.
    flat: Option<(Tensor, Tensor)>,
}

impl Replica {
    /// `trainable` names the master's trainable variables in optimizer order;
    /// `master_flat`, the master's variables in one buffer, if they are.
    pub fn new(
        master: &VarStore,
        cfg: &ModelConfig,
        device: Device,
        trainable: &[String],
        master_flat: Option<&FlatVariables>,
    ) -> Self {
        let vs = VarStore::new(device);
        let model = InceptionV3::new(&vs.root(), cfg);
        let flat = master_flat.and_then(|m| {
            let mine = FlatVariables::new(&vs, trainable)?;
            (mine.names() == m.names() && mine.layout == m.layout).then(|| (m.all.shallow_clone(), mine.all))
        });
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
        let trainable = trainable.iter().filter_map(|n| mine.get(n).map(Tensor::shallow_clone)).collect();
        Self { vs, model, pairs, stats, trainable, flat }
    }

    /// Copies the master's variables into this replica.
    pub fn pull(&mut self) {
        tch::no_grad(|| match &mut self.flat {
            Some((m, r)) => r.copy_(m),
            None => {
                for (m, r) in &mut self.pairs {
                    r.copy_(m);
                }
            }
        });
    }

    /// Whether a pull is one copy of the whole buffer.
    pub fn pulls_one_buffer(&self) -> bool {
        self.flat.is_some()
    }

    /// Copies this replica's batch-norm statistics into the master.
    pub fn push_statistics(&mut self) {
        tch::no_grad(|| {
            for (m, r) in &mut self.stats {
                m.copy_(r);
            }
        });
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
