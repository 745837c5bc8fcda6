//! `inception-evaluator`: evaluates each new checkpoint.

use clap::Parser;
use inception_core::cli::{flag, start_service, CommonArgs};
use inception_core::nats::{self, Streams};
use inception_core::{telemetry, Store};

/// Reports precision@1 and recall@5 of each new checkpoint on the validation
/// shards (announcements, with polling as fall-back), or of the latest one
/// with --run-once.
#[derive(Debug, Parser)]
#[command(name = "inception-evaluator", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Evaluate the latest checkpoint once and exit (eval.run_once).
    #[arg(long)]
    run_once: bool,
    /// Name of the training run whose checkpoints to evaluate (train.run).
    #[arg(long)]
    run: Option<String>,
    /// Evaluate at most this many validation examples; 0 = all (eval.num_examples).
    #[arg(long)]
    num_examples: Option<u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init_logging();
    let args = Args::parse();
    let mut o = Vec::new();
    flag(&mut o, "train.run", &args.run);
    flag(&mut o, "eval.num_examples", &args.num_examples);
    if args.run_once {
        o.push(("eval.run_once".into(), "true".into()));
    }
    let settings = args.common.settings(o)?;
    inception_core::memory::retain_freed_memory_if(settings.eval.retain_freed_memory, "eval.retain_freed_memory");
    let service = start_service("evaluator", &settings.eval.metrics_addr).await?;
    let store = Store::open(&settings.store)?;
    let Ok(client) = nats::connect(&settings.nats, "inception-evaluator", &service.shutdown).await else {
        return Ok(());
    };
    let streams = Streams::new(client, &settings.nats.subject_prefix);
    streams.evals().await?;
    let run_once = settings.eval.run_once;
    let mut evaluator = inception_evaluator::Evaluator::new(settings, store)?;
    if run_once {
        service.readiness.set(true);
        if evaluator.run_once(&streams).await?.is_none() {
            std::process::exit(1);
        }
    } else {
        evaluator.watch(&streams, &service.readiness, &service.shutdown).await?;
    }
    Ok(())
}
