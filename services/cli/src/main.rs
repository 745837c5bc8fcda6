//! `inception`: the umbrella command for local use.
//!
//! * `inception train DIR` trains on a folder of photos: the services as
//!   processes around an embedded nats-server and a local store under a
//!   persistent work folder (`inception-work`); it ends with the command
//!   that classifies with the run's best checkpoint.
//! * `inception demo` is `inception train` on generated images (work folder `var/demo`).
//! * `inception generate-demo-data DIR` writes the demo's image folders.
//! * `inception classify --checkpoint latest IMAGE-OR-FOLDER…` prints top-k labels.
//! * `inception export CHECKPOINT --format torchscript|onnx|torchvision --output PATH`
//!   writes the network for other tools, with PATH.json describing its input.
//! * `inception records verify|stats|inspect INPUT…` looks inside TFRecords.
//! * `inception report RUN` writes the run's HTML report from the store.
//! * `inception lineage CHECKPOINT [--image KEY_OR_SHA256] [--json]` prints
//!   where a checkpoint comes from and whether an image was trained on.
//!
//! `--config FILE` and `--set SECTION.KEY=VALUE` may come anywhere on the
//! command line, before or after the subcommand.

mod classify;
mod demo;
mod export;
mod progress;
mod recipe;
mod records;
mod split;
mod train;

use clap::{CommandFactory, Parser, Subcommand};
use inception_core::cli::CommonArgs;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "inception", version, about = "Inception-v3 training pipeline: ingest, preprocess, train, evaluate")]
struct Cli {
    // Before the subcommand; classify and records take them too, and merge
    // all (clap's global arguments would keep only one level's `--set`s).
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train on a folder of photos (DIR/<label>/<image>) and print the command that classifies with the model.
    Train(train::TrainArgs),
    /// `inception train` on generated images: the whole pipeline locally.
    Demo(demo::DemoArgs),
    /// Print the top-k labels of images with a checkpoint's weights.
    Classify(classify::ClassifyArgs),
    /// Write a checkpoint as TorchScript, ONNX or a torchvision state dict, with a description of its input.
    Export(export::ExportArgs),
    /// Look inside TFRecord files: verify checksums, count labels, print a record.
    Records(records::RecordsArgs),
    /// Write a run's HTML report (charts, latest evaluation, dataset, settings) from the store.
    Report(inception_cli::report::ReportArgs),
    /// Print a checkpoint's line back to the first (parents, shards, examples) and whether an image was trained on.
    Lineage(inception_cli::lineage::LineageArgs),
    /// Write the demo's labelled image folders (train/ and validation/).
    GenerateDemoData {
        /// Output folder.
        dir: PathBuf,
        #[arg(long, default_value_t = 60)]
        train_per_class: usize,
        #[arg(long, default_value_t = 20)]
        validation_per_class: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
}

fn main() -> ExitCode {
    inception_core::telemetry::init_logging();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Train(args) => train::run(&cli.common, args).map(|()| true),
        Command::Demo(args) => demo::run(&cli.common, args).map(|()| true),
        Command::Classify(args) => classify::run(&cli.common, args),
        Command::Export(args) => export::run(&cli.common, args),
        Command::Records(args) => records::run(&cli.common, args),
        Command::Report(args) => inception_cli::report::run(&cli.common, args),
        Command::Lineage(args) => inception_cli::lineage::run(&cli.common, args),
        Command::GenerateDemoData { dir, train_per_class, validation_per_class, seed } => {
            without_settings_flags(&cli.common, "generate-demo-data").and_then(|()| {
                let n = inception_demo_data::generate(&dir, train_per_class, validation_per_class, seed)?;
                println!("wrote {n} images under {}", dir.display());
                Ok(true)
            })
        }
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        // A mistake in the command line or the settings (a bad key or value,
        // a malformed URL): exit 2, as the services do.
        Err(e) if e.is::<inception_cli::UsageError>() || inception_core::bootstrap::is_configuration_error(&e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("Error: {e:?}");
            ExitCode::FAILURE
        }
    }
}

/// A subcommand that reads no settings: a `--config` or `--set` would be
/// silently ignored, so it is refused.
fn without_settings_flags(common: &CommonArgs, subcommand: &str) -> anyhow::Result<()> {
    if common.config.is_some() || !common.set.is_empty() {
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                format!("inception {subcommand} does not read --config or --set"),
            )
            .exit();
    }
    Ok(())
}
