//! The training state: the model and its towers, the optimizer, the moving
//! averages and the counters a checkpoint keeps; one optimizer step on a batch.

use inception_core::settings::OptimizerSetting;
use inception_core::Settings;
use inception_model::inception::debiased_momentum;
use inception_model::loss::LossWeights;
use inception_model::precision::Precision;
use inception_model::{images_to_input, loss, InceptionV3, Mode, ModelConfig, TorchFailure};
use tch::{nn::VarStore, Device, Tensor};

use crate::ema::MovingAverages;
use crate::flat::FlatVariables;
use crate::optimizer::{Optimizer, Rule};
use crate::scaler::LossScaler;
use crate::towers::Replica;
use crate::TrainError;
use inception_torch_ext::distributed::GradientReducer;

/// Everything that changes as training goes.
pub struct TrainState {
    pub vs: VarStore,
    pub model: InceptionV3,
    pub optimizer: Optimizer,
    /// The loss's label smoothing and auxiliary weight (its L2 term is the optimizer's).
    pub loss: LossWeights,
    /// Decay of the batch-norm moving statistics (`train.batchnorm_decay`).
    pub bn_decay: f64,
    pub averages: MovingAverages,
    /// Towers 1..N (tower 0 is `model`); empty with one tower.
    pub replicas: Vec<Replica>,
    /// The master's variables in one buffer (see [`flat`]), if they could be.
    pub flat: Option<FlatVariables>,
    pub labels: Vec<String>,
    pub step: u64,
    pub bn_updates: u64,
    pub examples_seen: u64,
    /// Examples by shard since the last checkpoint, and its line's totals.
    pub lineage: crate::lineage::Tally,
    /// Towers run at once, one thread each (true when every tower has its
    /// own device; on one device they would only compete for its threads).
    pub concurrent_towers: bool,
    /// The arithmetic of the passes (`train.precision`, resolved).
    pub precision: Precision,
    /// fp16's loss scale; none in fp32 and bf16.
    pub scaler: Option<LossScaler>,
}

/// Moving averages of every variable, starting from their current values,
/// warming up to `max_decay`.
pub(crate) fn fresh_averages(vs: &VarStore, flat: Option<&FlatVariables>, max_decay: f64) -> MovingAverages {
    let averages = match flat {
        Some(f) => MovingAverages::over_flat(f),
        None => MovingAverages::new(vs.variables().into_iter().collect()),
    };
    averages.with_max_decay(max_decay)
}

/// The update rule `train.optimizer` names, with its constants.
pub fn rule_of(settings: &Settings) -> Rule {
    let t = &settings.train;
    match t.optimizer {
        OptimizerSetting::RmsProp => {
            Rule::RmsProp { decay: t.rmsprop_decay, momentum: t.rmsprop_momentum, epsilon: t.rmsprop_epsilon }
        }
        OptimizerSetting::Sgd => Rule::Sgd { momentum: t.sgd_momentum, nesterov: t.sgd_nesterov },
        OptimizerSetting::AdamW => Rule::AdamW { beta1: t.adamw_beta1, beta2: t.adamw_beta2, epsilon: t.adamw_epsilon },
    }
}

/// Gradients of one tower's variables and its loss (without the L2 term).
type TowerResult = (Vec<Tensor>, f64);

/// Forward and backward of one tower on its share of the batch, on the
/// tower's device. A non-finite loss is returned as is (with no gradients)
/// for the caller to report.
fn tower_pass(
    model: &InceptionV3,
    vars: &[Tensor],
    batch: (&Tensor, &Tensor),
    weights: &LossWeights,
    pass: (f64, Precision, f64),
) -> TowerResult {
    let device = vars.first().map_or(Device::Cpu, Tensor::device);
    let (scaled, value) = tower_loss(model, device, batch, weights, pass);
    if !value.is_finite() {
        return (Vec::new(), value);
    }
    (Tensor::run_backward(&[&scaled], vars, false, false), value)
}

