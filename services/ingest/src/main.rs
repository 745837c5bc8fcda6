//! `inception-ingest`: one-shot conversion of image folders to TFRecord shards.

use anyhow::Context;
use clap::Parser;
use inception_core::cli::{flag, start_service, CommonArgs};
use inception_core::nats::{self, Streams};
use inception_core::{telemetry, Store};

/// Image folders (<label>/<image>) to TFRecord shards of tf.Example in the
/// object store, announced on NATS. Flags mirror build_image_data.py.
#[derive(Debug, Parser)]
#[command(name = "inception-ingest", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Folder of <label>/<image> training images (ingest.train_directory).
    #[arg(long)]
    train_directory: Option<String>,
    /// Folder of <label>/<image> validation images (ingest.validation_directory).
    #[arg(long)]
    validation_directory: Option<String>,
    /// One label per line; default: sorted sub-folder names (ingest.labels_file).
    #[arg(long)]
    labels_file: Option<String>,
    /// Object store URL to write shards to (store.url).
    #[arg(long)]
    output: Option<String>,
    /// Dataset name (dataset.name).
    #[arg(long)]
    dataset: Option<String>,
    #[arg(long)]
    train_shards: Option<u32>,
    #[arg(long)]
    validation_shards: Option<u32>,
    #[arg(long)]
    num_threads: Option<u32>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init_logging();
    let args = Args::parse();
    let mut o = Vec::new();
    flag(&mut o, "ingest.train_directory", &args.train_directory);
    flag(&mut o, "ingest.validation_directory", &args.validation_directory);
    flag(&mut o, "ingest.labels_file", &args.labels_file);
    flag(&mut o, "store.url", &args.output);
    flag(&mut o, "dataset.name", &args.dataset);
    flag(&mut o, "ingest.train_shards", &args.train_shards);
    flag(&mut o, "ingest.validation_shards", &args.validation_shards);
    flag(&mut o, "ingest.num_threads", &args.num_threads);
    let settings = args.common.settings(o)?;
    let service = start_service("ingest", &settings.ingest.metrics_addr).await?;
    let store = Store::open(&settings.store)?;
    let client = nats::connect(&settings.nats, "inception-ingest", &service.shutdown).await?;
    let streams = Streams::new(client.clone(), &settings.nats.subject_prefix);
    service.readiness.set(true);
    let reports = inception_ingest::run_once(&settings, &store, &streams, &service.shutdown)
        .await
        .context("ingest failed")?;
    for r in &reports {
        println!(
            "{}: {} images found, {} written to {} shards, {} skipped",
            r.split, r.found, r.written, r.shards.len(), r.skipped.len()
        );
        for (file, reason) in &r.skipped {
            println!("  skipped {file}: {reason}");
        }
    }
    client.flush().await.ok();
    Ok(())
}
