//! `inception classify`: which label is this image? Uses the checkpoint's
//! moving-average weights and label names; a bad file is reported on its own
//! line (or JSON entry) and the others are still classified. Exits 1 when
//! any file failed.

use anyhow::Context;
use inception_core::cli::CommonArgs;
use inception_core::Store;
use inception_evaluator::classify::Classifier;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub(crate) struct ClassifyArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// `latest` (the run's newest checkpoint), `best` (the evaluator's best
    /// so far: highest precision@1) or the store key of a checkpoint's
    /// metadata, e.g. checkpoints/default/model.ckpt-900.json.
    #[arg(long, default_value = "latest")]
    checkpoint: String,
    /// Training run whose `latest` or `best` checkpoint to use (pipeline.run).
    #[arg(long)]
    run: Option<String>,
    /// How many labels to print per image.
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// One JSON document instead of text lines.
    #[arg(long)]
    json: bool,
    /// Images to classify (any format the ingest accepts).
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

pub(crate) fn run(args: ClassifyArgs) -> anyhow::Result<()> {
    let mut overrides = Vec::new();
    inception_core::cli::flag(&mut overrides, "pipeline.run", &args.run);
    let settings = args.common.settings(overrides)?;
    let store = Store::open(&settings.store)?;
    let device = inception_model::device_from_setting(settings.eval.device).map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let classifier = runtime
        .block_on(Classifier::load(&store, &settings.pipeline.run, &args.checkpoint, device))
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("cannot load checkpoint {:?} from {}", args.checkpoint, store.url()))?
        .with_central_fraction(settings.augment.eval_central_fraction);
    let results = classifier.classify_files(&args.images, args.top_k, settings.pipeline.max_image_pixels);
    if args.json {
        let doc = serde_json::json!({ "checkpoint_step": classifier.meta().step, "results": results });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        for r in &results {
            match (&r.predictions, &r.error) {
                (Some(p), _) => {
                    let labels: Vec<String> = p.iter().map(|p| format!("{} ({:.4})", p.label, p.probability)).collect();
                    println!("{}: {}", r.file, labels.join(", "));
                }
                (None, Some(e)) => eprintln!("{}: error: {e}", r.file),
                (None, None) => {}
            }
        }
    }
    if results.iter().any(|r| r.error.is_some()) {
        std::process::exit(1);
    }
    Ok(())
}
