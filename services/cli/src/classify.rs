//! `inception classify`: which label is this image? Uses the checkpoint's
//! moving-average weights and label names; never prints the background
//! class. The checkpoint is `latest` or `best` of a run, a store key, or a
//! local metadata file (the weights are read from beside it). Images are
//! files or folders (every image in them); a file that cannot be read
//! (a FIFO or device, one over --max-file-bytes) or classified is reported
//! on its own line (or JSON entry) and the others are still classified.
//! Returns false (exit status 1) when any file failed.

use anyhow::Context;
use inception_cli::input;
use inception_cli::UsageError;
use inception_core::cli::CommonArgs;
use inception_core::settings::StoreSettings;
use inception_core::{Settings, Store};
use inception_evaluator::classify::{Classified, Classifier, Prediction};
use inception_model::checkpoint::{CheckpointMeta, MAX_METADATA_BYTES};
use inception_model::precision::Precision;
use std::path::{Path, PathBuf};

/// Default of `--max-file-bytes`: well above a photo; a 100-megapixel PNG
/// (`pipeline.max_image_pixels`) can be 300 MB.
const DEFAULT_MAX_IMAGE_BYTES: u64 = 512 << 20;

/// The most a local checkpoint's weights may have: a model at the largest
/// depth multiplier (4: about 350 million weights) with its moving averages
/// and optimizer slots.
const MAX_WEIGHTS_BYTES: u64 = 16 << 30;

/// Extensions of weight files, which are given in place of the metadata by mistake.
const WEIGHTS_EXTENSIONS: [&str; 6] = ["safetensors", "ot", "pt", "pth", "bin", "ckpt"];

/// Extensions of the images classified in a folder (the formats decoded).
const IMAGE_EXTENSIONS: [&str; 8] = ["jpg", "jpeg", "png", "gif", "bmp", "webp", "tif", "tiff"];

#[derive(Debug, clap::Args)]
pub(crate) struct ClassifyArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// `latest` (the run's newest checkpoint), `best` (the evaluator's best
    /// so far: highest precision@1), the store key of a checkpoint's
    /// metadata (checkpoints/default/model.ckpt-900.json), or a local copy
    /// of that file with its .safetensors beside it.
    #[arg(long, default_value = "latest")]
    checkpoint: String,
    /// Training run whose `latest` or `best` checkpoint to use (pipeline.run).
    #[arg(long)]
    run: Option<String>,
    /// How many labels to print per image (at least 1).
    #[arg(long, default_value_t = 5, value_parser = at_least_one)]
    top_k: usize,
    /// One JSON document instead of text lines.
    #[arg(long)]
    json: bool,
    /// Larger image files are refused by name, unread.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_IMAGE_BYTES)]
    max_file_bytes: u64,
    /// Images (any format the ingest accepts), or folders: every image in
    /// one (by extension), in name order; folders inside it are not entered.
    #[arg(required = true, value_name = "IMAGE_OR_FOLDER")]
    images: Vec<PathBuf>,
}

/// `outer`: the `--config` and `--set` given before the subcommand.
pub(crate) fn run(outer: &CommonArgs, args: ClassifyArgs) -> anyhow::Result<bool> {
    let mut overrides = Vec::new();
    inception_core::cli::flag(&mut overrides, "pipeline.run", &args.run);
    let settings = inception_cli::merged_settings_flags(&[outer, &args.common]).settings(overrides)?;
    let classifier = load(&settings, &args.checkpoint)?.with_central_fraction(settings.augment.eval_central_fraction);
    let top_k = args.top_k;
    let results: Vec<Classified> = images(&args.images)
        .into_iter()
        .map(|file| classify(&classifier, file, top_k, args.max_file_bytes, settings.pipeline.max_image_pixels))
        .collect();
    if args.json {
        let doc = serde_json::json!({
            "checkpoint": args.checkpoint,
            "checkpoint_step": classifier.meta().step,
            "results": results,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print_text(&results);
    }
    Ok(results.iter().all(|r| r.error.is_none()))
}

fn print_text(results: &[Classified]) {
    for r in results {
        match (&r.predictions, &r.error) {
            (Some(p), _) => {
                let labels: Vec<String> = p.iter().map(|p| format!("{} ({:.4})", p.label, p.probability)).collect();
                println!("{}: {}", r.file, labels.join(", "));
            }
            // Every reason starts with the file's name.
            (None, Some(e)) => eprintln!("{e}"),
            (None, None) => {}
        }
    }
}

fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1: how many labels to print per image".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{s:?} is not a whole number: {e}")),
    }
}

/// The checkpoint `checkpoint` names, loaded on the configured device.
fn load(settings: &Settings, checkpoint: &str) -> anyhow::Result<Classifier> {
    let device = inception_model::device_from_setting(settings.eval.device).map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let located = runtime.block_on(locate(settings, checkpoint))?;
    let precision =
        Precision::resolve(settings.eval.precision, device, "eval.precision").map_err(anyhow::Error::msg)?;
    let classifier = runtime
        .block_on(Classifier::load(&located.store, &settings.pipeline.run, &located.key, device))
        .map_err(anyhow::Error::msg)
        .with_context(|| located.cannot_load(checkpoint))?;
    Ok(classifier.with_precision(precision))
}

/// Where the checkpoint a `--checkpoint` argument names is: a store that
/// holds it, and what names it there (`latest`, `best` or a metadata key,
/// for [`inception_evaluator::classify::metadata_key`]).
pub(crate) struct Located {
    pub(crate) store: Store,
    pub(crate) key: String,
    /// Whether it is a local metadata file (copied into a memory store).
    local: bool,
}

