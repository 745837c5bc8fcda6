//! `inception records stats|verify`, the real binary: several inputs (files,
//! globs, dataset prefixes in the store), special files and oversized files
//! refused by name without blocking, non-TFRecord files named as such, JSON.

mod support;

use serde_json::Value;
use support::{inception, mkfifo, run, shard, store_setting, write};

#[test]
fn special_files_are_refused_by_name_and_the_other_inputs_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = mkfifo(&dir.path().join("pipe.tfrecord"));
    let good = write(&dir.path().join("good.tfrecord"), &shard(&[(1, "daisy"), (2, "roses"), (2, "roses")]));
    for action in ["stats", "verify"] {
        let r = run(inception([
            "records".as_ref(),
            action.as_ref(),
            fifo.as_os_str(),
            "/dev/zero".as_ref(),
            good.as_os_str(),
        ]));
        assert_eq!(r.code(), Some(1), "{action}: {r:?}");
        assert!(r.stderr.contains(&format!("{}: skipped: a FIFO", fifo.display())), "{action}: {}", r.stderr);
        assert!(r.stderr.contains("/dev/zero: skipped: a character device"), "{action}: {}", r.stderr);
        assert!(r.stdout.contains(&format!("{}: 3 records", good.display())), "{action}: {}", r.stdout);
    }
}

#[test]
fn a_file_over_the_size_bound_is_refused_by_name_and_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let big = write(&dir.path().join("big.tfrecord"), &shard(&[(1, "daisy"); 20]));
    let small = write(&dir.path().join("small.tfrecord"), &shard(&[(1, "daisy")]));
    let r = run(inception([
        "records".as_ref(),
        "stats".as_ref(),
        "--max-file-bytes".as_ref(),
        "500".as_ref(),
        big.as_os_str(),
        small.as_os_str(),
    ]));
    assert_eq!(r.code(), Some(1), "{r:?}");
    let size = std::fs::metadata(&big).unwrap().len();
    assert!(
        r.stderr.contains(&format!("{}: skipped: {size} bytes, more than --max-file-bytes 500", big.display())),
        "{}",
        r.stderr
    );
    assert!(r.stdout.contains(&format!("{}: 1 records", small.display())), "{}", r.stdout);
}

#[test]
fn a_file_that_is_not_a_tfrecord_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let photo = support::photo(dir.path(), "photo.jpg");
    let text = write(&dir.path().join("notes.txt"), b"these are not records, only words\n");
    for action in ["stats", "verify"] {
        let r = run(inception(["records".as_ref(), action.as_ref(), photo.as_os_str(), text.as_os_str()]));
        assert_eq!(r.code(), Some(1), "{r:?}");
        assert!(
            r.stderr.contains(&format!("{} is not a TFRecord file: it starts like a JPEG image", photo.display())),
            "{action}: {}",
            r.stderr
        );
        assert!(
            r.stderr.contains(&format!("{} is not a TFRecord file: it starts like text", text.display())),
            "{action}: {}",
            r.stderr
        );
        let counted = format!("{}: 0 records", photo.display());
        assert!(!r.stdout.contains(&counted) && !r.stderr.contains("checksum mismatch"), "{action}: {r:?}");
    }
}

