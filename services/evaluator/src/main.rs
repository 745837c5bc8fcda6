//! `inception-evaluator`: evaluates each new checkpoint.

use clap::Parser;
use inception_core::bootstrap::{self, ServiceSpec};
use inception_core::cli::{flag, CommonArgs};

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
    /// Name of the training run whose checkpoints to evaluate (pipeline.run).
    #[arg(long)]
    run: Option<String>,
    /// Evaluate at most this many validation examples; 0 = all (eval.num_examples).
    #[arg(long)]
    num_examples: Option<u64>,
}

const SPEC: ServiceSpec = ServiceSpec {
    name: "evaluator",
    metrics_addr: |s| &s.eval.metrics_addr,
    retain_freed_memory: Some((|s| s.eval.retain_freed_memory, "eval.retain_freed_memory")),
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut o = Vec::new();
    flag(&mut o, "pipeline.run", &args.run);
    flag(&mut o, "eval.num_examples", &args.num_examples);
    if args.run_once {
        o.push(("eval.run_once".into(), "true".into()));
    }
    let Some(service) = bootstrap::start(&SPEC, &args.common, o).await? else { return Ok(()) };
    service.streams.evals().await?;
    let run_once = service.settings.eval.run_once;
    let mut evaluator = inception_evaluator::Evaluator::new(service.settings, service.store)?;
    if run_once {
        service.readiness.set(true);
        if evaluator.run_once(&service.streams).await?.is_none() {
            std::process::exit(1);
        }
    } else {
        evaluator.watch(&service.streams, &service.readiness, &service.shutdown).await?;
    }
    Ok(())
}