impl Located {
    /// "cannot load checkpoint X at <store url>", for an error's context.
    pub(crate) fn cannot_load(&self, checkpoint: &str) -> String {
        let at = if self.local { "" } else { self.store.url() };
        format!("cannot load checkpoint {checkpoint} {at}").trim_end().to_string()
    }
}

/// Finds the checkpoint `checkpoint` names: `latest` or `best` of the
/// run, a store key, or a local metadata file (its weights beside it).
pub(crate) async fn locate(settings: &Settings, checkpoint: &str) -> anyhow::Result<Located> {
    let path = Path::new(checkpoint);
    // `latest` and `best` are the run's pointers even if such a file is here.
    let local = !matches!(checkpoint, "latest" | "best") && std::fs::symlink_metadata(path).is_ok();
    let (store, key) = if local {
        tracing::debug!(checkpoint, "a local checkpoint file");
        local_checkpoint(settings, path).await?
    } else {
        (Store::open(&settings.store)?, checkpoint.to_string())
    };
    Ok(Located { store, key, local })
}

/// A store that holds the checkpoint whose metadata is the local file
/// `path`, its weights read from beside it, and the metadata's key in it.
/// The metadata names its weights by their store key; only the file name
/// is used here, so a checkpoint copied out of the store loads as well.
async fn local_checkpoint(settings: &Settings, path: &Path) -> anyhow::Result<(Store, String)> {
    refuse_weights_or_folder(path)?;
    let bytes = input::read(path, MAX_METADATA_BYTES)?;
    let meta: CheckpointMeta = serde_json::from_slice(&bytes).map_err(|e| {
        UsageError(format!(
            "{} is not a checkpoint's metadata file (model.ckpt-<step>.json, written by the trainer): {e}",
            path.display()
        ))
    })?;
    let weights_name = Path::new(&meta.weights)
        .file_name()
        .with_context(|| format!("{}: its weights {:?} have no file name", path.display(), meta.weights))?;
    let weights_path = path.parent().unwrap_or(Path::new("")).join(weights_name);
    let weights = input::read(&weights_path, MAX_WEIGHTS_BYTES)
        .with_context(|| format!("{} keeps its weights in {}, expected beside it", path.display(), meta.weights))?;
    let store = Store::open(&StoreSettings { url: "memory:///".into(), ..settings.store.clone() })?;
    let key = path.file_name().map_or_else(|| "metadata.json".into(), |n| n.to_string_lossy().into_owned());
    store.put(&meta.weights, weights.into()).await?;
    store.put(&key, bytes.into()).await?;
    Ok((store, key))
}

/// A weights file or a folder given where a metadata file belongs: says which file to give.
fn refuse_weights_or_folder(path: &Path) -> Result<(), UsageError> {
    if path.is_dir() {
        return Err(UsageError(format!(
            "{} is a folder: give a checkpoint's metadata file (model.ckpt-<step>.json) in it",
            path.display()
        )));
    }
    let extension = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    if !extension.is_some_and(|e| WEIGHTS_EXTENSIONS.contains(&e.as_str())) {
        return Ok(());
    }
    let metadata = path.with_extension("json");
    let missing =
        if metadata.is_file() { "" } else { "; there is none there yet: copy it from the store's checkpoints/<run>/" };
    Err(UsageError(format!(
        "{} holds a checkpoint's weights: give its metadata file {}, which names the labels and the model's shape \
         (the trainer writes it beside the weights){missing}",
        path.display(),
        metadata.display()
    )))
}

/// One file to classify, or why it is not.
type Input = (PathBuf, Option<String>);

/// The files the arguments name, in order: a folder's images sorted by name.
fn images(args: &[PathBuf]) -> Vec<Input> {
    let mut files = Vec::new();
    for arg in args {
        match std::fs::metadata(arg) {
            Ok(meta) if meta.is_dir() => files.extend(folder_images(arg)),
            Ok(_) => files.push((arg.clone(), None)),
            Err(e) => files.push((arg.clone(), Some(format!("{}: cannot read it: {e}", arg.display())))),
        }
    }
    files
}

fn folder_images(dir: &Path) -> Vec<Input> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => return vec![(dir.to_path_buf(), Some(format!("{}: cannot list it: {e}", dir.display())))],
    };
    let is_image = |p: &Path| {
        let extension = p.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        extension.is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str()))
    };
    // Sub-folders are not entered; files not named as images are left alone.
    let mut images: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
        .map(|e| dir.join(e.file_name()))
        .filter(|p| is_image(p))
        .collect();
    images.sort();
    tracing::debug!(folder = %dir.display(), images = images.len(), "images in a folder");
    images.into_iter().map(|p| (p, None)).collect()
}

/// Classifies one file after checking it is a regular file within the
/// bound; the background class (index 0) is dropped from the top k.
fn classify(
    classifier: &Classifier,
    (path, refused): Input,
    top_k: usize,
    max_bytes: u64,
    max_pixels: u64,
) -> Classified {
    let file = path.display().to_string();
    let failed = |error| Classified { file: file.clone(), predictions: None, error: Some(error) };
    if let Some(error) = refused {
        return failed(error);
    }
    if let Err(refused) = input::check(&path, max_bytes) {
        return failed(refused.to_string());
    }
    match classifier.classify_file(&path, top_k.saturating_add(1), max_pixels) {
        Ok(p) => Classified { file, predictions: Some(without_background(p, top_k)), error: None },
        Err(e) => failed(format!("{file}: error: {e}")),
    }
}

fn without_background(predictions: Vec<Prediction>, top_k: usize) -> Vec<Prediction> {
    predictions.into_iter().filter(|p| p.index != 0).take(top_k).collect()
}
