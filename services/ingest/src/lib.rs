//! Ingest: folders (or object store prefixes) of `<label>/<image>` to
//! sharded TFRecord files of `tf.Example`, wire-compatible with
//! `build_image_data.py`, written to the object store and announced on NATS
//! (`ShardReady`). One-shot ([`run_once`]) or continuous
//! ([`continuous::run`]: watch an incoming prefix, keep a ledger).
//!
//! A file that is not a usable image is skipped with a warning naming it,
//! counted in `inception_ingest_images_total{result=...}` (see
//! [`report::Outcome`]) and listed in the JSON report; the rest is ingested.
//! A reader never sees a partial shard and a re-run never replaces one:
//! one-shot ingest checks that a shard does not exist yet, then streams it
//! to the store with a multipart upload while converting it (visible only
//! once committed, aborted if conversion stops; an existing shard is kept
//! and announced again); continuous ingest writes each shard with
//! `PutMode::Create`.

pub mod bbox;
pub mod continuous;
pub mod labels;
pub mod ledger;
pub mod progress;
pub mod records;
pub mod report;
pub mod shards;
pub mod source;

use bytes::Bytes;
use futures::StreamExt;
use inception_core::example::ImageExample;
use inception_core::nats::Streams;
use inception_core::settings::JpegCheckSetting;
use inception_core::shutdown::CancellationToken;
use inception_core::store::StoreError;
use inception_core::{keys, tfrecord, Settings, Store};
use inception_proto::pipeline::ShardReady;
use inception_proto::Message;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::Path;
use std::sync::Arc;

pub use report::{Outcome, RunReport, Skipped, SplitReport};
pub use source::{Location, Source};

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
    #[error("ingest ledger: {0}")]
    Ledger(String),
}

/// One image found in an input folder or prefix.
#[derive(Debug, Clone)]
pub struct ImageFile {
    pub location: Location,
    /// What reports and logs call it (path, or `<label>/<name>` in a store).
    pub display: String,
    /// Base name, stored as `image/filename`.
    pub name: String,
    pub label: i64,
    pub text: String,
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
            Err(e) => return Err(IngestError::Input { path: folder.display().to_string(), message: e.to_string() }),
        };
        let mut paths: Vec<std::path::PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.path())
            .collect();
        paths.sort();
        files.extend(paths.into_iter().map(|path| ImageFile {
            display: path.display().to_string(),
            name: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            location: Location::Path(path),
            label: i as i64 + 1,
            text: text.clone(),
        }));
    }
    files.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(SHUFFLE_SEED));
    Ok(files)
}

/// As [`find_image_files`] for any source: a local folder or a store prefix.
pub async fn find_in_source(source: &Source, labels: &[String]) -> Result<Vec<ImageFile>, IngestError> {
    match source {
        Source::Local(dir) => find_image_files(dir, labels),
        Source::Store(store) => {
            let objects = source.list().await?;
            let mut files = Vec::new();
            for (i, text) in labels.iter().enumerate() {
                let before = files.len();
                files.extend(objects.iter().filter(|o| &o.label == text).map(|o| ImageFile {
                    display: format!("{}/{}", store.url().trim_end_matches('/'), o.key),
                    name: o.name.clone(),
                    location: o.location.clone(),
                    label: i as i64 + 1,
                    text: text.clone(),
                }));
                if files.len() == before {
                    tracing::warn!("no objects under {}/{text}/: no images of that label", store.url());
                }
            }
            files.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(SHUFFLE_SEED));
            Ok(files)
        }
    }
}

/// How input images are checked (`pipeline.max_image_pixels`, `ingest.jpeg_check`).
#[derive(Debug, Clone, Copy)]
pub struct ImageChecks {
    pub max_pixels: u64,
    pub jpeg: inception_vision::JpegCheck,
}

impl ImageChecks {
    pub fn of(settings: &inception_core::Settings) -> Self {
        let jpeg = match settings.ingest.jpeg_check {
            JpegCheckSetting::Decode => inception_vision::JpegCheck::Decode,
            JpegCheckSetting::Markers => inception_vision::JpegCheck::Markers,
        };
        Self { max_pixels: settings.pipeline.max_image_pixels, jpeg }
    }

    /// Every pixel of every image decoded, as build_image_data.py does.
    pub fn full(max_pixels: u64) -> Self {
        Self { max_pixels, jpeg: inception_vision::JpegCheck::Decode }
    }
}