/// A tower's forward pass on `device` and its loss: the loss to
/// differentiate (times the fp16 loss scale) and its value (unscaled,
/// without the L2 term, whose gradient the optimizer applies).
fn tower_loss(
    model: &InceptionV3,
    device: Device,
    (images, labels): (&Tensor, &Tensor),
    weights: &LossWeights,
    (bn_momentum, precision, loss_scale): (f64, Precision, f64),
) -> (Tensor, f64) {
    let x = images_to_input(&images.to_device(device));
    let y = labels.to_device(device);
    // Autocast covers the forward pass; the loss is computed in fp32.
    let (logits, aux) = model.forward_in(precision, &x, Mode::Train { bn_momentum });
    let total = loss::total_loss(weights, &logits, aux.as_ref(), &y, &[]);
    let value = total.double_value(&[]);
    let scaled = if loss_scale == 1.0 { total } else { total * loss_scale };
    (scaled, value)
}

impl TrainState {
    /// Tower 0 (the master) on `devices[0]`, one replica per further device.
    pub fn new(cfg: &ModelConfig, labels: Vec<String>, settings: &Settings, devices: &[Device]) -> Self {
        tch::manual_seed(settings.train.seed);
        let vs = VarStore::new(devices.first().copied().unwrap_or(Device::Cpu));
        let model = InceptionV3::new(&vs.root(), cfg);
        let mut trainable: Vec<(String, Tensor)> =
            vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        trainable.sort_by(|a, b| a.0.cmp(&b.0));
        let order: Vec<String> = trainable.iter().map(|(n, _)| n.clone()).collect();
        let flat = FlatVariables::new(&vs, &order);
        let t = &settings.train;
        let mut optimizer =
            Optimizer::with_rule(trainable, rule_of(settings), t.weight_decay, InceptionV3::is_regularized);
        if let Some(f) = &flat {
            optimizer = optimizer.with_flat_variables(f.trainable_part());
        }
        let averages = fresh_averages(&vs, flat.as_ref(), t.moving_average_decay);
        let replicas = devices.iter().skip(1).map(|d| Replica::new(&vs, cfg, *d, &order, flat.as_ref())).collect();
        let concurrent_towers = devices.len() > 1 && devices.iter().enumerate().all(|(i, d)| !devices[..i].contains(d));
        Self {
            vs,
            model,
            optimizer,
            loss: LossWeights { label_smoothing: t.label_smoothing, aux_weight: t.aux_loss_weight, weight_decay: 0.0 },
            bn_decay: t.batchnorm_decay,
            averages,
            replicas,
            flat,
            labels,
            step: 0,
            bn_updates: 0,
            examples_seen: 0,
            lineage: crate::lineage::Tally::new(&settings.dataset.name),
            concurrent_towers,
            precision: Precision::Fp32,
            scaler: None,
        }
    }

