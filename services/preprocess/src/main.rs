//! `inception-preprocess`: one preprocess worker; run as many as you like.

use clap::Parser;
use inception_core::bootstrap::{self, ServiceSpec};
use inception_core::cli::{flag, CommonArgs, LogArgs};
use std::process::ExitCode;

/// Reads announced train shards, distorts and batches images, and queues the
/// batches for the trainer (waiting when the queue is full).
#[derive(Debug, Parser)]
#[command(name = "inception-preprocess", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    logs: LogArgs,
    /// Worker identifier (preprocess.worker_id); default host name and pid.
    #[arg(long)]
    worker_id: Option<String>,
}

const SPEC: ServiceSpec = ServiceSpec {
    name: "preprocess",
    metrics_addr: |s| &s.preprocess.metrics_addr,
    metrics_addr_key: "preprocess.metrics_addr",
    retain_freed_memory: Some((|s| s.preprocess.retain_freed_memory, "preprocess.retain_freed_memory")),
    one_shot: |_| false,
};

fn main() -> ExitCode {
    let args = Args::parse();
    bootstrap::exit(bootstrap::block_on(run(args)))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut o = Vec::new();
    flag(&mut o, "preprocess.worker_id", &args.worker_id);
    let Some(service) = bootstrap::start(&SPEC, &args.common, &args.logs, o).await? else { return Ok(()) };
    service.readiness.set(true);
    let s = &service;
    inception_preprocess::run(&s.settings, &s.store, &s.streams, &s.readiness, &s.shutdown).await?;
    Ok(())
}
