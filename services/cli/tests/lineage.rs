//! `inception lineage` from a store written by hand: the line of
//! checkpoints (with a pruned ancestor), and whether images were trained
//! on, found in shard manifests by source, end of source, hash or local file.

use inception_cli::lineage::{gather, render_text, resolve, Query, Verdict};
use inception_core::manifest::{sha256_hex, ManifestImage, ShardManifest};
use inception_core::settings::StoreSettings;
use inception_core::{keys, Settings, Store};
use inception_model::checkpoint::{self, Ancestor, CheckpointMeta, Lineage, ShardCount};
use inception_model::ModelConfig;

const A: &str = "datasets/flowers/train-00000-of-00002";
const B: &str = "datasets/flowers/train-00001-of-00002";

fn image(source: &str, label: i64) -> ManifestImage {
    ManifestImage {
        source: source.into(),
        size: source.len() as u64,
        sha256: sha256_hex(source.as_bytes()),
        label,
        text: ["daisy", "roses"][label as usize - 1].into(),
    }
}

fn counts(of: &[(&str, u64)]) -> Vec<ShardCount> {
    of.iter().map(|(s, n)| ShardCount { shard: s.to_string(), examples: *n }).collect()
}

/// Writes an object of the local store under `root` (as the store lays them out).
fn put(root: &std::path::Path, key: &str, json: Vec<u8>) {
    let path = root.join(key);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, json).unwrap();
}

fn put_meta(root: &std::path::Path, step: u64, lineage: Lineage) -> String {
    let meta = CheckpointMeta {
        format_version: checkpoint::FORMAT_VERSION,
        run: "r".into(),
        step,
        labels: vec!["daisy".into(), "roses".into()],
        model: ModelConfig::tiny(3),
        bn_updates: step,
        examples_seen: lineage.total_examples,
        weights: keys::checkpoint_weights("r", step),
        created_unix: 0,
        lineage,
    };
    let key = keys::checkpoint_metadata("r", step);
    put(root, &key, serde_json::to_vec(&meta).unwrap());
    key
}

#[tokio::test]
async fn the_line_and_the_images_of_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let url = format!("file://{}", root.display());
    let store = Store::open(&StoreSettings { url, ..Settings::defaults().unwrap().store }).unwrap();
    let a = ShardManifest::new(
        A,
        vec![
            image("/data/train/daisy/a.jpg", 1),
            image("/data/train/daisy/b.jpg", 1),
            image("/data/train/roses/c.jpg", 2),
        ],
    );
    let b = ShardManifest::new(B, vec![image("/data/train/roses/d.jpg", 2), image("/data/train/roses/e.jpg", 2)]);
    for m in [&a, &b] {
        put(&root, &keys::shard_manifest(&m.shard), serde_json::to_vec(m).unwrap());
    }
    let first = Lineage {
        examples: 8,
        shards: counts(&[(A, 6), (B, 2)]),
        total_examples: 8,
        total_shards: counts(&[(A, 6), (B, 2)]),
        ..Default::default()
    };
    let first_key = put_meta(&root, 10, first);
    let second = Lineage {
        parent: Some(first_key.clone()),
        parent_step: Some(10),
        examples: 3,
        shards: counts(&[(A, 3)]),
        total_examples: 11,
        total_shards: counts(&[(A, 9), (B, 2)]),
        ancestors: vec![Ancestor { step: 10, metadata: first_key.clone(), examples: 8 }],
        ..Default::default()
    };
    let second_key = put_meta(&root, 20, second);
    assert_eq!(resolve(&store, "r", "20").await.unwrap(), second_key);
    assert!(resolve(&store, "r", "promoted").await.unwrap_err().to_string().contains("no promoted pointer"));

    let local = dir.path().join("d.jpg");
    std::fs::write(&local, "/data/train/roses/d.jpg").unwrap();
    let queries = [
        Query::of("daisy/b.jpg").unwrap(),
        Query::of(local.to_str().unwrap()).unwrap(),
        Query::of(&sha256_hex(b"/data/train/roses/c.jpg").to_uppercase()).unwrap(),
        Query::of("roses/never.jpg").unwrap(),
    ];
    let report = gather(&store, &second_key, &queries).await.unwrap();
    let steps: Vec<(u64, Option<usize>)> =
        report.history.iter().map(|h| (h.step, h.shards.as_ref().map(Vec::len))).collect();
    assert_eq!(steps, vec![(20, Some(1)), (10, Some(2))]);
    let [b_jpg, d_jpg, c_jpg, never] = &report.images[..] else { panic!("{:?}", report.images) };
    assert_eq!(b_jpg.verdict, Verdict::Yes);
    assert_eq!((b_jpg.found[0].shard.as_str(), b_jpg.found[0].records.as_slice()), (A, &[1][..]));
    assert_eq!((b_jpg.found[0].examples_from_shard, b_jpg.found[0].examples_from_shard_since_parent), (9, 3));
    assert!((b_jpg.found[0].estimated_draws - 3.0).abs() < 1e-12, "9 examples of 3 records: about 3 each");
    assert_eq!((d_jpg.verdict, d_jpg.found[0].shard.as_str()), (Verdict::Yes, B), "a local file, by its hash");
    assert!((d_jpg.found[0].estimated_draws - 1.0).abs() < 1e-12);
    assert_eq!((c_jpg.verdict, c_jpg.found[0].label.as_str()), (Verdict::Yes, "roses"));
    assert_eq!(never.verdict, Verdict::No);
    let text = render_text(&report);
    assert!(text.contains("estimated draws of this image: 3.00"), "{text}");
    assert!(text.contains("step 20: 3 examples since step 10"), "{text}");

    // The parent pruned: the line still shows it, from what its child recorded.
    store.delete(&first_key).await.unwrap();
    // ... and examples of unnamed shards, or a shard without a manifest, leave "no" unsure.
    store.delete(&keys::shard_manifest(B)).await.unwrap();
    let report = gather(&store, &second_key, &queries).await.unwrap();
    assert_eq!((report.history[1].step, report.history[1].examples), (10, 8));
    assert!(report.history[1].shards.is_none());
    assert_eq!(report.images[3].verdict, Verdict::Unknown);
    assert_eq!(report.images[3].shards_without_manifest, vec![B.to_string()]);
    assert_eq!(report.images[1].verdict, Verdict::Unknown, "d.jpg's shard has no manifest any more");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["images"][0]["verdict"], "yes");
    assert_eq!(json["lineage"]["total_examples"], 11);
    assert!(render_text(&report).contains("pruned"));
}
