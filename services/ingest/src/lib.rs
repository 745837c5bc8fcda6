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
//! and announced again, with the records it holds); continuous ingest
//! writes each shard with `PutMode::Create`. A shard none of whose images
//! is usable is neither written nor announced, and a run with no usable
//! image at all is an error ([`IngestError::NoImages`]). A one-shot run
//! whose label map differs from that of the dataset's existing shards is
//! refused before it writes anything ([`IngestError::LabelsChanged`]).
//!
//! Every shard written gets a manifest ([`inception_core::manifest`], at
//! [`keys::shard_manifest`]): the source, size, SHA-256 and label of the
//! image behind each record, written after the shard and before its
//! announcement.

pub mod announce;
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
use inception_core::manifest::{sha256_hex, ManifestImage, ShardManifest};
use inception_core::settings::JpegCheckSetting;
use inception_core::store::StoreError;
use inception_core::{keys, tfrecord, Settings, Store};
use inception_proto::pipeline::ShardReady;
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
    #[error(
        "the label map of {origin} differs from {stored}, the map of the {shards} shards of dataset {dataset:?} \
         already in the store: {difference}. Their records carry the stored label numbers, so nothing was \
         written: ingest into a new dataset (--dataset <new name>), or pass the stored map as --labels-file \
         (a copy of {stored})"
    )]
    LabelsChanged { dataset: String, stored: String, origin: String, difference: String, shards: usize },
    #[error(
        "no usable image in {folders}: expected one sub-folder per label ({labels}) holding its images \
         (<label>/<image>); {found} entries found, {skipped} skipped (each named with its reason in the \
         report), so no shard was written"
    )]
    NoImages { folders: String, labels: String, found: usize, skipped: usize },
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
/// glob `*`); hidden files are ignored; symbolic links are followed inside
/// `dir` and otherwise kept as [`Location::Refused`] (see [`source`]), so
/// that the report names them.
pub fn find_image_files(dir: &Path, labels: &[String]) -> Result<Vec<ImageFile>, IngestError> {
    let tree = source::Tree::open(dir)?;
    let mut files = Vec::new();
    for (i, text) in labels.iter().enumerate() {
        let folder = dir.join(text);
        let objects = match tree.folder(text) {
            Ok(Some(objects)) => objects,
            Ok(None) => {
                tracing::warn!("no folder {} for label {text:?}: no images of that label", folder.display());
                continue;
            }
            Err(e) => return Err(IngestError::Input { path: folder.display().to_string(), message: e.to_string() }),
        };
        files.extend(objects.into_iter().map(|o| ImageFile {
            display: folder.join(&o.name).display().to_string(),
            name: o.name,
            location: o.location,
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
    /// Largest image file read (`ingest.max_image_bytes`), checked before reading.
    pub max_bytes: u64,
    pub jpeg: inception_vision::JpegCheck,
}

impl ImageChecks {
    pub fn of(settings: &inception_core::Settings) -> Self {
        let jpeg = match settings.ingest.jpeg_check {
            JpegCheckSetting::Decode => inception_vision::JpegCheck::Decode,
            JpegCheckSetting::Markers => inception_vision::JpegCheck::Markers,
        };
        Self { max_pixels: settings.pipeline.max_image_pixels, max_bytes: settings.ingest.max_image_bytes, jpeg }
    }

    /// Every pixel of every image decoded, as build_image_data.py does.
    pub fn full(max_pixels: u64) -> Self {
        Self { max_pixels, max_bytes: 512 << 20, jpeg: inception_vision::JpegCheck::Decode }
    }
}

/// Reads and converts one image to a serialized tf.Example, or says why
/// not; with the image's manifest entry (hashed before any re-encoding).
pub fn convert(
    file: &ImageFile,
    checks: ImageChecks,
    boxes: &bbox::Boxes,
) -> Result<(Vec<u8>, ManifestImage), Skipped> {
    let skipped = |result, reason: String| Skipped { file: file.display.clone(), result, reason };
    let bytes =
        file.location.read_blocking_at_most(checks.max_bytes).map_err(|e| skipped(Outcome::SkippedUnreadable, e))?;
    let image = ManifestImage {
        source: file.display.clone(),
        size: bytes.len() as u64,
        sha256: sha256_hex(&bytes),
        label: file.label,
        text: file.text.clone(),
    };
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
    Ok((example.into_bytes_with_boxes(b), image))
}

/// Writes the manifest of the shard at `shard_key` (its records' images, in
/// record order). Written whole (a re-run writes the same again).
pub async fn put_manifest(store: &Store, shard_key: &str, images: Vec<ManifestImage>) -> Result<(), IngestError> {
    let key = keys::shard_manifest(shard_key);
    let json = serde_json::to_vec(&ShardManifest::new(shard_key, images))
        .map_err(|e| IngestError::Input { path: key.clone(), message: e.to_string() })?;
    store.put(&key, Bytes::from(json)).await?;
    Ok(())
}

/// What [`build_shard_with`] made: the whole shard in memory.
#[derive(Debug, Default)]
pub struct BuiltShard {
    pub bytes: Vec<u8>,
    pub written: usize,
    pub skipped: Vec<Skipped>,
    /// The manifest entries of the records, in order.
    pub images: Vec<ManifestImage>,
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
    let (written, skipped, images) = convert_all(files, checks, boxes, progress, |record| {
        records.push(record);
        true
    });
    // One allocation of the final size: growing a shard of many megabytes
    // record by record costs more than converting the records.
    let mut bytes = Vec::with_capacity(records.iter().map(|r| r.len() + tfrecord::FRAMING_BYTES).sum());
    for record in &records {
        tfrecord::write_record(&mut bytes, record);
    }
    BuiltShard { bytes, written, skipped, images }
}

/// As [`build_shard_with`], handing the shard out in framed chunks of
/// about `STREAM_CHUNK_BYTES` through `chunks` (then `None`), so that it is
/// stored while it is converted. Stops early if the receiver goes away.
/// Sends no `None` when no record was made (the upload is then aborted).
/// Returns (written, skipped, the records' manifest entries).
pub fn stream_shard_with(
    files: &[ImageFile],
    checks: ImageChecks,
    boxes: &bbox::Boxes,
    progress: Option<&progress::Progress>,
    chunks: &tokio::sync::mpsc::Sender<Option<Bytes>>,
) -> (usize, Vec<Skipped>, Vec<ManifestImage>) {
    let mut chunk = Vec::with_capacity(STREAM_CHUNK_BYTES + (1 << 20));
    let mut open = true;
    let mut framed = 0;
    let (written, skipped, images) = convert_all(files, checks, boxes, progress, |record| {
        tfrecord::write_record(&mut chunk, &record);
        framed += 1;
        if chunk.len() >= STREAM_CHUNK_BYTES {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(STREAM_CHUNK_BYTES + (1 << 20)));
            open = chunks.blocking_send(Some(Bytes::from(full))).is_ok();
        }
        open
    });
    // No record, no commit: the sender goes away and the upload is aborted,
    // so an empty shard never appears.
    if framed > 0 && open && (chunk.is_empty() || chunks.blocking_send(Some(Bytes::from(chunk))).is_ok()) {
        let _ = chunks.blocking_send(None);
    }
    (written, skipped, images)
}

/// Chunks of a streamed shard: big enough for few writes, small enough
/// that two threads' shards do not sit in memory whole.
const STREAM_CHUNK_BYTES: usize = 8 << 20;

/// Converts `files` in order, giving each record to `emit` (which returns
/// false to stop); returns (written, skipped, the records' manifest entries).
fn convert_all(
    files: &[ImageFile],
    checks: ImageChecks,
    boxes: &bbox::Boxes,
    progress: Option<&progress::Progress>,
    mut emit: impl FnMut(Vec<u8>) -> bool,
) -> (usize, Vec<Skipped>, Vec<ManifestImage>) {
    let (mut written, mut skipped, mut images) = (0, Vec::new(), Vec::new());
    for f in files {
        match convert(f, checks, boxes) {
            Ok((record, image)) => {
                written += 1;
                images.push(image);
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
    (written, skipped, images)
}

/// One-shot ingest of the configured train and validation folders or
/// prefixes (validation first, as the original), each shard announced
/// through `announcer` once stored ([`continuous::NatsAnnouncer`], or
/// [`continuous::NotAnnounced`] for a run without NATS). Writes the JSON
/// report to the store (and `ingest.report_file` when set).
pub async fn run_once<A: continuous::Announcer>(
    settings: &Settings,
    store: &Store,
    announcer: &A,
) -> Result<RunReport, IngestError> {
    let cfg = &settings.ingest;
    let dataset = &settings.dataset.name;
    if cfg.train_directory.is_empty() {
        return Err(IngestError::Input { path: "ingest.train_directory".into(), message: "not set".into() });
    }
    let train = Source::open(&cfg.train_directory, &settings.store)?;
    let labels = labels::resolve(&cfg.labels_file, &train).await?;
    tracing::info!("{} labels: {}", labels.len(), labels.join(", "));
    let origin = if cfg.labels_file.is_empty() {
        format!("the label folders of {}", train.describe())
    } else {
        cfg.labels_file.clone()
    };
    // Before anything is written: a refused map leaves the store as it was.
    labels::check_unchanged(store, dataset, &labels, &origin).await?;
    labels::publish(store, dataset, &labels).await?;
    let boxes = Arc::new(bbox::load(&cfg.bounding_box_file)?);
    if !boxes.is_empty() {
        tracing::info!("bounding boxes for {} images from {}", boxes.len(), cfg.bounding_box_file);
    }

    let mut reports = Vec::new();
    let mut folders = Vec::new();
    for (split, dir, shards) in [
        ("validation", cfg.validation_directory.as_str(), cfg.validation_shards),
        ("train", cfg.train_directory.as_str(), cfg.train_shards),
    ] {
        if dir.is_empty() {
            continue;
        }
        let source = Source::open(dir, &settings.store)?;
        folders.push(source.describe());
        let files = find_in_source(&source, &labels).await?;
        let report = write_split(settings, store, announcer, split, &labels, files, shards, boxes.clone()).await?;
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
    write_report(store, &cfg.report_file, &report).await?;
    let written: usize = report.splits.iter().map(|s| s.written).sum();
    if written == 0 {
        // A dataset of no image is a mistake (a wrong folder, a flat folder
        // of images, links that lead out): say so rather than exit 0.
        return Err(IngestError::NoImages {
            folders: folders.join(" and "),
            labels: labels.join(", "),
            found: report.splits.iter().map(|s| s.found).sum(),
            skipped: report.splits.iter().map(|s| s.skipped.len()).sum(),
        });
    }
    Ok(report)
}

/// The JSON report, to the store and to `report_file` when set.
async fn write_report(store: &Store, report_file: &str, report: &RunReport) -> Result<(), IngestError> {
    let json = Bytes::from(report.to_json());
    store.put(&keys::ingest_report(&report.dataset), json.clone()).await?;
    if !report_file.is_empty() {
        std::fs::write(report_file, &json)
            .map_err(|e| IngestError::Input { path: report_file.to_string(), message: e.to_string() })?;
    }
    Ok(())
}

/// A shard that exists already is kept (shards are never replaced) and
/// announced with the records it holds, not with what its images give now.
/// They are still converted (the records dropped) so that the report names
/// the unusable ones. Returns (records in the stored shard, skipped).
async fn kept_shard(
    store: &Store,
    key: &str,
    files: Arc<Vec<ImageFile>>,
    range: std::ops::Range<usize>,
    checks: ImageChecks,
    boxes: Arc<bbox::Boxes>,
    progress: Arc<progress::Progress>,
) -> Result<(usize, Vec<Skipped>), IngestError> {
    let (converted, skipped, images) =
        tokio::task::spawn_blocking(move || convert_all(&files[range], checks, &boxes, Some(&progress), |_| true))
            .await
            .map_err(|e| IngestError::Worker(e.to_string()))?;
    let records = records_in(key, &store.get(key).await?)?;
    if records == converted && records > 0 && !store.exists(&keys::shard_manifest(key)).await? {
        // A shard from before manifests: its images give the same records now.
        tracing::info!("{key} has no manifest: written from its images as they are now");
        put_manifest(store, key, images).await?;
    }
    let rewrite = "delete it, or ingest into a new dataset, to rewrite it";
    if records == 0 {
        tracing::warn!("{key} already exists but holds no record: not announced; {rewrite}");
    } else if records != converted {
        tracing::warn!(
            "{key} already exists with {records} records, its images now give {converted}: kept as it is and \
             announced with {records} (shards are never replaced; {rewrite})"
        );
    } else {
        tracing::warn!("{key} already exists; kept as it is (shards are never replaced)");
    }
    Ok((records, skipped))
}

/// Counts a stored shard's records; a damaged one is an error, since what
/// it holds cannot be told (and so cannot be announced).
pub(crate) fn records_in(key: &str, bytes: &[u8]) -> Result<usize, IngestError> {
    let mut records = 0;
    for record in tfrecord::records(bytes) {
        record.map_err(|e| IngestError::Input {
            path: key.to_string(),
            message: format!("the stored shard is damaged ({e}); shards are never replaced: delete it and run again"),
        })?;
        records += 1;
    }
    Ok(records)
}

#[allow(clippy::too_many_arguments)]
async fn write_split<A: continuous::Announcer>(
    settings: &Settings,
    store: &Store,
    announcer: &A,
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
                let (records, skipped) = kept_shard(store, &key, files, range, checks, boxes, progress).await?;
                return Ok::<_, IngestError>((index, key, records, skipped));
            }
            // Stored while converted: writing overlaps conversion, and a
            // shard is never whole in memory.
            let images = range.len();
            let (tx, rx) = tokio::sync::mpsc::channel(2);
            let converting = tokio::task::spawn_blocking(move || {
                stream_shard_with(&files[range], checks, &boxes, Some(&progress), &tx)
            });
            let stored = store.put_streamed(&key, rx).await;
            let (written, skipped, manifest) = converting.await.map_err(|e| IngestError::Worker(e.to_string()))?;
            if written == 0 {
                // The upload was aborted (no commit was sent): an empty
                // shard would be announced as data that is not there.
                match stored {
                    Err(StoreError::Incomplete { .. }) | Ok(()) => {}
                    Err(e) => tracing::warn!("aborting the upload of {key} failed: {e}"),
                }
                tracing::warn!("{key} not written: none of its {images} images is usable");
                return Ok((index, key, 0, skipped));
            }
            stored?;
            put_manifest(store, &key, manifest).await?;
            metrics::counter!("inception_ingest_shards_written_total").increment(1);
            tracing::info!("wrote {key} ({written} records)");
            Ok((index, key, written, skipped))
        }
    }))
    .buffered(settings.ingest.num_threads.max(1) as usize);
    while let Some(done) = pending.next().await {
        let (index, key, written, skipped) = done?;
        report.skipped.extend(skipped);
        if written == 0 {
            continue;
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
        announcer.announce(&message).await?;
        report.written += written;
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
