//! One-shot ingest of hostile trees, against a real nats-server: symbolic
//! links are followed inside the source folder and reported otherwise; no
//! shard is empty or announced with a count it does not hold; a run with
//! no usable image fails naming the folder; a label map that differs from
//! the stored dataset's is refused and leaves the store as it was.

use bytes::Bytes;
use inception_core::local_nats::LocalNats;
use inception_core::nats::{self, Streams};
use inception_core::shutdown::CancellationToken;
use inception_core::{keys, tfrecord, Settings, Store};
use inception_ingest::continuous::NatsAnnouncer;
use inception_ingest::{run_once, IngestError, RunReport};
use inception_proto::pipeline::ShardReady;
use inception_proto::Message;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

const DATASET: &str = "hostile";

struct Setup {
    dir: tempfile::TempDir,
    _nats: LocalNats,
    store: Store,
    streams: Streams,
}

impl Setup {
    async fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let nats_server = LocalNats::start(&dir.path().join("nats")).unwrap();
        let settings = Settings::load(None, &[("nats.url".into(), nats_server.url())]).unwrap();
        let client = nats::connect(&settings.nats, "test", &CancellationToken::new()).await.unwrap();
        let streams = Streams::new(client, &settings.nats.subject_prefix);
        let store = Store::open(&Setup::settings_of(dir.path(), &nats_server.url(), &[]).store).unwrap();
        Setup { dir, _nats: nats_server, store, streams }
    }

    fn settings_of(dir: &Path, nats: &str, extra: &[(&str, String)]) -> Settings {
        let mut o: Vec<(String, String)> = vec![
            ("nats.url".into(), nats.to_string()),
            ("store.url".into(), format!("file://{}", dir.join("store").display())),
            ("dataset.name".into(), DATASET.into()),
            ("ingest.train_directory".into(), dir.join("train").display().to_string()),
            ("ingest.train_shards".into(), "1".into()),
            ("ingest.num_threads".into(), "1".into()),
        ];
        o.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        Settings::load(None, &o).unwrap()
    }

    fn train(&self) -> PathBuf {
        self.dir.path().join("train")
    }

    /// One-shot ingest with these settings over the defaults above.
    async fn run(&self, extra: &[(&str, String)]) -> Result<RunReport, IngestError> {
        let settings = Setup::settings_of(self.dir.path(), &self._nats.url(), extra);
        self.streams.shards().await.unwrap();
        let announcer = NatsAnnouncer { streams: self.streams.clone(), shutdown: CancellationToken::new() };
        run_once(&settings, &self.store, &announcer).await
    }

    /// Every ShardReady announced for the train split so far.
    async fn announced(&self) -> Vec<ShardReady> {
        let stream = self.streams.shards().await.unwrap();
        let history = self.streams.history(&stream, &self.streams.subjects.shards(DATASET, "train")).await.unwrap();
        history.iter().map(|p| ShardReady::decode(p.as_ref()).unwrap()).collect()
    }

    /// Records in a stored shard.
    async fn records_in(&self, key: &str) -> usize {
        let bytes = self.store.get(key).await.unwrap();
        tfrecord::records(&bytes).inspect(|r| assert!(r.is_ok(), "{r:?}")).count()
    }

    /// Every object of the store with its bytes.
    async fn snapshot(&self) -> Vec<(String, Bytes)> {
        let mut out = Vec::new();
        for key in self.store.list("").await.unwrap() {
            let bytes = self.store.get(&key).await.unwrap();
            out.push((key, bytes));
        }
        out
    }

    fn labels_file(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }
}

/// A shard's key (not a manifest's, under `manifests/`).
fn is_shard_key(key: &str) -> bool {
    key.strip_prefix("datasets/hostile/").is_some_and(|n| n.starts_with("train-") && !n.contains('/'))
}

