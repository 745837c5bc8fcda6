//! `inception-ingest`: image folders (or object store prefixes) to TFRecord
//! shards, once (like build_image_data.py) or continuously (`--incoming`).

use anyhow::Context;
use clap::Parser;
use inception_core::bootstrap::{self, ServiceSpec};
use inception_core::cli::{flag, CommonArgs, LogArgs};
use inception_ingest::continuous::{self, NatsAnnouncer, NotAnnounced};
use inception_ingest::RunReport;
use std::process::ExitCode;

/// Image folders (<label>/<image>) to TFRecord shards of tf.Example in the
/// object store, announced on NATS. Flags mirror build_image_data.py. Any
/// folder may also be an object store URL (s3://bucket/prefix, file:///dir).
#[derive(Debug, Parser)]
#[command(name = "inception-ingest", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    logs: LogArgs,
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
    /// Write the shards to the store without announcing them: no NATS needed (ingest.announce = false).
    #[arg(long, conflicts_with = "announce_only")]
    no_announce: bool,
    /// Write nothing: announce the dataset's shards already in the store, with the records each holds.
    #[arg(long, conflicts_with_all = ["incoming", "train_directory"])]
    announce_only: bool,
    /// Serve metrics and health here (ingest.metrics_addr); a one-shot run serves them only when asked.
    #[arg(long)]
    metrics_addr: Option<String>,
}

const SPEC: ServiceSpec = ServiceSpec {
    name: "ingest",
    metrics_addr: |s| &s.ingest.metrics_addr,
    metrics_addr_key: "ingest.metrics_addr",
    retain_freed_memory: None,
    // Continuous ingest runs until stopped; everything else exits when done.
    one_shot: |s| s.ingest.incoming.is_empty(),
};

fn main() -> ExitCode {
    let args = Args::parse();
    bootstrap::exit(bootstrap::block_on(run(args)))
}

async fn run(args: Args) -> anyhow::Result<()> {
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
    flag(&mut o, "ingest.metrics_addr", &args.metrics_addr);
    if args.no_announce {
        o.push(("ingest.announce".into(), "false".into()));
    }
    let local = bootstrap::start_local(&SPEC, &args.common, &args.logs, o).await?;
    if args.announce_only {
        return announce_only(local).await;
    }
    if !local.settings.ingest.announce {
        // One-shot only (continuous ingest with announce = false is refused
        // with the settings): the store is all it needs.
        local.readiness.set(true);
        let report =
            inception_ingest::run_once(&local.settings, &local.store, &NotAnnounced).await.context("ingest failed")?;
        print_report(&report);
        println!("shards not announced: run `inception-ingest --announce-only` (same settings) once NATS is up");
        return Ok(());
    }
    let Some(service) = local.connect().await? else { return Ok(()) };
    let (settings, store, streams, client) = (&service.settings, &service.store, &service.streams, &service.client);
    service.readiness.set(true);
    streams.shards().await.context("cannot create the shard stream")?;
    let announcer = NatsAnnouncer { streams: streams.clone(), shutdown: service.shutdown.clone() };
    let continuous = !settings.ingest.incoming.is_empty();
    if !settings.ingest.train_directory.is_empty() || !continuous {
        let report = inception_ingest::run_once(settings, store, &announcer).await.context("ingest failed")?;
        print_report(&report);
    }
    if continuous {
        continuous::run(settings, store, &announcer, &service.shutdown).await.context("continuous ingest failed")?;
    }
    client.flush().await.ok();
    Ok(())
}

/// `--announce-only`: the shards in the store, announced on NATS.
async fn announce_only(local: bootstrap::Local) -> anyhow::Result<()> {
    let Some(service) = local.connect().await? else { return Ok(()) };
    service.streams.shards().await.context("cannot create the shard stream")?;
    let announcer = NatsAnnouncer { streams: service.streams.clone(), shutdown: service.shutdown.clone() };
    let done = inception_ingest::announce::announce_stored(&service.settings, &service.store, &announcer)
        .await
        .context("announcing the stored shards failed")?;
    println!("announced {} shards ({} records)", done.shards.len(), done.records);
    for key in &done.empty {
        println!("  not announced {key}: it holds no record");
    }
    service.client.flush().await.ok();
    Ok(())
}

fn print_report(report: &RunReport) {
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