#[test]
fn inspect_prints_a_record_of_a_store_key_and_names_a_file_that_is_no_tfrecord() {
    let store = dataset_store();
    let set = store_setting(store.path());
    let r =
        run(inception(["records", "inspect", "datasets/shapes/train-00001-of-00002", "--index", "2", "--set", &set]));
    assert_eq!(r.code(), Some(0), "{r:?}");
    assert!(r.stdout.contains(r#"image/class/text: bytes = "daisy""#), "{}", r.stdout);
    let photo = support::photo(store.path(), "photo.jpg");
    let r = run(inception(["records".as_ref(), "inspect".as_ref(), photo.as_os_str()]));
    assert_eq!(r.code(), Some(1), "{r:?}");
    assert!(r.stderr.contains("photo.jpg is not a TFRecord file: it starts like a JPEG image"), "{}", r.stderr);
}

/// A store with a dataset of three shards beside files that are not shards.
fn dataset_store() -> tempfile::TempDir {
    let store = tempfile::tempdir().unwrap();
    let d = store.path().join("datasets/shapes");
    write(&d.join("train-00000-of-00002"), &shard(&[(1, "daisy"), (2, "roses")]));
    write(&d.join("train-00001-of-00002"), &shard(&[(2, "roses"), (2, "roses"), (1, "daisy")]));
    write(&d.join("validation-00000-of-00001"), &shard(&[(1, "daisy")]));
    write(&d.join("labels.txt"), b"daisy\nroses\n");
    write(&d.join("ingest/report.json"), b"{}");
    // Another dataset whose name starts the same way: not part of `shapes`.
    write(&store.path().join("datasets/shapes2/train-00000-of-00001"), &shard(&[(1, "daisy")]));
    store
}

fn json(r: &support::Run) -> Value {
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {r:?}"))
}

fn files(doc: &Value) -> Vec<String> {
    doc["files"].as_array().unwrap().iter().map(|f| f["file"].as_str().unwrap().to_string()).collect()
}

#[test]
fn stats_over_a_dataset_prefix_a_glob_or_several_files_as_json() {
    let store = dataset_store();
    let set = store_setting(store.path());

    // A dataset's folder in the store: its shards, nothing else.
    let r = run(inception(["records", "stats", "datasets/shapes", "--json", "--set", &set]));
    assert_eq!(r.code(), Some(0), "{r:?}");
    let doc = json(&r);
    assert_eq!(
        files(&doc),
        [
            "datasets/shapes/train-00000-of-00002",
            "datasets/shapes/train-00001-of-00002",
            "datasets/shapes/validation-00000-of-00001"
        ]
    );
    assert_eq!(doc["total"]["records"], 6);
    assert_eq!(doc["total"]["files"], 3);
    assert_eq!(
        doc["total"]["labels"],
        serde_json::json!([{"label": 1, "text": "daisy", "count": 3}, {"label": 2, "text": "roses", "count": 3}])
    );
    assert_eq!(doc["files"][1]["records"], 3);

    // A glob over store keys, and a prefix that ends inside a name.
    for pattern in ["datasets/shapes/train-*", "datasets/shapes/train-"] {
        let r = run(inception(["--set", &set, "records", "verify", pattern, "--json"]));
        assert_eq!(r.code(), Some(0), "{pattern}: {r:?}");
        let doc = json(&r);
        assert_eq!(files(&doc), ["datasets/shapes/train-00000-of-00002", "datasets/shapes/train-00001-of-00002"]);
        assert_eq!(doc["total"]["records"], 5, "{pattern}");
    }

    // A local glob (as a shell passes it when quoted) and several files.
    let local = store.path().join("datasets/shapes");
    let glob = local.join("train-0000[01]-*");
    let r = run(inception(["records".as_ref(), "stats".as_ref(), glob.as_os_str(), "--json".as_ref()]));
    assert_eq!(r.code(), Some(0), "{r:?}");
    let two = [local.join("train-00000-of-00002"), local.join("train-00001-of-00002")];
    let names: Vec<String> = two.iter().map(|p| p.display().to_string()).collect();
    assert_eq!(files(&json(&r)), names);
    let r = run(inception(["records".as_ref(), "stats".as_ref(), two[1].as_os_str(), two[0].as_os_str()]));
    assert_eq!(r.code(), Some(0), "{r:?}");
    assert!(r.stdout.contains(&format!("{}: 3 records", names[1])), "{}", r.stdout);
    assert!(r.stdout.contains("total: 5 records in 2 files"), "{}", r.stdout);

    // Nothing matches: said so, by name.
    let r = run(inception(["records", "stats", "datasets/nothing-here", "--set", &set]));
    assert_eq!(r.code(), Some(1), "{r:?}");
    assert!(r.stderr.contains("datasets/nothing-here"), "{}", r.stderr);
}

#[test]
fn config_and_set_are_accepted_before_and_after_the_subcommand() {
    let store = dataset_store();
    let set = store_setting(store.path());
    let config = write(
        &store.path().join("cli.toml"),
        format!("[store]\nurl = \"file://{}\"\n", store.path().display()).as_bytes(),
    );
    let config = config.to_str().unwrap();
    let key = "datasets/shapes/validation-00000-of-00001";
    for args in [
        vec!["--set", &set, "records", "stats", key],
        vec!["records", "--set", &set, "stats", key],
        vec!["records", "stats", key, "--set", &set],
        vec!["--config", config, "records", "verify", key],
        vec!["records", "verify", "--config", config, key],
        // Every level's `--set`s count; a later one wins.
        vec!["--set", "store.url=memory:///", "records", "--set", "eval.device=cpu", "stats", key, "--set", &set],
    ] {
        let r = run(inception(&args));
        assert_eq!(r.code(), Some(0), "{args:?}: {r:?}");
        assert!(r.stdout.contains(&format!("{key}: 1 records")), "{args:?}: {}", r.stdout);
    }
}
