//! `inception classify`, the real binary, with a tiny checkpoint whose
//! logits are constant: background scores highest, then daisy, dandelion...
//! so what is printed can be told exactly.

mod support;

use inception_core::keys;
use inception_model::checkpoint::{self, CheckpointMeta, CheckpointPointer};
use inception_model::{InceptionV3, ModelConfig};
use serde_json::Value;
use std::path::{Path, PathBuf};
use support::{inception, mkfifo, photo, run, store_setting, write};
use tch::nn::VarStore;
use tch::Tensor;

const LABELS: [&str; 5] = ["daisy", "dandelion", "roses", "sunflowers", "tulips"];
/// Background first: a classifier that printed index 0 would print it first.
const BIAS: [f32; 6] = [9.0, 4.0, 3.0, 2.0, 1.0, 0.0];

/// Writes checkpoint `step` of run `default` into the file store at
/// `store` (weights, metadata, pointer); returns the metadata's path.
fn tiny_checkpoint(store: &Path, step: u64) -> PathBuf {
    let model = ModelConfig::tiny(BIAS.len() as i64);
    let vs = VarStore::new(tch::Device::Cpu);
    let _ = InceptionV3::new(&vs.root(), &model);
    let vars = vs.variables();
    tch::no_grad(|| {
        let _ = vars["fc.weight"].shallow_clone().zero_();
        vars["fc.bias"].shallow_clone().copy_(&Tensor::from_slice(&BIAS));
    });
    let bytes = checkpoint::tensors_to_bytes(&vars.into_iter().collect::<Vec<_>>()).unwrap();
    let meta = CheckpointMeta {
        format_version: checkpoint::FORMAT_VERSION,
        run: "default".into(),
        step,
        labels: LABELS.iter().map(|l| l.to_string()).collect(),
        model,
        bn_updates: 0,
        examples_seen: 0,
        weights: keys::checkpoint_weights("default", step),
        created_unix: 0,
        lineage: Default::default(),
    };
    write(&store.join(&meta.weights), &bytes);
    let key = keys::checkpoint_metadata("default", step);
    let metadata = write(&store.join(&key), &serde_json::to_vec(&meta).unwrap());
    let pointer = CheckpointPointer { step, metadata: key.clone(), all: vec![key] };
    write(&store.join(keys::checkpoint_pointer("default")), &serde_json::to_vec(&pointer).unwrap());
    metadata
}

fn json(r: &support::Run) -> Value {
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {r:?}"))
}

fn labels(result: &Value) -> Vec<String> {
    let predictions = result["predictions"].as_array().unwrap_or_else(|| panic!("no predictions: {result}"));
    predictions.iter().map(|p| p["label"].as_str().unwrap().to_string()).collect()
}

fn os(s: &str) -> &std::ffi::OsStr {
    s.as_ref()
}

#[test]
fn a_local_metadata_file_and_a_folder_of_images_without_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let metadata = tiny_checkpoint(&dir.path().join("store"), 10);
    // Copied out of the store, as one downloads a checkpoint: the weights
    // are found next to the metadata.
    let downloaded = dir.path().join("downloaded");
    std::fs::create_dir_all(&downloaded).unwrap();
    let copied = downloaded.join("model.ckpt-10.json");
    std::fs::copy(&metadata, &copied).unwrap();
    std::fs::copy(metadata.with_extension("safetensors"), downloaded.join("model.ckpt-10.safetensors")).unwrap();

    let images = dir.path().join("images");
    photo(&images, "b.jpg");
    photo(&images, "a.JPG");
    write(&images.join("notes.txt"), b"not an image");
    std::fs::create_dir_all(images.join("nested")).unwrap();
    photo(&images.join("nested"), "c.jpg");

    for checkpoint in [&metadata, &copied] {
        let r = run(inception([
            os("classify"),
            os("--checkpoint"),
            checkpoint.as_os_str(),
            os("--top-k"),
            os("2"),
            os("--json"),
            os("--set"),
            os("eval.device=cpu"),
            images.as_os_str(),
        ]));
        assert_eq!(r.code(), Some(0), "{r:?}");
        let doc = json(&r);
        assert_eq!(doc["checkpoint_step"], 10);
        let results = doc["results"].as_array().unwrap();
        let files: Vec<&str> = results.iter().map(|r| r["file"].as_str().unwrap()).collect();
        let expected: Vec<String> = ["a.JPG", "b.jpg"].iter().map(|n| images.join(n).display().to_string()).collect();
        assert_eq!(files, expected, "sorted, images only, not recursive");
        for result in results {
            assert_eq!(labels(result), ["daisy", "dandelion"], "{result}");
        }
        assert!(!r.stdout.contains("background"), "{}", r.stdout);
    }
}

