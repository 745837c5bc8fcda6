//! `inception`: the umbrella command for local use.
//!
//! * `inception demo` runs the whole pipeline on an embedded default: a
//!   nats-server child on a free loopback port, a local object store, and
//!   generated (or given) images; it ends with the evaluator's precision line.
//! * `inception generate-demo-data DIR` writes the demo's image folders.
//! * `inception classify --checkpoint latest IMAGE…` prints top-k labels.
//! * `inception records verify|stats|inspect FILE` looks inside TFRecords.

mod classify;
mod demo;
mod recipe;
mod records;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "inception", version, about = "Inception-v3 training pipeline: ingest, preprocess, train, evaluate")]
struct Cli {
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

fn main() -> anyhow::Result<()> {
    inception_core::telemetry::init_logging();
    match Cli::parse().command {
        Command::Demo(args) => demo::run(args),
        Command::Classify(args) => classify::run(args),
        Command::Records(args) => records::run(args),
        Command::GenerateDemoData { dir, train_per_class, validation_per_class, seed } => {
            let n = inception_demo_data::generate(&dir, train_per_class, validation_per_class, seed)?;
            println!("wrote {n} images under {}", dir.display());
            Ok(())
        }
    }
}
