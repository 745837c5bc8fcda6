//! `inception-trainer`: trains Inception-v3 from the batch queue.

use clap::Parser;
use inception_core::cli::{flag, start_service, CommonArgs};
use inception_core::nats::{self, Streams};
use inception_core::{telemetry, Store};

/// Trains Inception-v3 on batches from the preprocess workers, writing and
/// announcing checkpoints; resumes from the run's latest checkpoint.
#[derive(Debug, Parser)]
#[command(name = "inception-trainer", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Stop after this many steps (train.max_steps).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Name of the training run (train.run).
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init_logging();
    let args = Args::parse();
    let mut o = Vec::new();
    flag(&mut o, "train.max_steps", &args.max_steps);
    flag(&mut o, "train.run", &args.run);
    flag(&mut o, "train.device", &args.device);
    flag(&mut o, "train.num_gpus", &args.num_gpus);
    flag(&mut o, "train.pretrained_checkpoint", &args.pretrained_checkpoint);
    if args.fine_tune {
        o.push(("train.fine_tune".into(), "true".into()));
    }
    let settings = args.common.settings(o)?;
    inception_core::memory::retain_freed_memory_if(settings.train.retain_freed_memory, "train.retain_freed_memory");
    let service = start_service("trainer", &settings.train.metrics_addr).await?;
    let store = Store::open(&settings.store)?;
    let Ok(client) = nats::connect(&settings.nats, "inception-trainer", &service.shutdown).await else {
        return Ok(());
    };
    let streams = Streams::new(client, &settings.nats.subject_prefix);
    service.readiness.set(true);
    let step = inception_trainer::run(&settings, &store, &streams, &service.shutdown).await?;
    tracing::info!("trainer stopped at step {step}");
    Ok(())
}
