//! Data-parallel training over several trainer processes (ranks) on
//! torch.distributed's c10d ([`inception_torch_ext::distributed`], Gloo).
//!
//! Every rank takes its own batches from the shared queue and computes its
//! gradients (over its own towers). Then, each step:
//! 1. a vote (one small all-reduce): does every rank hold a batch, does any
//!    want to stop (SIGTERM, early stopping)? A rank that waited a round
//!    ([`round_wait`]) without a batch votes "not yet": no step is taken and
//!    the holders keep theirs, so an empty queue never runs into the
//!    collective time-out, and all ranks stop at the same step.
//! 2. one buffer per rank, all-reduced in fixed-order buckets (several in
//!    flight at once) and divided by the world size (the gradients as they
//!    are copied in, before the sum): the gradients (the optimizer's order), the
//!    batch-norm moving statistics (so that they, and their moving averages,
//!    stay identical on every rank) and the loss, a divergence flag and the
//!    examples. Every rank then applies the same update to the same weights:
//!    they stay bit-identical.
//!
//! Rank 0 broadcasts its whole state at the start (weights, statistics,
//! moving averages, optimizer slots, counters) and the examples per epoch
//! the schedule counts, and alone writes checkpoints; at each checkpoint the
//! other ranks hand it the shards they trained on (lineage) through the store.

use inception_core::settings::{DistributedBackend, DistributedSettings};
use inception_core::Store;
use inception_model::checkpoint::ShardCount;
use inception_torch_ext::distributed::{
    nccl_built, Backend, DistributedError, GradientReducer, ProcessGroup, Rendezvous,
};
use std::str::FromStr;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

use crate::lineage::Tally;
use crate::state::TrainState;
use crate::TrainError;

/// Elements per all-reduce of the step's buffer: 4 Mi floats (16 MiB).
const BUCKET_ELEMENTS: i64 = 1 << 22;

/// The largest lineage object a rank hands rank 0.
const MAX_LINEAGE_OBJECT_BYTES: u64 = 64 << 20;