/// Reads and converts one image to a serialized tf.Example, or says why not.
pub fn convert(file: &ImageFile, checks: ImageChecks, boxes: &bbox::Boxes) -> Result<Vec<u8>, Skipped> {
    let skipped = |result, reason: String| Skipped { file: file.display.clone(), result, reason };
    let bytes = file.location.read_blocking().map_err(|e| skipped(Outcome::SkippedUnreadable, e))?;
    let (encoded, width, height) = inception_vision::into_rgb_jpeg_checked(bytes, checks.max_pixels, checks.jpeg)
        .map_err(|e| skipped(Outcome::of(&e), e.to_string()))?;
    let example = ImageExample {
        encoded,
        height: i64::from(height),
        width: i64::from(width),
        label: file.label,
        text: file.text.clone(),
        filename: file.name.clone(),
    };
    let b = boxes.get(&file.name).map_or(&[][..], Vec::as_slice);
    Ok(example.into_bytes_with_boxes(b))
}

/// What [`build_shard_with`] made: the whole shard in memory.
#[derive(Debug, Default)]
pub struct BuiltShard {
    pub bytes: Vec<u8>,
    pub written: usize,
    pub skipped: Vec<Skipped>,
}

/// Reads and converts files to one TFRecord shard in memory. Unusable files
/// are returned with the reason instead of stopping the shard. Call from a
/// blocking thread when files are in an object store.
pub fn build_shard_with(
    files: &[ImageFile],
    checks: ImageChecks,
    boxes: &bbox::Boxes,
    progress: Option<&progress::Progress>,
) -> BuiltShard {
    let mut records = Vec::with_capacity(files.len());
    let (written, skipped) = convert_all(files, checks, boxes, progress, |record| {
        records.push(record);
        true
    });
    // One allocation of the final size: growing a shard of many megabytes
    // record by record costs more than converting the records.
    let mut bytes = Vec::with_capacity(records.iter().map(|r| r.len() + tfrecord::FRAMING_BYTES).sum());
    for record in &records {
        tfrecord::write_record(&mut bytes, record);
    }
    BuiltShard { bytes, written, skipped }
}

/// As [`build_shard_with`], handing the shard out in framed chunks of
/// about `STREAM_CHUNK_BYTES` through `chunks` (then `None`), so that it is
/// stored while it is converted. Stops early if the receiver goes away.
pub fn stream_shard_with(
    files: &[ImageFile],
    checks: ImageChecks,
    boxes: &bbox::Boxes,
    progress: Option<&progress::Progress>,
    chunks: &tokio::sync::mpsc::Sender<Option<Bytes>>,
) -> (usize, Vec<Skipped>) {
    let mut chunk = Vec::with_capacity(STREAM_CHUNK_BYTES + (1 << 20));
    let mut open = true;
    let outcome = convert_all(files, checks, boxes, progress, |record| {
        tfrecord::write_record(&mut chunk, &record);
        if chunk.len() >= STREAM_CHUNK_BYTES {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(STREAM_CHUNK_BYTES + (1 << 20)));
            open = chunks.blocking_send(Some(Bytes::from(full))).is_ok();
        }
        open
    });
    if open && (chunk.is_empty() || chunks.blocking_send(Some(Bytes::from(chunk))).is_ok()) {
        let _ = chunks.blocking_send(None);
    }
    outcome
}

/// Chunks of a streamed shard: big enough for few writes, small enough
/// that two threads' shards do not sit in memory whole.
const STREAM_CHUNK_BYTES: usize = 8 << 20;

/// Converts `files` in order, giving each record to `emit` (which returns
/// false to stop); returns (written, skipped).
fn convert_all(
    files: &[ImageFile],
    checks: ImageChecks,
    boxes: &bbox::Boxes,
    progress: Option<&progress::Progress>,
    mut emit: impl FnMut(Vec<u8>) -> bool,
) -> (usize, Vec<Skipped>) {
    let (mut written, mut skipped) = (0, Vec::new());
    for f in files {
        match convert(f, checks, boxes) {
            Ok(record) => {
                written += 1;
                Outcome::Written.count();
                if !emit(record) {
                    break;
                }
            }
            Err(skip) => {
                tracing::warn!("SKIPPED {}: {} ({})", skip.file, skip.reason, skip.result.as_str());
                skip.result.count();
                skipped.push(skip);
            }
        }
        if let Some(p) = progress {
            p.inc();
        }
    }
    (written, skipped)
}

