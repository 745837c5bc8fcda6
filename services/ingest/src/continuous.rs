//! Continuous ingest: watch an incoming folder or object store prefix for
//! new `<label>/<image>` objects and turn them into new shards
//! (`<split>-live-NNNNNNNN`), announced on NATS as they are written, so the
//! running preprocess workers pick them up.
//!
//! # The ledger
//!
//! `datasets/<name>/ingest/ledger/NNNNNNNN.json`, one entry per sequence
//! number, lists the source keys a shard took and what became of each
//! (written, skipped with a reason, quarantined). The steps for a group of
//! new images are:
//!
//! 1. convert them in memory;
//! 2. write the ledger entry with `PutMode::Create`: the commit point. Before
//!    it nothing is recorded and a restart takes the same images again (no
//!    loss); after it the images belong to this sequence number, and no later
//!    group can take them (no duplicate). A second ingester racing for the
//!    same number loses the `Create`, reloads the ledger and tries again;
//! 3. copy quarantined images with their reason files;
//! 4. write the shard (`PutMode::Create`; its name comes from the sequence
//!    number, so a retry cannot make a second copy);
//! 5. announce it (`ShardReady`, message id = shard key);
//! 6. write `NNNNNNNN.done`.
//!
//! At start, every entry without `.done` is finished: missing quarantine
//! copies are made, a missing shard is rebuilt from the entry's list, and the
//! shard is announced again (the preprocess workers ignore a shard they know).

use bytes::Bytes;
use inception_core::nats::Streams;
use inception_core::shutdown::{sleep_or_cancel, CancellationToken};
use inception_core::store::StoreError;
use inception_core::{keys, tfrecord, Settings, Store};
use inception_proto::pipeline::ShardReady;
use inception_proto::Message;
use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::ledger::{Ledger, LedgerEntry, LedgerImage};
use crate::report::Outcome;
use crate::source::{Location, Source, SourceObject};
use crate::{bbox, labels, ImageFile, IngestError};
use inception_core::manifest::ManifestImage;

/// Where new shards are announced; NATS in the service, a list in tests.
pub trait Announcer {
    fn announce(&self, shard: &ShardReady) -> impl Future<Output = Result<(), IngestError>> + Send;
}

/// Announces on the pipeline's JetStream shard subject, waiting for the ack.
pub struct NatsAnnouncer {
    pub streams: Streams,
    pub shutdown: CancellationToken,
}

impl Announcer for NatsAnnouncer {
    fn announce(&self, shard: &ShardReady) -> impl Future<Output = Result<(), IngestError>> + Send {
        let subject = self.streams.subjects.shards(&shard.dataset, &shard.split);
        let payload = Bytes::from(shard.encode_to_vec());
        let id = shard.uri.clone();
        async move {
            self.streams.publish_acked(&subject, payload, &id, &self.shutdown).await?;
            Ok(())
        }
    }
}

/// Announces nothing (`ingest.announce = false`): one-shot ingest into a
/// store without NATS; `--announce-only` announces the shards later.
pub struct NotAnnounced;

impl Announcer for NotAnnounced {
    fn announce(&self, shard: &ShardReady) -> impl Future<Output = Result<(), IngestError>> + Send {
        tracing::info!("{} stored, not announced (ingest.announce = false)", shard.uri);
        std::future::ready(Ok(()))
    }
}

