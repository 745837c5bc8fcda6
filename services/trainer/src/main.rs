//! `inception-trainer`: trains Inception-v3 from the batch queue.

use clap::Parser;
use inception_core::bootstrap::{self, ServiceSpec};
use inception_core::cli::{flag, CommonArgs, LogArgs};
use std::process::ExitCode;

/// Trains Inception-v3 on batches from the preprocess workers, writing and
/// announcing checkpoints; resumes from the run's latest checkpoint.
#[derive(Debug, Parser)]
#[command(name = "inception-trainer", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    logs: LogArgs,
    /// Stop after this many steps (train.max_steps).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Name of the training run (pipeline.run).
    #[arg(long)]
    run: Option<String>,
    /// auto, cpu or cuda:N (train.device).
    #[arg(long)]
    device: Option<String>,
    /// Towers: split each batch over this many devices (train.num_gpus).
    #[arg(long)]
    num_gpus: Option<u32>,
    /// Start a new run from these weights: torchvision/timm .safetensors or
    /// .pth, or one of our checkpoints (train.pretrained_checkpoint).
    #[arg(long)]
    pretrained_checkpoint: Option<String>,
    /// Re-initialise the logits layers to train other classes (train.fine_tune).
    #[arg(long)]
    fine_tune: bool,
}

const SPEC: ServiceSpec = ServiceSpec {
    name: "trainer",
    metrics_addr: |s| &s.train.metrics_addr,
    metrics_addr_key: "train.metrics_addr",
    retain_freed_memory: Some((|s| s.train.retain_freed_memory, "train.retain_freed_memory")),
    one_shot: |_| false,
};

fn main() -> ExitCode {
    let args = Args::parse();
    bootstrap::exit(bootstrap::block_on(run(args)))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut o = Vec::new();
    flag(&mut o, "train.max_steps", &args.max_steps);
    flag(&mut o, "pipeline.run", &args.run);
    flag(&mut o, "train.device", &args.device);
    flag(&mut o, "train.num_gpus", &args.num_gpus);
    flag(&mut o, "train.pretrained_checkpoint", &args.pretrained_checkpoint);
    if args.fine_tune {
        o.push(("train.fine_tune".into(), "true".into()));
    }
    let Some(service) = bootstrap::start(&SPEC, &args.common, &args.logs, o).await? else { return Ok(()) };
    service.readiness.set(true);
    let s = &service;
    let step = inception_trainer::run(&s.settings, &s.store, &s.streams, &s.readiness, &s.shutdown)
        .await
        .map_err(configuration_errors_exit_2)?;
    tracing::info!("trainer stopped at step {step}");
    Ok(())
}

/// A setting the trainer finds unusable (a device that is not there, a
/// batch queue too small for the job) is a configuration error, exit status
/// 2 like the settings' own: restarting cannot help.
fn configuration_errors_exit_2(error: inception_trainer::TrainError) -> anyhow::Error {
    match error {
        inception_trainer::TrainError::Config(problem) => {
            inception_core::settings::SettingsError::Rejected(vec![problem]).into()
        }
        other => other.into(),
    }
}
