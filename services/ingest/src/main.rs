//! `inception-ingest`: image folders (or object store prefixes) to TFRecord
//! shards, once (like build_image_data.py) or continuously (`--incoming`).

use anyhow::Context;
use clap::Parser;
use inception_core::bootstrap::{self, ServiceSpec};
use inception_core::cli::{flag, CommonArgs};
use inception_ingest::continuous::{self, NatsAnnouncer};

/// Image folders (<label>/<image>) to TFRecord shards of tf.Example in the
/// object store, announced on NATS. Flags mirror build_image_data.py. Any
/// folder may also be an object store URL (s3://bucket/prefix, file:///dir).
#[derive(Debug, Parser)]
#[command(name = "inception-ingest", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Folder or URL of <label>/<image> training images (ingest.train_directory).
    #[arg(long)]
    train_directory: Option<String>,
    /// Folder or URL of <label>/<image> validation images (ingest.validation_directory).
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
    /// CSV of file,xmin,ymin,xmax,ymax boxes (ingest.bounding_box_file).
    #[arg(long)]
    bounding_box_file: Option<String>,
    /// Also write the JSON report of skipped files here (ingest.report_file).
    #[arg(long)]
    report: Option<String>,
    /// Keep running: watch this folder or URL for new <label>/<image> and
    /// write them as new shards (ingest.incoming). With --train-directory,
    /// the one-shot ingest runs first.
    #[arg(long)]
    incoming: Option<String>,
    /// Largest image in pixels (pipeline.max_image_pixels).
    #[arg(long)]
    max_image_pixels: Option<u64>,
    /// How kept RGB JPEGs are checked: markers (fast) or decode (every pixel) (ingest.jpeg_check).
    #[arg(long, value_parser = ["markers", "decode"])]
    jpeg_check: Option<String>,
}

const SPEC: ServiceSpec =
    ServiceSpec { name: "ingest", metrics_addr: |s| &s.ingest.metrics_addr, retain_freed_memory: None };

#[tokio::main]
async fn main() -> anyhow::Result<()> {
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
    flag(&mut o, "ingest.bounding_box_file", &args.bounding_box_file);
    flag(&mut o, "ingest.report_file", &args.report);
    flag(&mut o, "ingest.incoming", &args.incoming);
    flag(&mut o, "pipeline.max_image_pixels", &args.max_image_pixels);
    flag(&mut o, "ingest.jpeg_check", &args.jpeg_check);
    let Some(service) = bootstrap::start(&SPEC, &args.common, o).await? else { return Ok(()) };
    let (settings, store, streams, client) = (&service.settings, &service.store, &service.streams, &service.client);
    service.readiness.set(true);
    let continuous = !settings.ingest.incoming.is_empty();
    if !settings.ingest.train_directory.is_empty() || !continuous {
        let report =
            inception_ingest::run_once(settings, store, streams, &service.shutdown).await.context("ingest failed")?;
        for r in &report.splits {
            println!(
                "{}: {} images found, {} written to {} shards, {} skipped",
                r.split,
                r.found,
                r.written,
                r.shards.len(),
                r.skipped.len()
            );
            for s in &r.skipped {
                println!("  skipped {}: {} ({})", s.file, s.reason, s.result.as_str());
            }
        }
    }
    if continuous {
        streams.shards().await.context("cannot create the shard stream")?;
        let announcer = NatsAnnouncer { streams: streams.clone(), shutdown: service.shutdown.clone() };
        continuous::run(settings, store, &announcer, &service.shutdown).await.context("continuous ingest failed")?;
    }
    client.flush().await.ok();
    Ok(())
}
