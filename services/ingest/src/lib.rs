//! Ingest: folders of `<label>/<image>` to sharded TFRecord files of
//! `tf.Example`, wire-compatible with `build_image_data.py`, written to the
//! object store and announced on NATS (`ShardReady`).
//!
//! A file that is not a usable image is skipped with a warning naming it and
//! counted in `inception_ingest_images_total{result="skipped"}`; the rest is
//! ingested. Shards are written with `PutMode::Create`, so a reader never
//! sees a partial shard and a re-run never replaces one.

pub mod demo;
pub mod labels;
pub mod records;
pub mod shards;

use bytes::Bytes;
use futures::StreamExt;
use inception_core::example::ImageExample;
use inception_core::nats::Streams;
use inception_core::shutdown::CancellationToken;
use inception_core::store::StoreError;
use inception_core::{keys, tfrecord, Settings, Store};
use inception_proto::pipeline::ShardReady;
use inception_proto::Message;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{path}: {message}")]
    Input { path: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Nats(#[from] inception_core::nats::NatsError),
    #[error("ingest worker failed: {0}")]
    Worker(String),
}

/// One image file found in an input folder.
#[derive(Debug, Clone)]
pub struct ImageFile {
    pub path: PathBuf,
    pub label: i64,
    pub text: String,
}

/// What one split produced.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SplitReport {
    pub split: String,
    pub found: usize,
    pub written: usize,
    pub skipped: Vec<(String, String)>,
    pub shards: Vec<String>,
}

/// build_image_data.py's seed (`random.seed(12345)`); our generator differs
/// from Python's, so the order is repeatable but not the same permutation.
pub const SHUFFLE_SEED: u64 = 12345;

/// Every file under `<dir>/<label>/` for each label, in label order, then
/// shuffled deterministically. Any file is a candidate (as the original's
/// glob `*`); hidden files are ignored.
pub fn find_image_files(dir: &Path, labels: &[String]) -> Result<Vec<ImageFile>, IngestError> {
    let mut files = Vec::new();
    for (i, text) in labels.iter().enumerate() {
        let folder = dir.join(text);
        let entries = match std::fs::read_dir(&folder) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!("no folder {} for label {text:?}: no images of that label", folder.display());
                continue;
            }
            Err(e) => {
                return Err(IngestError::Input { path: folder.display().to_string(), message: e.to_string() })
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
            .map(|e| e.path())
            .collect();
        paths.sort();
        files.extend(paths.into_iter().map(|path| ImageFile { path, label: i as i64 + 1, text: text.clone() }));
    }
    files.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(SHUFFLE_SEED));
    Ok(files)
}

/// Reads and converts files to one TFRecord shard in memory. Unusable files
/// are returned with the reason instead of stopping the shard.
pub fn build_shard(files: &[ImageFile], max_pixels: u64) -> (Vec<u8>, usize, Vec<(String, String)>) {
    let mut out = Vec::new();
    let mut written = 0;
    let mut skipped = Vec::new();
    for f in files {
        let name = f.path.display().to_string();
        let converted = std::fs::read(&f.path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| inception_vision::to_rgb_jpeg(&bytes, max_pixels).map_err(|e| e.to_string()));
        match converted {
            Ok((encoded, width, height)) => {
                let example = ImageExample {
                    encoded,
                    height: i64::from(height),
                    width: i64::from(width),
                    label: f.label,
                    text: f.text.clone(),
                    filename: f.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                };
                tfrecord::write_record(&mut out, &example.to_bytes());
                written += 1;
                metrics::counter!("inception_ingest_images_total", "result" => "written").increment(1);
            }
            Err(reason) => {
                tracing::warn!("SKIPPED {name}: {reason}");
                metrics::counter!("inception_ingest_images_total", "result" => "skipped").increment(1);
                skipped.push((name, reason));
            }
        }
    }
    (out, written, skipped)
}

/// One-shot ingest of the configured train and validation folders
/// (validation first, as the original).
pub async fn run_once(
    settings: &Settings,
    store: &Store,
    streams: &Streams,
    shutdown: &CancellationToken,
) -> Result<Vec<SplitReport>, IngestError> {
    let cfg = &settings.ingest;
    let dataset = &settings.dataset.name;
    if cfg.train_directory.is_empty() {
        return Err(IngestError::Input { path: "ingest.train_directory".into(), message: "not set".into() });
    }
    let labels = labels::read_labels(&cfg.labels_file, Path::new(&cfg.train_directory))?;
    tracing::info!("{} labels: {}", labels.len(), labels.join(", "));
    let mut label_text = labels.join("\n");
    label_text.push('\n');
    store.put(&keys::labels(dataset), Bytes::from(label_text)).await?;
    streams.shards().await?;

    let mut reports = Vec::new();
    for (split, dir, shards) in [
        ("validation", cfg.validation_directory.as_str(), cfg.validation_shards),
        ("train", cfg.train_directory.as_str(), cfg.train_shards),
    ] {
        if dir.is_empty() {
            continue;
        }
        let files = find_image_files(Path::new(dir), &labels)?;
        let report = write_split(settings, store, streams, shutdown, split, &labels, files, shards).await?;
        tracing::info!(
            "{split}: {} of {} images written to {} shards, {} skipped",
            report.written, report.found, report.shards.len(), report.skipped.len()
        );
        reports.push(report);
    }
    Ok(reports)
}

#[allow(clippy::too_many_arguments)]
async fn write_split(
    settings: &Settings,
    store: &Store,
    streams: &Streams,
    shutdown: &CancellationToken,
    split: &str,
    labels: &[String],
    files: Vec<ImageFile>,
    num_shards: u32,
) -> Result<SplitReport, IngestError> {
    let dataset = settings.dataset.name.clone();
    let max_pixels = settings.ingest.max_image_pixels;
    let ranges = shards::shard_ranges(files.len(), num_shards as usize, settings.ingest.num_threads as usize);
    let mut report = SplitReport { split: split.to_string(), found: files.len(), ..Default::default() };
    let files = std::sync::Arc::new(files);
    // Convert up to num_threads shards at a time, announcing in shard order.
    let mut pending = futures::stream::iter(ranges.into_iter().enumerate().map(|(index, range)| {
        let files = files.clone();
        tokio::task::spawn_blocking(move || (index, build_shard(&files[range], max_pixels)))
    }))
    .buffered(settings.ingest.num_threads.max(1) as usize);
    while let Some(joined) = pending.next().await {
        let (index, (bytes, written, skipped)) = joined.map_err(|e| IngestError::Worker(e.to_string()))?;
        let key = keys::shard(&dataset, split, index as u32, num_shards);
        match store.put_new(&key, Bytes::from(bytes)).await {
            Ok(()) => {
                metrics::counter!("inception_ingest_shards_written_total").increment(1);
                tracing::info!("wrote {key} ({written} records)");
            }
            Err(StoreError::AlreadyExists { .. }) => {
                tracing::warn!("{key} already exists; kept as it is (shards are never replaced)");
            }
            Err(e) => return Err(e.into()),
        }
        let message = ShardReady {
            dataset: dataset.clone(),
            split: split.to_string(),
            uri: key.clone(),
            records: written as u64,
            labels: labels.to_vec(),
            shard_index: index as u32,
            num_shards,
        };
        streams
            .publish_acked(&streams.subjects.shards(&dataset, split), Bytes::from(message.encode_to_vec()), &key, shutdown)
            .await?;
        report.written += written;
        report.skipped.extend(skipped);
        report.shards.push(key);
    }
    Ok(report)
}
