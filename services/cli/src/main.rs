//! `inception`: the umbrella command for local use.
//!
//! * `inception demo` runs the whole pipeline on an embedded default: a
//!   nats-server child on a free loopback port, a local object store, and
//!   generated (or given) images; it ends with the evaluator's precision line.
//! * `inception generate-demo-data DIR` writes the demo's image folders.
//! * `inception classify --checkpoint latest IMAGE-OR-FOLDER…` prints top-k labels.
//! * `inception records verify|stats|inspect INPUT…` looks inside TFRecords.
//! * `inception report RUN` writes the run's HTML report from the store.
//!
//! `--config FILE` and `--set SECTION.KEY=VALUE` may come anywhere on the
//! command line, before or after the subcommand.

mod classify;
mod demo;
mod recipe;
mod records;

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
    /// Run the whole pipeline locally and print the final evaluation.
    Demo(demo::DemoArgs),
    /// Print the top-k labels of images with a checkpoint's weights.
    Classify(classify::ClassifyArgs),
    /// Look inside TFRecord files: verify checksums, count labels, print a record.
    Records(records::RecordsArgs),
    /// Write a run's HTML report (charts, latest evaluation, dataset, settings) from the store.
    Report(inception_cli::report::ReportArgs),
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
        Command::Demo(args) => {
            without_settings_flags(&cli.common, "demo").and_then(|()| demo::run(args)).map(|()| true)
        }
        Command::Classify(args) => classify::run(&cli.common, args),
        Command::Records(args) => records::run(&cli.common, args),
        Command::Report(args) => inception_cli::report::run(&cli.common, args),
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
        Err(e) if e.is::<inception_cli::UsageError>() => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("Error: {e:?}");
            ExitCode::FAILURE
        }
    }
}

/// The demo starts its services with `INCEPTION__…` variables: a
/// `--config` or `--set` would be silently ignored, so it is refused.
fn without_settings_flags(common: &CommonArgs, subcommand: &str) -> anyhow::Result<()> {
    if common.config.is_some() || !common.set.is_empty() {
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                format!(
                    "inception {subcommand} does not read --config or --set: give settings to the demo's services \
                     as INCEPTION__SECTION__KEY=VALUE variables"
                ),
            )
            .exit();
    }
    Ok(())
}
