//! The ingest binary on a folder whose images are all symbolic links
//! leading out of it (issue 16's example: it used to write and announce
//! empty shards and exit 0): it exits non-zero naming the folder and the
//! layout it expected, reports every link with its reason and writes no
//! shard. The same links pointing inside the folder are ingested.

use inception_core::local_nats::LocalNats;
use inception_core::settings::env_vars;
use inception_integration_tests::Proc;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

fn ingest(dir: &Path, train: &Path, dataset: &str, nats: &LocalNats) -> (bool, String, serde_json::Value) {
    let logs = dir.join(format!("logs-{dataset}"));
    std::fs::create_dir_all(&logs).unwrap();
    let report = dir.join(format!("{dataset}.json"));
    let mut env = env_vars([
        ("NATS__URL", nats.url()),
        ("STORE__URL", format!("file://{}", dir.join("store").display())),
        ("DATASET__NAME", dataset.to_string()),
        ("INGEST__METRICS_ADDR", "127.0.0.1:0".to_string()),
    ]);
    env.push(("NO_COLOR".into(), "1".into()));
    let args = ["--train-directory", train.to_str().unwrap(), "--report", report.to_str().unwrap()];
    let mut p = Proc::spawn("inception-ingest", &args, &env, &logs);
    let status = p.wait(Duration::from_secs(120));
    let (out, err) = p.output();
    let json = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    (status.success(), format!("{out}\n{err}"), json)
}

#[test]
fn a_folder_of_links_out_of_it_fails_loudly_and_links_inside_are_ingested() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    inception_demo_data::generate(&photos, 2, 0, 2).unwrap();
    let originals = photos.join("train");
    let nats = LocalNats::start(&dir.path().join("nats")).unwrap();

    // train/<label>/<image> -> photos/train/<label>/<image>: outside the tree.
    let train = dir.path().join("links");
    let mut linked = 0;
    for label in std::fs::read_dir(&originals).unwrap().map(|e| e.unwrap()) {
        std::fs::create_dir_all(train.join(label.file_name())).unwrap();
        for image in std::fs::read_dir(label.path()).unwrap().map(|e| e.unwrap()) {
            symlink(image.path(), train.join(label.file_name()).join(image.file_name())).unwrap();
            linked += 1;
        }
    }
    let (ok, output, report) = ingest(dir.path(), &train, "out", &nats);
    assert!(!ok, "{output}");
    assert!(output.contains("no usable image") && output.contains(train.to_str().unwrap()), "{output}");
    assert!(output.contains("<label>/<image>"), "{output}");
    let skipped = report["splits"][0]["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), linked, "{report}");
    assert!(skipped.iter().all(|s| s["reason"].as_str().unwrap().contains("outside the source folder")), "{report}");
    let shards: Vec<_> = std::fs::read_dir(dir.path().join("store/datasets/out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("train-"))
        .collect();
    assert!(shards.is_empty(), "{shards:?}");

    // The originals moved inside the tree (a hidden folder, not a label): followed.
    std::fs::rename(&originals, train.join(".originals")).unwrap();
    for label in std::fs::read_dir(&train).unwrap().map(|e| e.unwrap()) {
        let name = label.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        for image in std::fs::read_dir(label.path()).unwrap().map(|e| e.unwrap()) {
            let path = image.path();
            std::fs::remove_file(&path).unwrap();
            symlink(Path::new("../.originals").join(&name).join(image.file_name()), &path).unwrap();
        }
    }
    let (ok, output, report) = ingest(dir.path(), &train, "inside", &nats);
    assert!(ok, "{output}");
    assert_eq!(report["splits"][0]["written"], linked, "{report}");
    assert!(report["splits"][0]["skipped"].as_array().unwrap().is_empty(), "{report}");
}