/// The label set for continuous ingest: `ingest.labels_file` if set (it must
/// equal the store's `labels.txt` when one exists: label numbers never
/// change under a running trainer), else the store's `labels.txt`.
pub async fn labels(settings: &Settings, store: &Store) -> Result<Vec<String>, IngestError> {
    let dataset = &settings.dataset.name;
    let key = keys::labels(dataset);
    let stored = match store.get(&key).await {
        Ok(bytes) => Some(labels::parse(&String::from_utf8_lossy(&bytes), &key)?),
        Err(StoreError::NotFound { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let file = &settings.ingest.labels_file;
    match (file.is_empty(), stored) {
        (false, stored) => {
            let wanted = labels::read_labels(file, std::path::Path::new(""))?;
            match stored {
                Some(s) if s != wanted => Err(IngestError::Input {
                    path: file.clone(),
                    message: format!(
                        "differs from {key} in the store ({}); label numbers cannot change",
                        labels::difference(&s, &wanted, &key, file).unwrap_or_default()
                    ),
                }),
                Some(_) => Ok(wanted),
                None => {
                    labels::publish(store, dataset, &wanted).await?;
                    Ok(wanted)
                }
            }
        }
        (true, Some(s)) => Ok(s),
        (true, None) => Err(IngestError::Input {
            path: key,
            message: "continuous ingest needs a label set: set ingest.labels_file or run a one-shot ingest first"
                .into(),
        }),
    }
}

struct Pending {
    object: SourceObject,
    first_seen: Instant,
    stable: bool,
}

/// The continuous ingester's state.
pub struct Watcher<'a, A: Announcer> {
    settings: &'a Settings,
    store: &'a Store,
    announcer: &'a A,
    source: Source,
    labels: Vec<String>,
    boxes: Arc<bbox::Boxes>,
    ledger: Ledger,
    pending: BTreeMap<String, Pending>,
}

impl<'a, A: Announcer> Watcher<'a, A> {
    /// Opens the incoming source, reads the label set and the ledger, and
    /// finishes what a previous run left unfinished.
    pub async fn start(settings: &'a Settings, store: &'a Store, announcer: &'a A) -> Result<Self, IngestError> {
        let cfg = &settings.ingest;
        // A shard or ledger file half-written when an ingester was killed.
        // (A minute old at least: another ingester may be writing right now.)
        store.remove_stale_temporaries(&keys::dataset_dir(&settings.dataset.name), Duration::from_secs(60));
        let source = Source::open(&cfg.incoming, &settings.store)?;
        let labels = labels(settings, store).await?;
        let boxes = Arc::new(bbox::load(&cfg.bounding_box_file)?);
        let ledger = Ledger::load(store, &settings.dataset.name).await?;
        tracing::info!(
            "watching {} for <label>/<image> ({} labels); ledger: {} images taken, next shard {}",
            source.describe(),
            labels.len(),
            ledger.taken.len(),
            ledger.next_sequence
        );
        let mut w = Watcher { settings, store, announcer, source, labels, boxes, ledger, pending: BTreeMap::new() };
        w.finish_unfinished().await?;
        Ok(w)
    }

    async fn finish_unfinished(&mut self) -> Result<(), IngestError> {
        let entries = std::mem::take(&mut self.ledger.unfinished);
        for (i, entry) in entries.iter().enumerate() {
            tracing::info!("finishing ledger entry {} left by an earlier run", entry.sequence);
            if let Err(e) = self.finish(entry, None).await {
                self.ledger.unfinished.extend(entries[i..].iter().cloned());
                return Err(e);
            }
        }
        Ok(())
    }

    /// Lists the source, groups and writes what is ready; returns the
    /// entries written. Errors are logged and retried at the next poll.
    pub async fn poll_once(&mut self) -> Vec<LedgerEntry> {
        if !self.ledger.unfinished.is_empty() {
            if let Err(e) = self.finish_unfinished().await {
                tracing::warn!("cannot finish earlier ledger entries yet: {e}");
                return Vec::new();
            }
        }
        match self.source.list().await {
            Ok(objects) => self.update(objects),
            Err(e) => {
                metrics::counter!("inception_ingest_list_errors_total").increment(1);
                tracing::warn!("cannot list {}: {e}; retrying", self.source.describe());
            }
        }
        let mut written = Vec::new();
        while let Some(group) = self.ready_group() {
            match self.process(group).await {
                Ok(Some(entry)) => written.push(entry),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!("ingest of new images failed: {e}; retrying at the next poll");
                    break;
                }
            }
        }
        metrics::gauge!("inception_ingest_pending_images").set(self.pending.len() as f64);
        written
    }

    fn update(&mut self, objects: Vec<SourceObject>) {
        let now = Instant::now();
        let mut seen = HashSet::new();
        for object in objects {
            if self.ledger.taken.contains(&object.key) {
                continue;
            }
            seen.insert(object.key.clone());
            match self.pending.get_mut(&object.key) {
                Some(p) => {
                    // Taken only once two listings agree: not while being written.
                    p.stable = p.object.size == object.size && p.object.modified_ms == object.modified_ms;
                    p.object = object;
                }
                None => {
                    let key = object.key.clone();
                    self.pending.insert(key, Pending { object, first_seen: now, stable: false });
                }
            }
        }
        self.pending.retain(|k, _| seen.contains(k));
    }

    /// The next group to write: the oldest stable images, when there are
    /// `shard_max_images` of them or the oldest has waited `shard_max_age_secs`.
    fn ready_group(&mut self) -> Option<Vec<SourceObject>> {
        let cfg = &self.settings.ingest;
        let mut stable: Vec<(&Instant, &String)> =
            self.pending.iter().filter(|(_, p)| p.stable).map(|(k, p)| (&p.first_seen, k)).collect();
        stable.sort();
        let oldest = *stable.first()?.0;
        let max = cfg.shard_max_images as usize;
        if stable.len() < max && oldest.elapsed() < cfg.shard_max_age {
            return None;
        }
        let keys: Vec<String> = stable.into_iter().take(max).map(|(_, k)| k.clone()).collect();
        Some(keys.iter().filter_map(|k| self.pending.remove(k)).map(|p| p.object).collect())
    }

    fn image_file(&self, object: &SourceObject) -> Option<ImageFile> {
        let index = self.labels.iter().position(|l| *l == object.label)?;
        Some(ImageFile {
            location: object.location.clone(),
            display: format!("{}/{}", self.source.describe().trim_end_matches('/'), object.key),
            name: object.name.clone(),
            label: index as i64 + 1,
            text: object.label.clone(),
        })
    }

    /// Converts a group, commits its ledger entry, then finishes it.
    async fn process(&mut self, mut group: Vec<SourceObject>) -> Result<Option<LedgerEntry>, IngestError> {
        group.sort_by(|a, b| a.key.cmp(&b.key));
        let dataset = self.settings.dataset.name.clone();
        let split = self.settings.ingest.incoming_split.as_str().to_string();
        let known: Vec<(usize, ImageFile)> =
            group.iter().enumerate().filter_map(|(i, o)| self.image_file(o).map(|f| (i, f))).collect();
        let (checks, boxes) = (crate::ImageChecks::of(self.settings), self.boxes.clone());
        let converted = tokio::task::spawn_blocking(move || {
            known.into_iter().map(|(i, f)| (i, crate::convert(&f, checks, &boxes))).collect::<Vec<_>>()
        })
        .await
        .map_err(|e| IngestError::Worker(e.to_string()))?;
        let mut images: Vec<LedgerImage> = group
            .iter()
            .map(|o| LedgerImage {
                key: o.key.clone(),
                result: Outcome::Quarantined,
                reason: Some(format!("label {:?} is not in the label set ({})", o.label, keys::labels(&dataset))),
            })
            .collect();
        let mut bytes = Vec::new();
        let mut manifest = Vec::new();
        let mut records = 0u64;
        for (i, result) in converted {
            match result {
                Ok((record, image)) => {
                    tfrecord::write_record(&mut bytes, &record);
                    manifest.push(image);
                    records += 1;
                    images[i] = LedgerImage { key: group[i].key.clone(), result: Outcome::Written, reason: None };
                }
                Err(skip) => {
                    tracing::warn!("SKIPPED {}: {} ({})", skip.file, skip.reason, skip.result.as_str());
                    images[i] =
                        LedgerImage { key: group[i].key.clone(), result: skip.result, reason: Some(skip.reason) };
                }
            }
        }
        loop {
            let sequence = self.ledger.next_sequence;
            let entry = LedgerEntry {
                sequence,
                split: split.clone(),
                shard: (records > 0).then(|| keys::live_shard(&dataset, &split, sequence)),
                records,
                images: images.clone(),
            };
            let json = serde_json::to_vec_pretty(&entry).map_err(|e| IngestError::Ledger(e.to_string()))?;
            match self.store.put_new(&keys::ingest_ledger_entry(&dataset, sequence), Bytes::from(json)).await {
                Ok(()) => {}
                Err(StoreError::AlreadyExists { .. }) => {
                    // Another ingester took this number: learn what it took.
                    tracing::warn!("ledger entry {sequence} was written by another ingester; reloading the ledger");
                    let fresh = Ledger::load(self.store, &dataset).await?;
                    let before = images.len();
                    images.retain(|i| !fresh.taken.contains(&i.key));
                    self.ledger.refresh(fresh);
                    if images.len() != before {
                        // Some of the group is someone else's now: redo it from the listing.
                        return Ok(None);
                    }
                    continue;
                }
                Err(e) => {
                    // Nothing recorded: the group goes back to waiting.
                    for o in group {
                        self.pending
                            .insert(o.key.clone(), Pending { object: o, first_seen: Instant::now(), stable: true });
                    }
                    return Err(e.into());
                }
            }
            self.ledger.record(&entry);
            for i in &entry.images {
                i.result.count();
            }
            if let Err(e) = self.finish(&entry, Some((bytes, manifest))).await {
                self.ledger.unfinished.push(entry);
                return Err(e);
            }
            self.ledger.compact(self.store, &dataset).await;
            return Ok(Some(entry));
        }
    }

    /// Steps 3 to 6 for a committed entry; `shard` is the shard's bytes and
    /// manifest when just built (else they are rebuilt if missing). The
    /// manifest is written after the shard, before the announcement.
    async fn finish(
        &self,
        entry: &LedgerEntry,
        shard: Option<(Vec<u8>, Vec<ManifestImage>)>,
    ) -> Result<(), IngestError> {
        let dataset = &self.settings.dataset.name;
        for image in entry.images.iter().filter(|i| i.result == Outcome::Quarantined) {
            self.quarantine(entry.sequence, image).await?;
        }
        if let Some(key) = &entry.shard {
            let records = match shard {
                Some((bytes, images)) => {
                    let records = self.put_shard(key, bytes, entry.records).await?;
                    crate::put_manifest(self.store, key, images).await?;
                    records
                }
                None if self.store.exists(key).await? => {
                    if !self.store.exists(&keys::shard_manifest(key)).await? {
                        crate::put_manifest(self.store, key, self.rebuild(entry).await?.images).await?;
                    }
                    entry.records
                }
                None => {
                    let built = self.rebuild(entry).await?;
                    let records = tfrecord::records(&built.bytes).count() as u64;
                    let records = self.put_shard(key, built.bytes, records).await?;
                    crate::put_manifest(self.store, key, built.images).await?;
                    records
                }
            };
            let message = ShardReady {
                dataset: dataset.clone(),
                split: entry.split.clone(),
                uri: key.clone(),
                records,
                labels: self.labels.clone(),
                shard_index: entry.sequence as u32,
                num_shards: 0,
            };
            self.announcer.announce(&message).await?;
            tracing::info!("wrote and announced {key} ({records} records)");
        }
        self.store.put(&keys::ingest_ledger_done(dataset, entry.sequence), Bytes::new()).await?;
        Ok(())
    }

    async fn put_shard(&self, key: &str, bytes: Vec<u8>, records: u64) -> Result<u64, IngestError> {
        match self.store.put_new(key, Bytes::from(bytes)).await {
            Ok(()) => {
                metrics::counter!("inception_ingest_shards_written_total").increment(1);
                Ok(records)
            }
            Err(StoreError::AlreadyExists { .. }) => {
                tracing::warn!("{key} already exists; kept as it is (shards are never replaced)");
                Ok(records)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Rebuilds a shard from its ledger entry (after a crash between the
    /// entry and the shard).
    async fn rebuild(&self, entry: &LedgerEntry) -> Result<crate::BuiltShard, IngestError> {
        let files: Vec<ImageFile> = entry
            .images
            .iter()
            .filter(|i| i.result == Outcome::Written)
            .filter_map(|i| {
                let (label, name) = i.key.split_once('/')?;
                let object = SourceObject {
                    key: i.key.clone(),
                    label: crate::source::percent_decode(label),
                    name: crate::source::percent_decode(name),
                    size: 0,
                    modified_ms: 0,
                    location: self.locate(&i.key),
                };
                self.image_file(&object)
            })
            .collect();
        let (checks, boxes) = (crate::ImageChecks::of(self.settings), self.boxes.clone());
        let built = tokio::task::spawn_blocking(move || crate::build_shard_with(&files, checks, &boxes, None))
            .await
            .map_err(|e| IngestError::Worker(e.to_string()))?;
        Ok(built)
    }

    fn locate(&self, key: &str) -> Location {
        match &self.source {
            // Links are followed (or refused) now as when they were listed.
            Source::Local(dir) => match (crate::source::Tree::open(dir), key.split_once('/')) {
                (Ok(tree), Some((label, name))) => tree.locate(label, name),
                (Err(e), _) => Location::Refused(e.to_string()),
                (_, None) => Location::Path(dir.join(key)),
            },
            Source::Store(store) => Location::Store { store: store.clone(), key: key.to_string() },
        }
    }

    /// Copies the image to the quarantine prefix beside a reason file.
    async fn quarantine(&self, sequence: u64, image: &LedgerImage) -> Result<(), IngestError> {
        let dataset = &self.settings.dataset.name;
        let decoded = crate::source::percent_decode(&image.key);
        let target = keys::ingest_quarantine(dataset, &decoded);
        let reason = image.reason.clone().unwrap_or_default();
        match self.locate(&image.key).read().await {
            Ok(bytes) => self.store.put(&target, Bytes::from(bytes)).await?,
            Err(e) => tracing::warn!("cannot copy {} to quarantine: {e}", image.key),
        }
        let note = serde_json::json!({
            "source": format!("{}/{}", self.source.describe().trim_end_matches('/'), image.key),
            "reason": reason,
            "ledger_sequence": sequence,
        });
        self.store.put(&format!("{target}.reason.json"), Bytes::from(note.to_string())).await?;
        tracing::warn!("QUARANTINED {}: {reason}", image.key);
        Ok(())
    }
}

/// Runs continuous ingest until shutdown: poll, group, write, announce.
/// A group being written when shutdown comes is finished first; images still
/// waiting are taken by the next run (the ledger does not list them).
pub async fn run<A: Announcer>(
    settings: &Settings,
    store: &Store,
    announcer: &A,
    shutdown: &CancellationToken,
) -> Result<(), IngestError> {
    let mut watcher = Watcher::start(settings, store, announcer).await?;
    let poll = settings.ingest.poll_interval;
    while !shutdown.is_cancelled() {
        watcher.poll_once().await;
        if !sleep_or_cancel(shutdown, poll).await {
            break;
        }
    }
    tracing::info!("continuous ingest stopped; {} images were still waiting", watcher.pending.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Collect(Mutex<Vec<ShardReady>>);

    impl Announcer for Collect {
        fn announce(&self, shard: &ShardReady) -> impl Future<Output = Result<(), IngestError>> + Send {
            if let Ok(mut v) = self.0.lock() {
                v.push(shard.clone());
            }
            async { Ok(()) }
        }
    }

    fn jpeg(seed: u8) -> Vec<u8> {
        let img = image::RgbImage::from_fn(16, 12, |x, y| image::Rgb([seed, (x * 9) as u8, (y * 13) as u8]));
        let mut out = std::io::Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(img).write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
        out.into_inner()
    }

    fn settings(dir: &std::path::Path, incoming: &std::path::Path) -> Settings {
        let labels = dir.join("labels.txt");
        std::fs::write(&labels, "daisy\nroses\n").unwrap();
        let store = format!("file://{}", dir.join("store").display());
        Settings::load(
            None,
            &[
                ("store.url".into(), store),
                ("ingest.incoming".into(), incoming.display().to_string()),
                ("ingest.labels_file".into(), labels.display().to_string()),
                ("ingest.shard_max_images".into(), "3".into()),
                ("ingest.shard_max_age".into(), "0s".into()),
            ],
        )
        .unwrap()
    }

    fn put(incoming: &std::path::Path, key: &str, bytes: &[u8]) {
        let p = incoming.join(key);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }

    fn shard_names(store: &Store, key: &str) -> Vec<String> {
        let rt = tokio::runtime::Handle::current();
        let bytes = tokio::task::block_in_place(|| rt.block_on(store.get(key))).unwrap();
        tfrecord::records(&bytes)
            .map(|r| {
                let ex = inception_proto::tensorflow::Example::decode(r.unwrap()).unwrap();
                match ex.features.unwrap().feature["image/filename"].kind.clone() {
                    Some(inception_proto::tensorflow::feature::Kind::BytesList(l)) => {
                        String::from_utf8(l.value[0].clone()).unwrap()
                    }
                    _ => panic!("no filename"),
                }
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn groups_new_images_quarantines_unknown_labels_and_never_repeats() {
        let dir = tempfile::tempdir().unwrap();
        let incoming = dir.path().join("incoming");
        let settings = settings(dir.path(), &incoming);
        let store = Store::open(&settings.store).unwrap();
        let announced = Collect::default();
        for (i, k) in ["daisy/a.jpg", "daisy/b.jpg", "roses/c.jpg", "roses/d.jpg"].iter().enumerate() {
            put(&incoming, k, &jpeg(i as u8 * 40));
        }
        put(&incoming, "tulips/t.jpg", &jpeg(7));
        put(&incoming, "roses/bad.jpg", b"");
        {
            let mut w = Watcher::start(&settings, &store, &announced).await.unwrap();
            assert!(w.poll_once().await.is_empty(), "first sight: not yet stable");
            let entries = w.poll_once().await;
            // 6 images, max 3 per group, age 0: two groups.
            assert_eq!(entries.len(), 2, "{entries:?}");
            let results: BTreeMap<&str, Outcome> =
                entries.iter().flat_map(|e| e.images.iter().map(|i| (i.key.as_str(), i.result))).collect();
            assert_eq!(results["roses/bad.jpg"], Outcome::SkippedEmpty);
            assert_eq!(results["tulips/t.jpg"], Outcome::Quarantined);
            assert_eq!(results["daisy/a.jpg"], Outcome::Written);
            assert!(w.poll_once().await.is_empty(), "nothing new");
        }
        let shards = announced.0.lock().unwrap().clone();
        let records: u64 = shards.iter().map(|s| s.records).sum();
        assert_eq!(records, 4);
        assert!(shards.iter().all(|s| s.uri.starts_with("datasets/flowers/train-live-")), "{shards:?}");
        let mut names: Vec<String> = shards.iter().flat_map(|s| shard_names(&store, &s.uri)).collect();
        names.sort();
        assert_eq!(names, vec!["a.jpg", "b.jpg", "c.jpg", "d.jpg"]);
        // Each shard's manifest names its records' images, in record order.
        for shard in &shards {
            let bytes = store.get(&keys::shard_manifest(&shard.uri)).await.unwrap();
            let manifest: inception_core::manifest::ShardManifest = serde_json::from_slice(&bytes).unwrap();
            assert_eq!((manifest.shard.as_str(), manifest.records), (shard.uri.as_str(), shard.records));
            let files: Vec<String> =
                manifest.images.iter().map(|i| i.source.rsplit('/').next().unwrap().to_string()).collect();
            assert_eq!(files, shard_names(&store, &shard.uri));
            for image in &manifest.images {
                let source = std::fs::read(&image.source).unwrap();
                assert_eq!(image.sha256, inception_core::manifest::sha256_hex(&source));
                assert_eq!(image.size, source.len() as u64);
            }
        }
        let quarantined = store.list("datasets/flowers/ingest/quarantine/").await.unwrap();
        assert_eq!(
            quarantined,
            vec![
                "datasets/flowers/ingest/quarantine/tulips/t.jpg",
                "datasets/flowers/ingest/quarantine/tulips/t.jpg.reason.json"
            ]
        );
        let reason = store.get(&quarantined[1]).await.unwrap();
        assert!(String::from_utf8_lossy(&reason).contains("tulips"), "{reason:?}");

        // A restart takes only the new image.
        put(&incoming, "daisy/e.jpg", &jpeg(99));
        let announced2 = Collect::default();
        let mut w = Watcher::start(&settings, &store, &announced2).await.unwrap();
        w.poll_once().await;
        let entries = w.poll_once().await;
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].sequence, 2);
        assert_eq!(entries[0].images.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(), vec!["daisy/e.jpg"]);
        let ledger = Ledger::load(&store, "flowers").await.unwrap();
        assert_eq!(ledger.taken.len(), 7);
        assert!(ledger.unfinished.is_empty());
        assert_eq!(announced2.0.lock().unwrap().len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_after_the_ledger_entry_is_finished_at_restart() {
        let dir = tempfile::tempdir().unwrap();
        let incoming = dir.path().join("incoming");
        let settings = settings(dir.path(), &incoming);
        let store = Store::open(&settings.store).unwrap();
        put(&incoming, "roses/x.jpg", &jpeg(1));
        put(&incoming, "roses/y.jpg", &jpeg(2));
        // As if a run had committed entry 0 and died before the shard.
        let entry = LedgerEntry {
            sequence: 0,
            split: "train".into(),
            shard: Some(keys::live_shard("flowers", "train", 0)),
            records: 2,
            images: ["roses/x.jpg", "roses/y.jpg"]
                .iter()
                .map(|k| LedgerImage { key: k.to_string(), result: Outcome::Written, reason: None })
                .collect(),
        };
        store
            .put_new(&keys::ingest_ledger_entry("flowers", 0), Bytes::from(serde_json::to_vec(&entry).unwrap()))
            .await
            .unwrap();
        let announced = Collect::default();
        let mut w = Watcher::start(&settings, &store, &announced).await.unwrap();
        let shard = keys::live_shard("flowers", "train", 0);
        assert_eq!(shard_names(&store, &shard), vec!["x.jpg", "y.jpg"]);
        assert_eq!(announced.0.lock().unwrap().len(), 1);
        assert!(store.exists(&keys::ingest_ledger_done("flowers", 0)).await.unwrap());
        // The two images are not taken again.
        w.poll_once().await;
        assert!(w.poll_once().await.is_empty());
        assert_eq!(announced.0.lock().unwrap().len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn links_are_followed_inside_the_incoming_folder_and_recorded_otherwise() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let incoming = dir.path().join("incoming");
        let settings = settings(dir.path(), &incoming);
        let store = Store::open(&settings.store).unwrap();
        put(&incoming, ".uploads/a.jpg", &jpeg(1));
        put(dir.path(), "away/b.jpg", &jpeg(2));
        std::fs::create_dir_all(incoming.join("roses")).unwrap();
        symlink("../.uploads/a.jpg", incoming.join("roses/a.jpg")).unwrap();
        symlink(dir.path().join("away/b.jpg"), incoming.join("roses/b.jpg")).unwrap();
        let announced = Collect::default();
        let mut w = Watcher::start(&settings, &store, &announced).await.unwrap();
        w.poll_once().await;
        let entries = w.poll_once().await;
        let results: BTreeMap<&str, (Outcome, Option<&String>)> = entries
            .iter()
            .flat_map(|e| e.images.iter().map(|i| (i.key.as_str(), (i.result, i.reason.as_ref()))))
            .collect();
        assert_eq!(results["roses/a.jpg"].0, Outcome::Written, "{results:?}");
        let (result, reason) = results["roses/b.jpg"];
        assert_eq!(result, Outcome::SkippedUnreadable);
        assert!(reason.unwrap().contains("outside the source folder"), "{reason:?}");
        let shards = announced.0.lock().unwrap().clone();
        assert_eq!(shards.iter().map(|s| s.records).collect::<Vec<_>>(), vec![1]);
        assert_eq!(shard_names(&store, &shards[0].uri), vec!["a.jpg"]);
    }
}
