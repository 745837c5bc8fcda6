//! `inception-bench`: throughput on random data (no NATS, no store).
//! Training: the whole step as the trainer runs it (u8 input scaling, forward
//! with the auxiliary head, loss, backward, TF RMSProp, moving averages).
//! `--eval`: the evaluator's eval-mode forward. `scripts/bench-train.sh
//! [--eval]` runs it beside PyTorch (torchvision). Started as one rank of
//! several (`WORLD_SIZE`, `RANK`, `MASTER_ADDR`, `MASTER_PORT`, as the
//! trainer reads them), each rank takes `batch_size / WORLD_SIZE` images and
//! the step is the data-parallel one, its all-reduce timed apart
//! (`scripts/bench-distributed.sh`).

use clap::Parser;
use inception_core::Settings;
use inception_model::ModelConfig;
use inception_trainer::TrainState;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(Debug, Parser)]
#[command(name = "inception-bench")]
struct Args {
    #[arg(long, default_value_t = 299)]
    image_size: i64,
    #[arg(long, default_value_t = 32)]
    batch_size: i64,
    #[arg(long, default_value_t = 1.0)]
    depth_multiplier: f64,
    /// Labels (the model has one more output: background).
    #[arg(long, default_value_t = 1000)]
    labels: usize,
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Intra-op threads (0 = libtorch's default).
    #[arg(long, default_value_t = 0)]
    threads: i32,
    /// Without the auxiliary head (torchvision's cannot run below 299 px).
    #[arg(long)]
    no_aux: bool,
    /// torchvision's average-pool arithmetic (padding counted).
    #[arg(long)]
    torchvision_pooling: bool,
    /// Also time the phases of a step: forward+backward, optimizer, moving averages.
    #[arg(long)]
    breakdown: bool,
    /// Time evaluation instead (eval-mode forward, no gradients), as the evaluator runs it.
    #[arg(long)]
    eval: bool,
    /// auto, cpu or cuda:N.
    #[arg(long, default_value = "auto")]
    device: inception_core::settings::DeviceSetting,
    /// cuDNN's autotuner (the trainer's train.cudnn_benchmark; CUDA only).
    #[arg(long)]
    cudnn_benchmark: bool,
    /// glibc malloc's defaults instead of the services' retain_freed_memory.
    #[arg(long)]
    default_malloc: bool,
    /// auto, fp32, bf16 or fp16 (CUDA), as train.precision.
    #[arg(long, default_value = "fp32")]
    precision: String,
    /// Under WORLD_SIZE > 1: all-reduce the gradients after the backward
    /// pass (distributed.overlap = false), timing the all-reduce apart.
    #[arg(long)]
    no_overlap: bool,
    /// With --eval: keep batch norm apart from the convolutions instead of
    /// folding it in, as the evaluator, classify and inception-serve do.
    #[arg(long)]
    no_fold: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // As the trainer and evaluator do by default (train.retain_freed_memory).
    let retained = !args.default_malloc && inception_core::memory::retain_freed_memory();
    if args.threads > 0 {
        tch::set_num_threads(args.threads);
    }
    let device = inception_model::device_from_setting(args.device).map_err(anyhow::Error::msg)?;
    inception_model::set_cudnn_benchmark(device, args.cudnn_benchmark);
    let settings = Settings::defaults()?;
    let cfg = ModelConfig {
        num_classes: args.labels as i64 + 1,
        image_size: args.image_size,
        depth_multiplier: args.depth_multiplier,
        min_depth: 16,
        dropout: 0.2,
        aux_logits: !args.no_aux,
        avg_pool_count_include_pad: args.torchvision_pooling,
    };
    cfg.validate().map_err(anyhow::Error::msg)?;
    let labels = (1..=args.labels).map(|i| format!("class{i}")).collect();
    let mut state = TrainState::new(&cfg, labels, &settings, &[device]);
    let setting: inception_core::settings::PrecisionSetting =
        serde_json::from_value(serde_json::Value::String(args.precision.clone()))?;
    let precision =
        inception_model::precision::Precision::resolve(setting, device, "--precision").map_err(anyhow::Error::msg)?;
    state.set_precision(precision);
    let images =
        Tensor::randint(256, [args.batch_size, args.image_size, args.image_size, 3], (Kind::Uint8, Device::Cpu));
    let targets = Tensor::randint_low(1, args.labels as i64 + 1, [args.batch_size], (Kind::Int64, Device::Cpu));
    if args.eval {
        return bench_eval(&mut state, &images, &args, device, retained);
    }
    let job = inception_trainer::distributed::rendezvous(&settings.distributed, |k| std::env::var(k).ok())
        .map_err(anyhow::Error::msg)?;
    if let Some(rendezvous) = job {
        return bench_data_parallel(&mut state, &images, &targets, &args, &rendezvous);
    }
    for _ in 0..args.warmup {
        state.train_step(&images, &targets, 0.01)?;
    }
    let started = Instant::now();
    for _ in 0..args.steps {
        state.train_step(&images, &targets, 0.01)?;
    }
    let secs = started.elapsed().as_secs_f64() / args.steps as f64;
    println!(
        "ours   size={} batch={} aux={} threads={} device={:?} precision={} retain_freed_memory={retained} cudnn_benchmark={}: {:.2} img/s ({:.3} s/step)",
        args.image_size,
        args.batch_size,
        !args.no_aux,
        tch::get_num_threads(),
        device,
        state.precision,
        args.cudnn_benchmark,
        args.batch_size as f64 / secs,
        secs
    );
    if args.breakdown {
        breakdown(&mut state, &images, &targets, args.steps, device)?;
    }
    Ok(())
}

/// Data-parallel steps: this rank's share of the batch, the all-reduce
/// (packing the buffer included) timed apart; rank 0 prints the figures.
fn bench_data_parallel(
    state: &mut TrainState,
    images: &Tensor,
    targets: &Tensor,
    args: &Args,
    rendezvous: &inception_torch_ext::distributed::Rendezvous,
) -> anyhow::Result<()> {
    let device = state.vs.device();
    let backend =
        inception_trainer::distributed::backend_for(inception_core::settings::DistributedBackend::Auto, device)
            .map_err(anyhow::Error::msg)?;
    let mut group =
        inception_trainer::distributed::DataParallel::join(rendezvous, backend, device)?.with_overlap(!args.no_overlap);
    let world = i64::from(group.world_size());
    anyhow::ensure!(
        args.batch_size % world == 0,
        "--batch-size {} is not a multiple of WORLD_SIZE {world}",
        args.batch_size
    );
    let share = args.batch_size / world;
    let start = i64::from(group.rank()) * share;
    let (mine, my_targets) = (images.narrow(0, start, share), targets.narrow(0, start, share));
    group.broadcast_state(state)?;
    // Overlapped, the all-reduce runs inside the backward pass and is not
    // timed apart; else the reduction (packing included) is.
    // Per step: gradients (with the overlapped all-reduce), the reduction
    // after them, the update.
    let mut step = || -> anyhow::Result<[f64; 3]> {
        let t = Instant::now();
        let (mut reduced, computed, communication) = if args.no_overlap {
            let local = state.compute_gradients(&mine, &my_targets);
            let computed = t.elapsed().as_secs_f64();
            let t = Instant::now();
            (group.reduce(state, local, share as u64)?, computed, t.elapsed().as_secs_f64())
        } else {
            (group.step(state, &mine, &my_targets, share as u64)?, t.elapsed().as_secs_f64(), 0.0)
        };
        let t = Instant::now();
        state.apply_update(0.01, &mut reduced.gradients, reduced.examples);
        Ok([computed, communication, t.elapsed().as_secs_f64()])
    };
    for _ in 0..args.warmup {
        step()?;
    }
    let started = Instant::now();
    let mut phases = [0.0; 3];
    for _ in 0..args.steps {
        for (total, phase) in phases.iter_mut().zip(step()?) {
            *total += phase;
        }
    }
    let secs = started.elapsed().as_secs_f64() / args.steps as f64;
    let [computed, per_step, update] = phases.map(|p| p / args.steps as f64);
    if args.breakdown {
        eprintln!(
            "rank {}: phases per step: gradients {computed:.3} s, all-reduce after them {per_step:.3} s, update {update:.3} s",
            group.rank()
        );
    }
    if group.is_leader() {
        let all_reduce = if args.no_overlap {
            format!("all-reduce {per_step:.3} s/step, {:.1}% of the step", 100.0 * per_step / secs)
        } else {
            "all-reduce overlapped with the backward pass".to_string()
        };
        println!(
            "ours   ranks={world} size={} global_batch={} aux={} threads={} precision={}: {:.2} img/s ({:.3} s/step; {all_reduce})",
            args.image_size,
            args.batch_size,
            !args.no_aux,
            tch::get_num_threads(),
            state.precision,
            args.batch_size as f64 / secs,
            secs,
        );
    }
    Ok(())
}

fn bench_eval(
    state: &mut TrainState,
    images: &Tensor,
    args: &Args,
    device: Device,
    retained: bool,
) -> anyhow::Result<()> {
    use inception_model::{images_to_input, Mode};
    if !args.no_fold {
        state.model.fold_batch_norm();
    }
    let run = || {
        tch::no_grad(|| {
            let x = images_to_input(&images.to_device(device));
            state.model.forward_in(state.precision, &x, Mode::Eval).0.double_value(&[0, 0])
        })
    };
    for _ in 0..args.warmup {
        run();
    }
    let started = Instant::now();
    for _ in 0..args.steps {
        run();
    }
    let secs = started.elapsed().as_secs_f64() / args.steps as f64;
    println!(
        "ours   eval size={} batch={} threads={} device={:?} precision={} retain_freed_memory={retained} cudnn_benchmark={} batch_norm_folded={}: {:.2} img/s ({:.3} s/batch)",
        args.image_size, args.batch_size, tch::get_num_threads(), device, state.precision, args.cudnn_benchmark, !args.no_fold, args.batch_size as f64 / secs, secs
    );
    Ok(())
}

fn breakdown(
    state: &mut TrainState,
    images: &Tensor,
    targets: &Tensor,
    steps: usize,
    device: Device,
) -> anyhow::Result<()> {
    // CUDA work is queued: each phase is timed to the end of its kernels.
    let finish = || {
        if let Device::Cuda(index) = device {
            tch::Cuda::synchronize(index as i64);
        }
    };
    let (mut fb, mut opt, mut ema) = (0.0, 0.0, 0.0);
    for _ in 0..steps {
        let t = Instant::now();
        let (grads, _) = state.compute_gradients(images, targets)?;
        finish();
        fb += t.elapsed().as_secs_f64();
        let t = Instant::now();
        state.optimizer.step(0.01, &grads);
        finish();
        opt += t.elapsed().as_secs_f64();
        let t = Instant::now();
        state.averages.update(1000);
        finish();
        ema += t.elapsed().as_secs_f64();
    }
    let n = steps as f64;
    println!(
        "phases per step: forward+backward {:.3} s, optimizer {:.3} s, moving averages {:.3} s",
        fb / n,
        opt / n,
        ema / n
    );
    Ok(())
}