/// One-shot ingest of the configured train and validation folders or
/// prefixes (validation first, as the original). Writes the JSON report to
/// the store (and `ingest.report_file` when set).
pub async fn run_once(
    settings: &Settings,
    store: &Store,
    streams: &Streams,
    shutdown: &CancellationToken,
) -> Result<RunReport, IngestError> {
    let cfg = &settings.ingest;
    let dataset = &settings.dataset.name;
    if cfg.train_directory.is_empty() {
        return Err(IngestError::Input { path: "ingest.train_directory".into(), message: "not set".into() });
    }
    let train = Source::open(&cfg.train_directory, &settings.store)?;
    let labels = labels::resolve(&cfg.labels_file, &train).await?;
    tracing::info!("{} labels: {}", labels.len(), labels.join(", "));
    labels::publish(store, dataset, &labels).await?;
    let boxes = Arc::new(bbox::load(&cfg.bounding_box_file)?);
    if !boxes.is_empty() {
        tracing::info!("bounding boxes for {} images from {}", boxes.len(), cfg.bounding_box_file);
    }
    streams.shards().await?;

    let mut reports = Vec::new();
    for (split, dir, shards) in [
        ("validation", cfg.validation_directory.as_str(), cfg.validation_shards),
        ("train", cfg.train_directory.as_str(), cfg.train_shards),
    ] {
        if dir.is_empty() {
            continue;
        }
        let source = Source::open(dir, &settings.store)?;
        let files = find_in_source(&source, &labels).await?;
        let report =
            write_split(settings, store, streams, shutdown, split, &labels, files, shards, boxes.clone()).await?;
        tracing::info!(
            "{split}: {} of {} images written to {} shards, {} skipped",
            report.written,
            report.found,
            report.shards.len(),
            report.skipped.len()
        );
        reports.push(report);
    }
    let report = RunReport::new(dataset, &labels, reports);
    let json = Bytes::from(report.to_json());
    store.put(&keys::ingest_report(dataset), json.clone()).await?;
    if !cfg.report_file.is_empty() {
        std::fs::write(&cfg.report_file, &json)
            .map_err(|e| IngestError::Input { path: cfg.report_file.clone(), message: e.to_string() })?;
    }
    Ok(report)
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
    boxes: Arc<bbox::Boxes>,
) -> Result<SplitReport, IngestError> {
    let dataset = settings.dataset.name.clone();
    let checks = ImageChecks::of(settings);
    let ranges = shards::shard_ranges(files.len(), num_shards as usize, settings.ingest.num_threads as usize);
    let mut report = SplitReport { split: split.to_string(), found: files.len(), ..Default::default() };
    let progress = Arc::new(progress::Progress::new(split, files.len()));
    let files = Arc::new(files);
    let started = std::time::Instant::now();
    // Convert and store up to num_threads shards at a time (writes overlap
    // conversions and each other), announcing in shard order.
    let mut pending = futures::stream::iter(ranges.into_iter().enumerate().map(|(index, range)| {
        let (files, boxes, progress) = (files.clone(), boxes.clone(), progress.clone());
        let key = keys::shard(&dataset, split, index as u32, num_shards);
        async move {
            if store.exists(&key).await? {
                // Shards are never replaced: convert only to count what the
                // announcement says, keep the stored one.
                let built = tokio::task::spawn_blocking(move || {
                    build_shard_with(&files[range], checks, &boxes, Some(&progress))
                })
                .await
                .map_err(|e| IngestError::Worker(e.to_string()))?;
                tracing::warn!("{key} already exists; kept as it is (shards are never replaced)");
                return Ok::<_, IngestError>((index, key, built.written, built.skipped));
            }
            // Stored while converted: writing overlaps conversion, and a
            // shard is never whole in memory.
            let (tx, rx) = tokio::sync::mpsc::channel(2);
            let converting = tokio::task::spawn_blocking(move || {
                stream_shard_with(&files[range], checks, &boxes, Some(&progress), &tx)
            });
            let stored = store.put_streamed(&key, rx).await;
            let (written, skipped) = converting.await.map_err(|e| IngestError::Worker(e.to_string()))?;
            stored?;
            metrics::counter!("inception_ingest_shards_written_total").increment(1);
            tracing::info!("wrote {key} ({written} records)");
            Ok((index, key, written, skipped))
        }
    }))
    .buffered(settings.ingest.num_threads.max(1) as usize);
    while let Some(done) = pending.next().await {
        let (index, key, written, skipped) = done?;
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
            .publish_acked(
                &streams.subjects.shards(&dataset, split),
                Bytes::from(message.encode_to_vec()),
                &key,
                shutdown,
            )
            .await?;
        report.written += written;
        report.skipped.extend(skipped);
        report.shards.push(key);
    }
    progress.finish();
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        "{split}: {} images converted and stored in {secs:.2} s ({:.0} images/s)",
        report.found,
        report.found as f64 / secs.max(1e-9)
    );
    Ok(report)
}