    /// Runs the passes in `precision` from now on (fp16 with a loss scaler).
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
        self.scaler = (precision == Precision::Fp16).then(LossScaler::default);
    }

    /// Forward and backward on every tower's share of the batch. Returns the
    /// gradients averaged over towers, on the master's device, in the
    /// optimizer's order (fresh tensors: nothing accumulates into `.grad`,
    /// which saves a zeroing and an addition pass per step), and the mean loss
    /// without the L2 term. Moves the batch-norm statistics (last tower's).
    pub fn compute_gradients(&mut self, images: &Tensor, labels: &Tensor) -> Result<(Vec<Tensor>, f64), TrainError> {
        let towers = self.towers();
        let (momentum, precision, loss_scale) = self.pass_settings();
        // Only the last tower moves the batch-norm statistics.
        let pass = |tower: usize| (if tower + 1 == towers { momentum } else { 0.0 }, precision, loss_scale);
        for r in &mut self.replicas {
            r.pull();
        }
        let parts: Vec<(Tensor, Tensor)> =
            images.chunk(towers as i64, 0).into_iter().zip(labels.chunk(towers as i64, 0)).collect();
        let master_vars = self.optimizer.variables();
        let (model, replicas, weights) = (&self.model, &mut self.replicas, self.loss);
        let results: Vec<TowerResult> = if self.concurrent_towers && towers > 1 {
            // One thread per replica, tower 0 on this one: devices work at once.
            std::thread::scope(|scope| {
                let handles: Vec<_> = replicas
                    .iter_mut()
                    .zip(parts.iter().skip(1))
                    .enumerate()
                    .map(|(k, (r, (x, y)))| {
                        let (x, y, m) = (x.shallow_clone(), y.shallow_clone(), pass(k + 1));
                        scope.spawn(move || tower_pass(&r.model, &r.trainable, (&x, &y), &weights, m))
                    })
                    .collect();
                let first = tower_pass(model, &master_vars, (&parts[0].0, &parts[0].1), &weights, pass(0));
                std::iter::once(first)
                    .chain(
                        handles.into_iter().map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))),
                    )
                    .collect()
            })
        } else {
            (0..towers)
                .map(|i| match i {
                    0 => tower_pass(model, &master_vars, (&parts[0].0, &parts[0].1), &weights, pass(0)),
                    _ => tower_pass(
                        &replicas[i - 1].model,
                        &replicas[i - 1].trainable,
                        (&parts[i].0, &parts[i].1),
                        &weights,
                        pass(i),
                    ),
                })
                .collect()
        };
        let mut sum: Vec<Tensor> = Vec::new();
        let mut losses = 0.0;
        for (grads, value) in results {
            if !value.is_finite() {
                return Err(TrainError::Diverged { step: self.step, loss: value });
            }
            losses += value;
            if sum.is_empty() {
                sum = grads;
                continue;
            }
            tch::no_grad(|| {
                for (s, g) in sum.iter_mut().zip(&grads) {
                    if s.defined() && g.defined() {
                        let _ = s.g_add_(&g.to_device(s.device()));
                    }
                }
            });
        }
        if towers > 1 {
            tch::no_grad(|| {
                for g in sum.iter_mut().filter(|g| g.defined()) {
                    let _ = g.g_div_scalar_(towers as f64);
                }
            });
            if let Some(last) = self.replicas.last_mut() {
                last.push_statistics();
            }
        }
        Ok((sum, losses / towers as f64))
    }

    /// The L2 term of the loss at the current weights (a pass over them:
    /// computed when a loss is reported, not every step).
    pub fn regularization_loss(&self) -> f64 {
        loss::l2_value(&self.optimizer.regularized_variables(), self.optimizer.l2_weight())
    }

    /// One optimizer update on `images` (`[N, S, S, 3]` u8) and `labels`,
    /// split over the towers. Returns the data loss before it (mean over
    /// towers, without the L2 term: add [`TrainState::regularization_loss`]).
    pub fn train_step(&mut self, images: &Tensor, labels: &Tensor, lr: f64) -> Result<f64, TrainError> {
        let (mut gradients, loss) = self.compute_gradients(images, labels)?;
        self.apply_update(lr, &mut gradients, images.size()[0] as u64);
        Ok(loss)
    }

    /// Applies `gradients` (from [`TrainState::compute_gradients`], averaged
    /// over ranks in data-parallel training) as one step of `examples`
    /// examples. fp16 gradients that overflowed are skipped (the step still
    /// counts); false then.
    pub fn apply_update(&mut self, lr: f64, gradients: &mut [Tensor], examples: u64) -> bool {
        if let Some(scaler) = &mut self.scaler {
            let scale = scaler.scale();
            if !scaler.unscale(gradients) {
                // fp16 overflowed: no update from this batch, a lower scale for the next.
                metrics::counter!("inception_trainer_skipped_steps_total").increment(1);
                tracing::warn!("step {}: fp16 gradients overflowed at loss scale {scale}; step skipped", self.step + 1);
                self.step += 1;
                self.examples_seen += examples;
                return false;
            }
        }
        self.optimizer.step(lr, gradients);
        self.step += 1;
        self.bn_updates += 1;
        self.averages.update(self.step);
        self.examples_seen += examples;
        true
    }

    /// [`TrainState::train_step`], with a libtorch failure (tch panics on a
    /// C++ exception, such as running out of GPU memory) returned as an
    /// error that says what failed, instead of unwinding through the service.
    pub fn guarded_step(&mut self, images: &Tensor, labels: &Tensor, lr: f64) -> Result<f64, TrainError> {
        let batch = images.size().first().copied().unwrap_or(0);
        self.guarded(batch, |state| state.train_step(images, labels, lr))
    }

    /// [`TrainState::compute_gradients`], guarded as [`TrainState::guarded_step`].
    pub fn guarded_gradients(&mut self, images: &Tensor, labels: &Tensor) -> Result<(Vec<Tensor>, f64), TrainError> {
        let batch = images.size().first().copied().unwrap_or(0);
        self.guarded(batch, |state| state.compute_gradients(images, labels))
    }

    /// Towers per step: the master and its replicas.
    pub fn towers(&self) -> usize {
        1 + self.replicas.len()
    }

    /// This step's tower pass: the batch-norm momentum (for a tower that
    /// moves the statistics), the precision and the fp16 loss scale.
    fn pass_settings(&self) -> (f64, Precision, f64) {
        let momentum = debiased_momentum(self.bn_decay, self.bn_updates + 1);
        (momentum, self.precision, self.scaler.as_ref().map_or(1.0, LossScaler::scale))
    }

    /// [`TrainState::guarded_gradients`] for one tower whose backward pass
    /// all-reduces its gradients as it goes (`reducer`, over the optimizer's
    /// variables): they come back averaged over the ranks, in the
    /// optimizer's order, as the variables' `.grad` (views of the reducer's
    /// buckets, zeroed here before each pass). A non-finite loss still runs
    /// the backward pass, whose collectives every rank must make, and is
    /// then returned as the divergence.
    pub fn guarded_reduced_gradients(
        &mut self,
        images: &Tensor,
        labels: &Tensor,
        reducer: &GradientReducer,
    ) -> Result<(Vec<Tensor>, f64), TrainError> {
        let batch = images.size().first().copied().unwrap_or(0);
        self.guarded(batch, |state| state.reduced_gradients(images, labels, reducer))
    }

    fn reduced_gradients(
        &mut self,
        images: &Tensor,
        labels: &Tensor,
        reducer: &GradientReducer,
    ) -> Result<(Vec<Tensor>, f64), TrainError> {
        let variables = self.optimizer.variables();
        // In place: after the first pass they are views of the reducer's
        // buckets (tch's zero_grad detaches, which views refuse).
        tch::no_grad(|| {
            for v in &variables {
                let mut grad = v.grad();
                if grad.defined() {
                    let _ = grad.zero_();
                }
            }
        });
        let device = variables.first().map_or(Device::Cpu, Tensor::device);
        reducer.before_forward()?;
        let (scaled, value) = tower_loss(&self.model, device, (images, labels), &self.loss, self.pass_settings());
        reducer.before_backward()?;
        reducer.backward(&scaled)?;
        if !value.is_finite() {
            return Err(TrainError::Diverged { step: self.step, loss: value });
        }
        let gradients: Vec<Tensor> = variables.iter().map(Tensor::grad).collect();
        if let Some(i) = gradients.iter().position(|g| !g.defined()) {
            return Err(TrainError::Distributed(format!("variable {i} got no gradient from the backward pass")));
        }
        Ok((gradients, value))
    }

    fn guarded<T>(
        &mut self,
        batch: i64,
        pass: impl FnOnce(&mut Self) -> Result<T, TrainError>,
    ) -> Result<T, TrainError> {
        let step = self.step + 1;
        inception_model::catch_torch(|| pass(self)).unwrap_or_else(|failure| {
            let devices = std::iter::once(self.vs.device())
                .chain(self.replicas.iter().map(|r| r.vs.device()))
                .map(|d| format!("{d:?}"))
                .collect::<Vec<_>>()
                .join(", ");
            Err(step_failure(failure, step, batch, devices))
        })
    }

    /// Named tensors for a checkpoint: model variables, their moving
    /// averages (`ema/…`) and the optimizer slots (`optimizer/…`).
    pub fn checkpoint_tensors(&self) -> Vec<(String, Tensor)> {
        let mut named: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        named.extend(self.averages.state());
        named.extend(self.optimizer.state());
        named.sort_by(|a, b| a.0.cmp(&b.0));
        named
    }
}

/// The error for a training step that libtorch failed: running out of
/// memory is told apart, since the fix is a setting.
pub fn step_failure(failure: TorchFailure, step: u64, batch: i64, devices: String) -> TrainError {
    if failure.out_of_memory {
        TrainError::OutOfMemory { devices, step, batch, message: failure.message }
    } else {
        TrainError::Libtorch { step, message: failure.message }
    }
}
