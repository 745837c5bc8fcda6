//! Ingest from and to S3: a real S3-compatible server (moto_server, started
//! on a loopback port) holds the incoming images and receives the shards.
//! One-shot ingest reads `s3://bucket/photos/train`, writes to
//! `s3://bucket/store`; `inception records verify` reads a shard back by key.

use bytes::Bytes;
use inception_core::local_nats::LocalNats;
use inception_core::settings::{env_vars, StoreSettings};
use inception_core::Store;
use inception_integration_tests::{record_filenames, Proc, S3Server};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_ingest_reads_and_writes_s3() {
    let dir = tempfile::tempdir().unwrap();
    let (images, logs) = (dir.path().join("images"), dir.path().join("logs"));
    std::fs::create_dir_all(&logs).unwrap();
    let s3 = S3Server::start(&logs);
    s3.create_bucket("pics");
    for (k, v) in s3.env() {
        std::env::set_var(k, v); // this test binary has one test: no other thread reads them
    }
    let settings = |url: &str| StoreSettings {
        url: url.to_string(),
        s3_endpoint: s3.endpoint(),
        s3_allow_http: true,
        s3_region: "us-east-1".into(),
        s3_access_key_id: String::new(),
        s3_secret_access_key: Default::default(),
    };
    inception_demo_data::generate(&images, 2, 1, 3).unwrap();
    let upload = Store::open(&settings("s3://pics/photos")).unwrap();
    let mut expected = Vec::new();
    for split in ["train", "validation"] {
        for label in inception_demo_data::DEMO_LABELS {
            for e in std::fs::read_dir(images.join(split).join(label)).unwrap() {
                let e = e.unwrap();
                let name = e.file_name().to_string_lossy().into_owned();
                let bytes = Bytes::from(std::fs::read(e.path()).unwrap());
                upload.put(&format!("{split}/{label}/{name}"), bytes).await.unwrap();
                if split == "train" {
                    expected.push(name);
                }
            }
        }
    }
    // Odd names and a bad file, in the bucket.
    let good = upload.get("train/roses/roses_0000.jpg").await.unwrap();
    upload.put("train/roses/rose #1 50%.jpg", good.clone()).await.unwrap();
    upload.put("train/roses/notes.jpg", Bytes::from_static(b"not an image")).await.unwrap();
    upload.put("train/roses/nested/deeper.jpg", good).await.unwrap();
    expected.push("rose #1 50%.jpg".into());
    expected.sort();

    let nats = LocalNats::start(&dir.path().join("nats")).unwrap();
    let mut env = env_vars([
        ("NATS__URL", nats.url()),
        ("STORE__URL", "s3://pics/store".to_string()),
        ("DATASET__NAME", "s3set".to_string()),
        ("INGEST__METRICS_ADDR", "127.0.0.1:0".to_string()),
    ]);
    env.extend(s3.env());
    let mut ingest = Proc::spawn(
        "inception-ingest",
        &["--train-directory", "s3://pics/photos/train", "--validation-directory", "s3://pics/photos/validation"],
        &env,
        &logs,
    );
    let status = ingest.wait(Duration::from_secs(120));
    let (out, err) = ingest.output();
    assert!(status.success(), "{out}\n{err}");
    assert!(out.contains("train: 12 images found, 11 written to 2 shards, 1 skipped"), "{out}");
    assert!(out.contains("validation: 5 images found, 5 written to 2 shards"), "{out}");

    let store = Store::open(&settings("s3://pics/store")).unwrap();
    let shards = store.list("datasets/s3set/train-").await.unwrap();
    assert_eq!(shards, vec!["datasets/s3set/train-00000-of-00002", "datasets/s3set/train-00001-of-00002"]);
    let mut names = Vec::new();
    for key in &shards {
        names.extend(record_filenames(&store.get(key).await.unwrap()));
    }
    names.sort();
    assert_eq!(names, expected);
    let labels = store.get("datasets/s3set/labels.txt").await.unwrap();
    assert_eq!(String::from_utf8_lossy(&labels).lines().collect::<Vec<_>>(), inception_demo_data::DEMO_LABELS);
    let report = store.get("datasets/s3set/ingest/report.json").await.unwrap();
    assert!(String::from_utf8_lossy(&report).contains("skipped_not_image"));

    let verify = std::process::Command::new(inception_integration_tests::binary("inception"))
        .args(["records", "verify", &shards[0]])
        .envs(env.iter().cloned())
        .output()
        .unwrap();
    assert!(verify.status.success(), "{verify:?}");
    // The same shard by URL, and a missing one named.
    let url = format!("s3://pics/store/{}", shards[1]);
    let stats = std::process::Command::new(inception_integration_tests::binary("inception"))
        .args(["records", "stats", &url])
        .envs(s3.env())
        .output()
        .unwrap();
    assert!(stats.status.success() && String::from_utf8_lossy(&stats.stdout).contains("label"), "{stats:?}");
    let missing = std::process::Command::new(inception_integration_tests::binary("inception"))
        .args(["records", "verify", "s3://pics/store/datasets/s3set/nothing"])
        .envs(s3.env())
        .output()
        .unwrap();
    assert!(!missing.status.success() && String::from_utf8_lossy(&missing.stderr).contains("nothing"), "{missing:?}");
}
