//! `inception-evaluator`: evaluates each new checkpoint.

use clap::Parser;
use inception_core::bootstrap::{self, ServiceSpec};
use inception_core::cli::{flag, CommonArgs, LogArgs};
use std::process::ExitCode;

/// Reports precision@1 and recall@5 of each new checkpoint on the validation
/// shards (announcements, with polling as fall-back), or of the latest one
/// with --run-once.
#[derive(Debug, Parser)]
#[command(name = "inception-evaluator", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    logs: LogArgs,
    /// Evaluate the latest checkpoint once and exit (eval.run_once); needs only the store, not NATS.
    #[arg(long)]
    run_once: bool,
    /// Name of the training run whose checkpoints to evaluate (pipeline.run).
    #[arg(long)]
    run: Option<String>,
    /// Evaluate at most this many validation examples; 0 = all (eval.num_examples).
    #[arg(long)]
    num_examples: Option<u64>,
    /// Serve metrics and health here (eval.metrics_addr); a --run-once run serves them only when asked.
    #[arg(long)]
    metrics_addr: Option<String>,
}

const SPEC: ServiceSpec = ServiceSpec {
    name: "evaluator",
    metrics_addr: |s| &s.eval.metrics_addr,
    metrics_addr_key: "eval.metrics_addr",
    retain_freed_memory: Some((|s| s.eval.retain_freed_memory, "eval.retain_freed_memory")),
    one_shot: |s| s.eval.run_once,
};

/// Exit status of a `--run-once` that found no checkpoint to evaluate.
const NO_CHECKPOINT: u8 = 1;

fn main() -> ExitCode {
    let args = Args::parse();
    match bootstrap::block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(NO_CHECKPOINT),
        Err(e) => bootstrap::exit(Err(e)),
    }
}

/// Ok(false): `--run-once` found no checkpoint.
async fn run(args: Args) -> anyhow::Result<bool> {
    let mut o = Vec::new();
    flag(&mut o, "pipeline.run", &args.run);
    flag(&mut o, "eval.num_examples", &args.num_examples);
    flag(&mut o, "eval.metrics_addr", &args.metrics_addr);
    if args.run_once {
        o.push(("eval.run_once".into(), "true".into()));
    }
    let local = bootstrap::start_local(&SPEC, &args.common, &args.logs, o).await?;
    if local.settings.eval.run_once {
        // The store is all a single evaluation needs.
        local.readiness.set(true);
        let mut evaluator = inception_evaluator::Evaluator::new(local.settings, local.store)?;
        return Ok(evaluator.run_once(None).await?.is_some());
    }
    let Some(service) = local.connect().await? else { return Ok(true) };
    service.streams.evals().await?;
    let mut evaluator = inception_evaluator::Evaluator::new(service.settings, service.store)?;
    evaluator.watch(&service.streams, &service.readiness, &service.shutdown).await?;
    Ok(true)
}
