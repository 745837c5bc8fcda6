//! A trainer started before any upload (continuous training waiting for its
//! first images) makes its learning-rate schedule from the shards announced
//! by the time its first batch comes, not from the nothing announced at its
//! start (an epoch of 1 example: the staircase would cut the rate every
//! few steps).

use inception_core::local_nats::LocalNats;
use inception_core::settings::env_vars;
use inception_integration_tests::{drop_image, failure_lines, files_under, Proc};
use std::time::Duration;

#[test]
fn a_trainer_started_before_the_first_upload_counts_the_epoch_when_data_comes() {
    let dir = tempfile::tempdir().unwrap();
    let (pool, store, logs, incoming) =
        (dir.path().join("pool"), dir.path().join("store"), dir.path().join("logs"), dir.path().join("incoming"));
    for d in [&logs, &incoming] {
        std::fs::create_dir_all(d).unwrap();
    }
    inception_demo_data::generate(&pool, 6, 0, 9).unwrap();
    let labels = dir.path().join("labels.txt");
    std::fs::write(&labels, inception_demo_data::DEMO_LABELS.join("\n")).unwrap();
    let nats = LocalNats::start(&dir.path().join("nats")).unwrap();
    let env = env_vars([
        ("NATS__URL", nats.url()),
        ("STORE__URL", format!("file://{}", store.display())),
        ("MODEL__IMAGE_SIZE", "75".into()),
        ("MODEL__DEPTH_MULTIPLIER", "0.1".into()),
        ("MODEL__MIN_DEPTH", "8".into()),
        ("PIPELINE__BATCH_SIZE", "8".into()),
        ("TRAIN__MAX_STEPS", "3".into()),
        ("TRAIN__CHECKPOINT_EVERY_STEPS", "3".into()),
        ("INGEST__SHARD_MAX_IMAGES", "10".into()),
        ("INGEST__SHARD_MAX_AGE", "1s".into()),
        ("INGEST__POLL_INTERVAL", "0.3s".into()),
        ("INGEST__METRICS_ADDR", "127.0.0.1:0".into()),
        ("PREPROCESS__METRICS_ADDR", "127.0.0.1:0".into()),
        ("TRAIN__METRICS_ADDR", "127.0.0.1:0".into()),
    ]);
    let args = ["--incoming", incoming.to_str().unwrap(), "--labels-file", labels.to_str().unwrap()];
    let _ingest = Proc::spawn("inception-ingest", &args, &env, &logs);
    let _worker = Proc::spawn("inception-preprocess", &[], &env, &logs);
    let mut trainer = Proc::spawn("inception-trainer", &[], &env, &logs);
    // The trainer is up (labels written, nothing announced) before any upload.
    std::thread::sleep(Duration::from_secs(4));
    assert!(trainer.is_running(), "{:?}", trainer.output());
    for path in files_under(&pool.join("train")) {
        let label = path.parent().and_then(|p| p.file_name()).unwrap().to_string_lossy().into_owned();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        drop_image(&incoming, &format!("{label}/{name}"), &std::fs::read(&path).unwrap());
    }
    let status = trainer.wait(Duration::from_secs(180));
    let (_, err) = trainer.output();
    assert!(status.success(), "{}", failure_lines(&err, 5));
    let schedule = err.lines().find(|l| l.contains("examples per epoch)")).unwrap_or_else(|| panic!("{err}"));
    let examples: u64 = schedule
        .rsplit('(')
        .next()
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{schedule}"));
    assert!(examples >= 10, "the epoch counts the announced uploads: {schedule}");
}
