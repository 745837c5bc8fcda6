//! `inception-preprocess`: one preprocess worker; run as many as you like.

use clap::Parser;
use inception_core::cli::{flag, start_service, CommonArgs};
use inception_core::nats::{self, Streams};
use inception_core::{telemetry, Store};

/// Reads announced train shards, distorts and batches images, and queues the
/// batches for the trainer (waiting when the queue is full).
#[derive(Debug, Parser)]
#[command(name = "inception-preprocess", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Worker identifier (preprocess.worker_id); default host name and pid.
    #[arg(long)]
    worker_id: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init_logging();
    let args = Args::parse();
    let mut o = Vec::new();
    flag(&mut o, "preprocess.worker_id", &args.worker_id);
    let settings = args.common.settings(o)?;
    inception_core::memory::retain_freed_memory_if(
        settings.preprocess.retain_freed_memory,
        "preprocess.retain_freed_memory",
    );
    let service = start_service("preprocess", &settings.preprocess.metrics_addr).await?;
    let store = Store::open(&settings.store)?;
    let Ok(client) = nats::connect(&settings.nats, "inception-preprocess", &service.shutdown).await else {
        return Ok(()); // stopped before NATS was reachable
    };
    let streams = Streams::new(client, &settings.nats.subject_prefix);
    service.readiness.set(true);
    inception_preprocess::run(&settings, &store, &streams, &service.shutdown).await?;
    Ok(())
}