/// This process's place in a job, from the launcher's variables (torchrun,
/// a PyTorchJob: `WORLD_SIZE`, `RANK`, `MASTER_ADDR`, `MASTER_PORT`,
/// `TORCHELASTIC_USE_AGENT_STORE`), which win over `[distributed]`. None for
/// a job of one process.
pub fn rendezvous(
    settings: &DistributedSettings,
    var: impl Fn(&str) -> Option<String>,
) -> Result<Option<Rendezvous>, String> {
    let given = |name: &str| launcher_var(&var, name);
    let world_size = parsed("WORLD_SIZE", given("WORLD_SIZE"), settings.world_size)?;
    let rank = parsed("RANK", given("RANK"), settings.rank)?;
    if world_size == 0 || rank >= world_size {
        return Err(format!(
            "rank {rank} must be below the world size {world_size} (RANK and WORLD_SIZE, or distributed.rank \
             and distributed.world_size)"
        ));
    }
    if world_size == 1 {
        return Ok(None);
    }
    Ok(Some(Rendezvous {
        master_addr: given("MASTER_ADDR").unwrap_or_else(|| settings.master_addr.clone()),
        master_port: parsed("MASTER_PORT", given("MASTER_PORT"), settings.master_port)?,
        rank,
        world_size,
        timeout: settings.timeout,
        store_hosted_by_agent: given("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v.eq_ignore_ascii_case("true")),
    }))
}

/// This rank's place among the job's processes on its machine:
/// `LOCAL_RANK`, else `distributed.local_rank`.
pub fn local_rank(settings: &DistributedSettings, var: impl Fn(&str) -> Option<String>) -> Result<u32, String> {
    parsed("LOCAL_RANK", launcher_var(&var, "LOCAL_RANK"), settings.local_rank)
}

/// The collective library for a model on `device`: `auto` is NCCL on CUDA
/// where this binary has it built in, else Gloo (through host memory on
/// CUDA); `nccl` is refused where it cannot work, naming the setting.
pub fn backend_for(setting: DistributedBackend, device: Device) -> Result<Backend, String> {
    match setting {
        DistributedBackend::Gloo => Ok(Backend::Gloo),
        DistributedBackend::Auto if device.is_cuda() && nccl_built().is_ok() => Ok(Backend::Nccl),
        DistributedBackend::Auto => Ok(Backend::Gloo),
        DistributedBackend::Nccl if !device.is_cuda() => Err(format!(
            "distributed.backend = \"nccl\" needs a CUDA device; the model is on {device:?} (train.device)"
        )),
        DistributedBackend::Nccl => nccl_built()
            .map(|()| Backend::Nccl)
            .map_err(|why| format!("distributed.backend = \"nccl\": {why}; use \"gloo\" or \"auto\"")),
    }
}

/// A launcher's variable, trimmed; None when unset or blank.
fn launcher_var(var: &impl Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    var(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

fn parsed<T: FromStr>(name: &str, value: Option<String>, default: T) -> Result<T, String> {
    match value {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| format!("{name} = {v:?} is not a valid number")),
    }
}

/// How long a rank waits for a batch before it votes "not yet": a quarter
/// of the time-out, between 1 and 10 seconds.
pub fn round_wait(timeout: Duration) -> Duration {
    (timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(10))
}

/// What a rank says before a step.
#[derive(Debug, Clone, Copy)]
pub struct Vote {
    pub has_batch: bool,
    pub stop: bool,
}

/// What the ranks agreed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreement {
    /// Every rank holds a batch: take the step.
    pub ready: bool,
    /// Some rank wants to stop: all stop now.
    pub stop: bool,
}

/// A step's gradients averaged over the ranks, with the mean loss and the
/// examples of every rank's batch.
pub struct Reduced {
    pub gradients: Vec<Tensor>,
    pub mean_loss: f64,
    pub examples: u64,
}

/// The sums of the step buffer's tail over the ranks.
#[derive(Debug, Clone, Copy)]
struct Tail {
    loss_sum: f64,
    diverged_ranks: f32,
    examples: u64,
}

/// Whether the gradients' all-reduce overlaps the backward pass.
enum Overlap {
    /// Yes where it applies: decided at the first step.
    Wanted,
    Off,
    On(GradientReducer),
}

/// A rank's local outcome: gradients and loss, or its divergence (no
/// gradients); other errors end the step.
fn split_outcome(local: Result<(Vec<Tensor>, f64), TrainError>) -> Result<(Vec<Tensor>, f64, bool), TrainError> {
    match local {
        Ok((g, loss)) => Ok((g, loss, false)),
        Err(TrainError::Diverged { loss, .. }) => Ok((Vec::new(), loss, true)),
        Err(e) => Err(e),
    }
}

fn flat_of(state: &TrainState) -> Result<&crate::flat::FlatVariables, TrainError> {
    state
        .flat
        .as_ref()
        .ok_or_else(|| TrainError::Config("data-parallel training needs the model's variables in one buffer".into()))
}

/// The gradients times `scale` at their places in `buffer` (zeros where one
/// is undefined, or everywhere for none: a diverged rank's share); scaled
/// as they are copied, which saves a pass over the buffer after the sum.
fn pack_gradients(buffer: &Tensor, gradients: &[Tensor], scale: &Tensor, layout: &crate::flat::Layout) {
    for (i, g) in gradients.iter().enumerate() {
        let mut place = buffer.narrow(0, layout.offsets[i], layout.lens[i]);
        if g.defined() {
            let _ = g.reshape([-1]).mul_out(&place, scale);
        } else {
            let _ = place.zero_();
        }
    }
    if gradients.is_empty() {
        let _ = buffer.narrow(0, 0, layout.total).zero_();
    }
}

/// This rank's process group.
pub struct DataParallel {
    group: ProcessGroup,
    timeout: Duration,
    /// The step's buffer, kept from step to step: allocating and zeroing
    /// ~100 MB each step cost more than a tenth of the all-reduce.
    buffer: Option<Tensor>,
    /// The device the model computes on ([`DataParallel::on`]).
    compute: Device,
    overlap: Overlap,
}

impl From<DistributedError> for TrainError {
    fn from(e: DistributedError) -> Self {
        TrainError::Distributed(e.to_string())
    }
}

impl DataParallel {
    /// Meets the other ranks (waits up to the time-out for all of them),
    /// over `backend` for a model on `device`.
    pub fn join(rendezvous: &Rendezvous, backend: Backend, device: Device) -> Result<Self, TrainError> {
        tracing::info!(
            "rank {} of {}: meeting the others at {}:{} over {backend:?} (time-out {:?})",
            rendezvous.rank,
            rendezvous.world_size,
            rendezvous.master_addr,
            rendezvous.master_port,
            rendezvous.timeout
        );
        let group = tokio::task::block_in_place(|| match (backend, device) {
            (Backend::Nccl, Device::Cuda(index)) => ProcessGroup::nccl(rendezvous, index),
            _ => ProcessGroup::new(rendezvous, backend),
        })?;
        tracing::info!("rank {} of {}: process group up ({backend:?})", group.rank(), group.world_size());
        Ok(Self { group, timeout: rendezvous.timeout, buffer: None, compute: device, overlap: Overlap::Wanted })
    }

    /// Whether [`DataParallel::step`] overlaps the gradients' all-reduce
    /// with the backward pass (`distributed.overlap`; on by default): c10d's
    /// Reducer, DistributedDataParallel's engine, all-reduces each bucket of
    /// gradients as the backward pass makes it ready.
    pub fn with_overlap(mut self, on: bool) -> Self {
        self.overlap = if on { Overlap::Wanted } else { Overlap::Off };
        self
    }

    pub fn rank(&self) -> u32 {
        self.group.rank()
    }

    pub fn world_size(&self) -> u32 {
        self.group.world_size()
    }

    pub fn is_leader(&self) -> bool {
        self.rank() == 0
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn sum(&self, tensor: &mut Tensor) -> Result<(), TrainError> {
        self.timed_all_reduce(|group| group.all_reduce_sum(tensor))
    }

    /// [`DataParallel::sum`] of `buffer` in buckets of [`BUCKET_ELEMENTS`],
    /// several in flight at once (timed as one all-reduce).
    fn sum_in_buckets(&self, buffer: &Tensor) -> Result<(), TrainError> {
        let len = buffer.size()[0];
        let mut buckets: Vec<Tensor> = (0..len)
            .step_by(BUCKET_ELEMENTS as usize)
            .map(|at| buffer.narrow(0, at, BUCKET_ELEMENTS.min(len - at)))
            .collect();
        self.timed_all_reduce(|group| group.all_reduce_sum_each(&mut buckets))
    }

    /// Runs `all_reduce` off the async workers, into the all-reduce histogram.
    fn timed_all_reduce(
        &self,
        all_reduce: impl FnOnce(&ProcessGroup) -> Result<(), DistributedError>,
    ) -> Result<(), TrainError> {
        let started = Instant::now();
        tokio::task::block_in_place(|| all_reduce(&self.group))?;
        metrics::histogram!("inception_trainer_allreduce_seconds").record(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Where the group's collectives take their tensors from: host memory
    /// for Gloo, the compute device for a GPU backend.
    fn collective_device(&self, compute: Device) -> Device {
        match self.group.backend() {
            Backend::Gloo => Device::Cpu,
            _ => compute, // a GPU backend (NCCL)
        }
    }

    /// `tensor` made rank 0's, through the collective device's memory when
    /// it lives elsewhere.
    fn broadcast(&self, tensor: &Tensor) -> Result<(), TrainError> {
        let device = self.collective_device(tensor.device());
        if tensor.device() == device {
            let mut view = tensor.shallow_clone();
            return Ok(tokio::task::block_in_place(|| self.group.broadcast(&mut view, 0))?);
        }
        let mut moved = tensor.to_device(device);
        tokio::task::block_in_place(|| self.group.broadcast(&mut moved, 0))?;
        tch::no_grad(|| tensor.shallow_clone().copy_(&moved));
        Ok(())
    }

    /// Rank 0's `value` on every rank.
    pub fn leaders_value(&self, value: u64) -> Result<u64, TrainError> {
        let t = Tensor::from_slice(&[i64::try_from(value).unwrap_or(i64::MAX)]);
        self.broadcast(&t)?;
        Ok(u64::try_from(t.int64_value(&[0])).unwrap_or(0))
    }

    /// Makes every rank's state rank 0's: weights, batch-norm statistics,
    /// moving averages, optimizer slots (in name order) and counters.
    pub fn broadcast_state(&self, state: &mut TrainState) -> Result<(), TrainError> {
        let counters =
            [state.step, state.bn_updates, state.examples_seen].map(|c| i64::try_from(c).unwrap_or(i64::MAX));
        let t = Tensor::from_slice(&counters);
        self.broadcast(&t)?;
        let read = |i: i64| u64::try_from(t.int64_value(&[i])).unwrap_or(0);
        (state.step, state.bn_updates, state.examples_seen) = (read(0), read(1), read(2));
        state.optimizer.set_updates(state.step);
        for (_, tensor) in state.checkpoint_tensors() {
            self.broadcast(&tensor)?;
        }
        tracing::info!("rank {}: state of rank 0 at step {} taken", self.rank(), state.step);
        Ok(())
    }

    /// The vote before a step (see the module's description).
    pub fn agree(&self, vote: Vote) -> Result<Agreement, TrainError> {
        let votes = [f64::from(u8::from(vote.has_batch)), f64::from(u8::from(vote.stop))];
        let mut t = Tensor::from_slice(&votes).to_device(self.collective_device(self.compute));
        self.sum(&mut t)?;
        Ok(Agreement { ready: t.double_value(&[0]) >= f64::from(self.world_size()), stop: t.double_value(&[1]) > 0.0 })
    }

    /// One step's gradients on `images` and `labels`, averaged over the
    /// ranks with the batch-norm statistics, loss and examples: through the
    /// gradient reducer where it applies ([`DataParallel::with_overlap`]),
    /// else computed whole and then reduced ([`DataParallel::reduce`]).
    pub fn step(
        &mut self,
        state: &mut TrainState,
        images: &Tensor,
        labels: &Tensor,
        examples: u64,
    ) -> Result<Reduced, TrainError> {
        self.decide_overlap(state)?;
        let Overlap::On(reducer) = &self.overlap else {
            let local = state.guarded_gradients(images, labels);
            return self.reduce(state, local, examples);
        };
        let local = state.guarded_reduced_gradients(images, labels, reducer);
        let (gradients, loss, diverged) = split_outcome(local)?;
        // The gradients are averaged already: only the statistics and the tail follow.
        let (_, tail) = self.average(state, None, loss, diverged, examples)?;
        let mean_loss = self.settle_divergence(state, tail, loss, diverged)?;
        Ok(Reduced { gradients, mean_loss, examples: tail.examples })
    }

    /// Whether this run overlaps (decided at its first step): the reducer
    /// needs one tower per rank (the towers' gradients are summed after
    /// their backward passes) and a backend that takes the model's device.
    fn decide_overlap(&mut self, state: &TrainState) -> Result<(), TrainError> {
        if !matches!(self.overlap, Overlap::Wanted) {
            return Ok(());
        }
        let variables = state.optimizer.variables();
        let device = variables.first().map_or(Device::Cpu, Tensor::device);
        let why_not = if state.towers() > 1 {
            Some(format!("{} towers per rank", state.towers()))
        } else if self.collective_device(device) != device {
            Some(format!("{:?} takes no tensors on {device:?}", self.group.backend()))
        } else {
            None
        };
        self.overlap = match why_not {
            Some(why) => {
                tracing::info!("rank {}: gradients are all-reduced after the backward pass ({why})", self.rank());
                Overlap::Off
            }
            None => {
                let reducer = self.group.gradient_reducer(&variables)?;
                tracing::info!("rank {}: gradients are all-reduced during the backward pass", self.rank());
                Overlap::On(reducer)
            }
        };
        Ok(())
    }

    /// Averages this step's gradients (`local`, or its divergence) and
    /// batch-norm statistics over the ranks; every rank gets the same.
    /// Any rank's divergence is every rank's error.
    pub fn reduce(
        &mut self,
        state: &TrainState,
        local: Result<(Vec<Tensor>, f64), TrainError>,
        examples: u64,
    ) -> Result<Reduced, TrainError> {
        let (gradients, loss, diverged) = split_outcome(local)?;
        let (averaged, tail) = self.average(state, Some(&gradients), loss, diverged, examples)?;
        let mean_loss = self.settle_divergence(state, tail, loss, diverged)?;
        let flat = flat_of(state)?;
        let shapes: Vec<Vec<i64>> = state.optimizer.variables().iter().map(Tensor::size).collect();
        let gradients = shapes.iter().enumerate().map(|(i, shape)| flat.trainable.view(&averaged, i, shape)).collect();
        Ok(Reduced { gradients, mean_loss, examples: tail.examples })
    }

    /// All-reduces and averages, in the step's buffer: `gradients` when
    /// given (else only what follows them), the batch-norm statistics (which
    /// are then set to the average) and the tail (loss, divergence,
    /// examples). Returns the averaged part from the gradients on, or from
    /// the statistics on, and the tail's sums.
    fn average(
        &mut self,
        state: &TrainState,
        gradients: Option<&[Tensor]>,
        loss: f64,
        diverged: bool,
        examples: u64,
    ) -> Result<(Tensor, Tail), TrainError> {
        let flat = flat_of(state)?;
        let (grads_len, total) = (flat.trainable.total, flat.layout.total);
        let start = if gradients.is_some() { 0 } else { grads_len };
        let len = total - start;
        let device = self.collective_device(flat.all.device());
        let buffer = match self.buffer.take() {
            Some(b) if b.size() == [len + 3] && b.device() == device => b,
            _ => Tensor::zeros([len + 3], (Kind::Float, device)),
        };
        let world = f64::from(self.world_size());
        tch::no_grad(|| {
            if let Some(gradients) = gradients {
                let scale = Tensor::from(1.0 / world as f32);
                pack_gradients(&buffer, gradients, &scale, &flat.trainable);
            }
            let stats = flat.all.narrow(0, grads_len, total - grads_len);
            buffer.narrow(0, grads_len - start, total - grads_len).copy_(&stats);
            let tail = [if diverged { 0.0 } else { loss as f32 }, f32::from(u8::from(diverged)), examples as f32];
            buffer.narrow(0, len, 3).copy_(&Tensor::from_slice(&tail));
        });
        self.sum_in_buckets(&buffer)?;
        let sums: Vec<f32> = Vec::try_from(&buffer.narrow(0, len, 3).to_device(Device::Cpu)).unwrap_or_default();
        let tail = match sums[..] {
            [loss_sum, diverged_ranks, examples] => {
                Tail { loss_sum: f64::from(loss_sum), diverged_ranks, examples: examples.round() as u64 }
            }
            _ => return Err(TrainError::Distributed("the step's buffer lost its tail".into())),
        };
        let averaged = tch::no_grad(|| {
            // The gradients came scaled; the statistics are averaged here.
            let _ = buffer.narrow(0, grads_len - start, total - grads_len).g_div_scalar_(world);
            let averaged = buffer.narrow(0, 0, len).to_device(flat.all.device());
            if tail.diverged_ranks == 0.0 {
                let stats = averaged.narrow(0, grads_len - start, total - grads_len);
                flat.all.narrow(0, grads_len, total - grads_len).copy_(&stats);
            }
            averaged
        });
        // What is returned views it until the update is applied; the next
        // step writes it again.
        self.buffer = Some(buffer);
        Ok((averaged, tail))
    }

    /// The mean loss over the ranks, or the divergence of any.
    fn settle_divergence(&self, state: &TrainState, tail: Tail, loss: f64, diverged: bool) -> Result<f64, TrainError> {
        if tail.diverged_ranks > 0.0 {
            let loss = if diverged { loss } else { f64::NAN };
            tracing::error!(
                "{} of {} ranks diverged at step {}",
                tail.diverged_ranks,
                self.world_size(),
                state.step + 1
            );
            return Err(TrainError::Diverged { step: state.step, loss });
        }
        Ok(tail.loss_sum / f64::from(self.world_size()))
    }

    /// At a checkpoint: every rank but 0 hands its lineage since the last
    /// checkpoint to rank 0 through the store (`<checkpoints>/ranks/`), and
    /// starts counting afresh; rank 0 adds them to its own.
    pub async fn gather_lineage(
        &self,
        store: &Store,
        run: &str,
        step: u64,
        tally: &mut Tally,
    ) -> Result<(), TrainError> {
        let key =
            |rank: u32| format!("{}/ranks/step-{step}/rank-{rank}.json", inception_core::keys::checkpoint_dir(run));
        if !self.is_leader() {
            let (shards, unattributed) = tally.since_parent();
            let body = serde_json::json!({ "shards": shards, "unattributed": unattributed });
            if let Err(e) = store.put(&key(self.rank()), body.to_string().into()).await {
                tracing::error!("rank {}: cannot hand rank 0 the lineage of step {step}: {e}", self.rank());
            }
            tally.restart();
        }
        tokio::task::block_in_place(|| self.group.barrier())?;
        if self.is_leader() {
            for rank in 1..self.world_size() {
                match read_lineage(store, &key(rank)).await {
                    Ok((shards, unattributed)) => tally.absorb(&shards, unattributed),
                    Err(e) => tracing::error!("the lineage of rank {rank} at step {step} is lost: {e}"),
                }
                store.delete(&key(rank)).await.ok();
            }
        }
        Ok(())
    }
}

async fn read_lineage(store: &Store, key: &str) -> Result<(Vec<ShardCount>, u64), String> {
    #[derive(serde::Deserialize)]
    struct Handed {
        shards: Vec<ShardCount>,
        unattributed: u64,
    }
    let bytes = store.get_at_most(key, MAX_LINEAGE_OBJECT_BYTES).await.map_err(|e| e.to_string())?;
    let handed: Handed = serde_json::from_slice(&bytes).map_err(|e| format!("{key}: {e}"))?;
    Ok((handed.shards, handed.unattributed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings() -> DistributedSettings {
        inception_core::Settings::load(None, &[]).expect("defaults").distributed
    }

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn one_process_needs_no_group() {
        assert_eq!(rendezvous(&settings(), vars(&[])), Ok(None));
        assert_eq!(rendezvous(&settings(), vars(&[("WORLD_SIZE", "1"), ("RANK", "0")])), Ok(None));
    }

    #[test]
    fn the_launchers_variables_win_over_the_settings() {
        let r = rendezvous(
            &settings(),
            vars(&[
                ("WORLD_SIZE", "3"),
                ("RANK", "2"),
                ("MASTER_ADDR", "trainer-master-0"),
                ("MASTER_PORT", "23456"),
                ("TORCHELASTIC_USE_AGENT_STORE", "True"),
            ]),
        )
        .expect("valid")
        .expect("a group");
        assert_eq!((r.world_size, r.rank, r.master_port), (3, 2, 23456));
        assert_eq!(r.master_addr, "trainer-master-0");
        assert!(r.store_hosted_by_agent);
        assert_eq!(r.timeout, Duration::from_secs(300));
        let mut s = settings();
        (s.world_size, s.rank, s.master_port) = (2, 1, 29511);
        let r = rendezvous(&s, vars(&[])).expect("valid").expect("a group");
        assert_eq!((r.world_size, r.rank, r.master_port, r.master_addr.as_str()), (2, 1, 29511, "127.0.0.1"));
        assert!(!r.store_hosted_by_agent);
    }

    #[test]
    fn bad_variables_are_named() {
        let err = rendezvous(&settings(), vars(&[("WORLD_SIZE", "two")])).unwrap_err();
        assert!(err.contains("WORLD_SIZE = \"two\""), "{err}");
        let err = rendezvous(&settings(), vars(&[("WORLD_SIZE", "2"), ("RANK", "2")])).unwrap_err();
        assert!(err.contains("rank 2 must be below the world size 2"), "{err}");
        let err = rendezvous(&settings(), vars(&[("WORLD_SIZE", "2"), ("MASTER_PORT", "70000")])).unwrap_err();
        assert!(err.contains("MASTER_PORT"), "{err}");
        assert_eq!(local_rank(&settings(), vars(&[("LOCAL_RANK", "3")])), Ok(3));
        assert_eq!(local_rank(&settings(), vars(&[])), Ok(0));
        let err = local_rank(&settings(), vars(&[("LOCAL_RANK", "-1")])).unwrap_err();
        assert!(err.contains("LOCAL_RANK"), "{err}");
    }

    #[test]
    fn the_backend_follows_the_device() {
        assert_eq!(backend_for(DistributedBackend::Auto, Device::Cpu), Ok(Backend::Gloo));
        assert_eq!(backend_for(DistributedBackend::Gloo, Device::Cpu), Ok(Backend::Gloo));
        let err = backend_for(DistributedBackend::Nccl, Device::Cpu).unwrap_err();
        assert!(err.contains("distributed.backend") && err.contains("CUDA"), "{err}");
        if nccl_built().is_err() {
            let err = backend_for(DistributedBackend::Nccl, Device::Cuda(0)).unwrap_err();
            assert!(err.contains("not built"), "{err}");
            assert_eq!(backend_for(DistributedBackend::Auto, Device::Cuda(0)), Ok(Backend::Gloo));
        } else {
            assert_eq!(backend_for(DistributedBackend::Auto, Device::Cuda(0)), Ok(Backend::Nccl));
        }
    }

    #[test]
    fn rounds_are_a_quarter_of_the_time_out_within_bounds() {
        assert_eq!(round_wait(Duration::from_secs(300)), Duration::from_secs(10));
        assert_eq!(round_wait(Duration::from_secs(8)), Duration::from_secs(2));
        assert_eq!(round_wait(Duration::from_secs(1)), Duration::from_secs(1));
    }
}