#[test]
fn latest_and_store_keys_print_labels_but_never_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    tiny_checkpoint(&store, 10);
    let image = photo(dir.path(), "photo.jpg");
    let set = store_setting(&store);
    let key = keys::checkpoint_metadata("default", 10);
    for checkpoint in ["latest", key.as_str()] {
        // More than there are labels: every label, still no background.
        let r = run(inception([
            os("--set"),
            os(&set),
            os("classify"),
            os("--checkpoint"),
            os(checkpoint),
            os("--top-k"),
            os("10"),
            image.as_os_str(),
            os("--set"),
            os("eval.device=cpu"),
        ]));
        assert_eq!(r.code(), Some(0), "{checkpoint}: {r:?}");
        let line = r.stdout.lines().next().unwrap_or_default();
        assert!(line.starts_with(&format!("{}: daisy (", image.display())), "{checkpoint}: {}", r.stdout);
        for label in LABELS {
            assert!(line.contains(label), "{checkpoint}: {line}");
        }
        assert!(!r.stdout.contains("background"), "{checkpoint}: {}", r.stdout);
    }
}

#[test]
fn special_and_oversized_images_are_refused_by_name_and_the_others_classified() {
    let dir = tempfile::tempdir().unwrap();
    let metadata = tiny_checkpoint(&dir.path().join("store"), 10);
    let set = store_setting(&dir.path().join("store"));
    let good = photo(dir.path(), "good.jpg");
    let fifo = mkfifo(&dir.path().join("pipe.jpg"));
    let folder = dir.path().join("folder");
    photo(&folder, "inside.jpg");
    let fifo_inside = mkfifo(&folder.join("stream.png"));
    let r = run(inception([
        os("classify"),
        os("--set"),
        os("eval.device=cpu"),
        os("--set"),
        os(&set),
        fifo.as_os_str(),
        os("/dev/zero"),
        good.as_os_str(),
        folder.as_os_str(),
    ]));
    assert_eq!(r.code(), Some(1), "{r:?}");
    assert!(r.stderr.contains(&format!("{}: skipped: a FIFO", fifo.display())), "{}", r.stderr);
    assert!(r.stderr.contains(&format!("{}: skipped: a FIFO", fifo_inside.display())), "{}", r.stderr);
    assert!(r.stderr.contains("/dev/zero: skipped: a character device"), "{}", r.stderr);
    assert!(r.stdout.contains(&format!("{}: daisy (", good.display())), "{}", r.stdout);
    assert!(r.stdout.contains(&format!("{}: daisy (", folder.join("inside.jpg").display())), "{}", r.stdout);

    let size = std::fs::metadata(&good).unwrap().len();
    let r = run(inception([
        os("classify"),
        os("--checkpoint"),
        metadata.as_os_str(),
        os("--max-file-bytes"),
        os("100"),
        good.as_os_str(),
        os("--set"),
        os("eval.device=cpu"),
    ]));
    assert_eq!(r.code(), Some(1), "{r:?}");
    assert!(
        r.stderr.contains(&format!("{}: skipped: {size} bytes, more than --max-file-bytes 100", good.display())),
        "{}",
        r.stderr
    );
}

#[test]
fn top_k_must_be_at_least_one() {
    let dir = tempfile::tempdir().unwrap();
    let metadata = tiny_checkpoint(&dir.path().join("store"), 10);
    let image = photo(dir.path(), "photo.jpg");
    let r = run(inception([
        os("classify"),
        os("--top-k"),
        os("0"),
        os("--checkpoint"),
        metadata.as_os_str(),
        image.as_os_str(),
    ]));
    assert_eq!(r.code(), Some(2), "{r:?}");
    assert!(r.stderr.contains("--top-k") && r.stderr.contains("at least 1"), "{}", r.stderr);
}

#[test]
fn a_weights_file_is_refused_naming_the_metadata_file_to_give() {
    let dir = tempfile::tempdir().unwrap();
    let metadata = tiny_checkpoint(&dir.path().join("store"), 10);
    let weights = metadata.with_extension("safetensors");
    let image = photo(dir.path(), "photo.jpg");
    let r = run(inception([os("classify"), os("--checkpoint"), weights.as_os_str(), image.as_os_str()]));
    assert_eq!(r.code(), Some(2), "{r:?}");
    assert!(r.stderr.contains(&format!("give its metadata file {}", metadata.display())), "{}", r.stderr);
}

/// A settings mistake is a configuration error: exit 2 naming the key, as
/// the services do (it used to be 1, like a bad image).
#[test]
fn a_bad_setting_exits_2_naming_it() {
    for set in ["pipeline.batch_size=8.5", "store.url=ftp://nowhere"] {
        let r = run(inception(["classify", "--set", set, "--checkpoint", "latest", "photo.jpg"]));
        assert_eq!(r.code(), Some(2), "{set}: {r:?}");
        let key = set.split('=').next().unwrap_or_default();
        assert!(r.stderr.contains(key), "{set}: {}", r.stderr);
    }
}