fn jpeg(seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(16, 12, |x, y| image::Rgb([seed, (x * 9) as u8, (y * 13) as u8]));
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img).write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// The report's skipped lines as (base name, result, reason).
fn skipped(report: &RunReport) -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = report
        .splits
        .iter()
        .flat_map(|s| s.skipped.iter())
        .map(|s| {
            let name = Path::new(&s.file).file_name().unwrap().to_string_lossy().into_owned();
            (name, s.result.as_str().to_string(), s.reason.clone())
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_inside_the_tree_are_followed_and_the_others_reported() {
    let s = Setup::new().await;
    let train = s.train();
    // Originals in a hidden folder of the tree (not a label), linked in.
    write(&train.join(".originals/x.jpg"), &jpeg(10));
    write(&train.join(".originals/y.jpg"), &jpeg(20));
    write(&train.join("roses/z.jpg"), &jpeg(30));
    std::fs::create_dir_all(train.join("daisy")).unwrap();
    symlink("../.originals/x.jpg", train.join("daisy/x.jpg")).unwrap();
    symlink(train.join(".originals/y.jpg"), train.join("roses/y.jpg")).unwrap();
    // A good image, but outside the tree; a link to nothing; a loop.
    write(&s.dir.path().join("elsewhere/secret.jpg"), &jpeg(40));
    symlink(s.dir.path().join("elsewhere/secret.jpg"), train.join("roses/outside.jpg")).unwrap();
    symlink("missing.jpg", train.join("roses/dangling.jpg")).unwrap();
    symlink("loop-b.jpg", train.join("roses/loop-a.jpg")).unwrap();
    symlink("loop-a.jpg", train.join("roses/loop-b.jpg")).unwrap();

    let report = s.run(&[]).await.unwrap();
    let split = &report.splits[0];
    assert_eq!((split.found, split.written), (7, 3), "{report:?}");
    let lines = skipped(&report);
    let names: Vec<&str> = lines.iter().map(|l| l.0.as_str()).collect();
    assert_eq!(names, vec!["dangling.jpg", "loop-a.jpg", "loop-b.jpg", "outside.jpg"], "{lines:?}");
    for (name, _, reason) in &lines {
        assert!(reason.contains("symbolic link"), "{name}: {reason}");
    }
    assert!(lines[0].2.contains("missing.jpg") && lines[0].2.contains("dangling"), "{lines:?}");
    assert!(lines[1].2.contains("loop"), "{lines:?}");
    assert!(lines[3].2.contains("outside"), "{lines:?}");
    let counted: usize = report.counts.values().sum();
    assert_eq!(counted, 7, "every input is counted: {report:?}");

    let announced = s.announced().await;
    assert_eq!(announced.len(), 1);
    assert_eq!(announced[0].records, 3);
    assert_eq!(s.records_in(&announced[0].uri).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_without_a_usable_image_fails_and_writes_no_shard() {
    let s = Setup::new().await;
    let train = s.train();
    write(&s.dir.path().join("elsewhere/a.jpg"), &jpeg(1));
    std::fs::create_dir_all(train.join("daisy")).unwrap();
    symlink(s.dir.path().join("elsewhere/a.jpg"), train.join("daisy/a.jpg")).unwrap();
    write(&train.join("roses/b.jpg"), b"");
    let report_file = s.dir.path().join("report.json");

    let err = s
        .run(&[("ingest.train_shards", "2".into()), ("ingest.report_file", report_file.display().to_string())])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&train.display().to_string()), "{err}");
    assert!(err.contains("<label>/<image>"), "{err}");
    assert!(s.announced().await.is_empty());
    let shards: Vec<String> =
        s.store.list("datasets/hostile/").await.unwrap().into_iter().filter(|k| is_shard_key(k)).collect();
    assert!(shards.is_empty(), "{shards:?}");
    // The report still says why each input was not used.
    let report: RunReport = serde_json::from_slice(&std::fs::read(&report_file).unwrap()).unwrap();
    let names: Vec<String> = skipped(&report).into_iter().map(|l| l.0).collect();
    assert_eq!(names, vec!["a.jpg", "b.jpg"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_shard_is_empty_and_every_count_is_what_the_shard_holds() {
    let s = Setup::new().await;
    let train = s.train();
    // 4 shards of one image each: three of them only hold unusable files.
    write(&train.join("daisy/good.jpg"), &jpeg(5));
    write(&train.join("daisy/empty.jpg"), b"");
    write(&train.join("roses/text.jpg"), b"not an image");
    write(&train.join("roses/cut.jpg"), &jpeg(6)[..40]);

    let report = s.run(&[("ingest.train_shards", "4".into()), ("ingest.num_threads", "2".into())]).await.unwrap();
    assert_eq!(report.splits[0].written, 1);
    assert_eq!(report.splits[0].shards.len(), 1, "{report:?}");
    let announced = s.announced().await;
    assert_eq!(announced.len(), 1, "{announced:?}");
    assert_eq!(announced[0].records, 1);
    let stored: Vec<String> =
        s.store.list("datasets/hostile/").await.unwrap().into_iter().filter(|k| is_shard_key(k)).collect();
    assert_eq!(stored, vec![announced[0].uri.clone()]);
    assert_eq!(s.records_in(&announced[0].uri).await, 1);
    // Its manifest (beside the shards, never listed as one) names the one good image.
    let bytes = s.store.get(&keys::shard_manifest(&announced[0].uri)).await.unwrap();
    let manifest: inception_core::manifest::ShardManifest = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(manifest.records, 1);
    let image = &manifest.images[0];
    assert_eq!(
        (image.source.as_str(), image.label, image.text.as_str()),
        (&*train.join("daisy/good.jpg").display().to_string(), 1, "daisy")
    );
    assert_eq!(image.sha256, inception_core::manifest::sha256_hex(&jpeg(5)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_shard_is_announced_with_the_records_it_holds() {
    let s = Setup::new().await;
    let train = s.train();
    write(&train.join("daisy/a.jpg"), &jpeg(1));
    write(&train.join("daisy/b.jpg"), &jpeg(2));
    s.run(&[]).await.unwrap();
    let key = keys::shard(DATASET, "train", 0, 1);
    assert_eq!(s.records_in(&key).await, 2);
    // The source grew since: the stored shard is kept, and its count (in
    // the report, and in the announcement, which JetStream drops here as a
    // duplicate of the first) is the 2 records it holds, not 3.
    write(&train.join("daisy/c.jpg"), &jpeg(3));
    let again = s.run(&[]).await.unwrap();
    assert_eq!(again.splits[0].written, 2, "{again:?}");
    assert_eq!(s.records_in(&key).await, 2);
    for a in s.announced().await {
        assert_eq!(a.records as usize, s.records_in(&a.uri).await, "{a:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_different_label_map_is_refused_and_changes_nothing() {
    let s = Setup::new().await;
    let train = s.train();
    write(&train.join("daisy/a.jpg"), &jpeg(1));
    write(&train.join("roses/b.jpg"), &jpeg(2));
    let first = s.labels_file("first.txt", "daisy\nroses\n");
    s.run(&[("ingest.labels_file", first.clone())]).await.unwrap();
    let before = s.snapshot().await;
    let announced = s.announced().await.len();

    let swapped = s.labels_file("swapped.txt", "roses\ndaisy\n");
    let err = s.run(&[("ingest.labels_file", swapped.clone())]).await.unwrap_err().to_string();
    assert!(err.contains("labels.txt") && err.contains(&swapped), "{err}");
    assert!(err.contains("label 1") && err.contains("\"daisy\"") && err.contains("\"roses\""), "{err}");
    assert!(err.contains("dataset"), "says how to proceed: {err}");
    let renamed = s.labels_file("renamed.txt", "daisy\ntulips\n");
    let err = s.run(&[("ingest.labels_file", renamed)]).await.unwrap_err().to_string();
    assert!(err.contains("label 2") && err.contains("\"tulips\""), "{err}");
    // Default labels (sorted folders) that add one.
    write(&train.join("tulips/c.jpg"), &jpeg(3));
    let err = s.run(&[]).await.unwrap_err().to_string();
    assert!(err.contains("label 3") && err.contains("\"tulips\""), "{err}");
    std::fs::remove_dir_all(train.join("tulips")).unwrap();
    assert_eq!(s.snapshot().await, before, "a refused run changes nothing in the store");
    assert_eq!(s.announced().await.len(), announced);

    // The same map (from the folders this time) proceeds.
    s.run(&[]).await.unwrap();
    assert_eq!(s.store.get(&keys::labels(DATASET)).await.unwrap(), Bytes::from_static(b"daisy\nroses\n"));
}
