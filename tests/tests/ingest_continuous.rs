//! Continuous ingest as a process over a real nats-server: images dropped
//! into the incoming folder become new announced shards; an unknown label is
//! quarantined and a corrupt file skipped without stopping the service; the
//! counts show in /metrics; SIGTERM stops it; a restart takes only what is
//! new, so no image is lost or repeated.

use futures::StreamExt;
use inception_core::local_nats::LocalNats;
use inception_core::settings::env_vars;
use inception_integration_tests::{drop_image, free_port, http_get, next_shard, record_filenames, Proc};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_images_become_announced_shards_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (images, store, logs, incoming) =
        (dir.path().join("images"), dir.path().join("store"), dir.path().join("logs"), dir.path().join("incoming"));
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::create_dir_all(&incoming).unwrap();
    inception_demo_data::generate(&images, 3, 0, 11).unwrap();
    // The generator writes every third image as PNG: take files by number, whatever the format.
    let jpeg = |label: &str, i: usize| {
        let folder = images.join("train").join(label);
        let prefix = format!("{label}_{i:04}.");
        let entry = std::fs::read_dir(&folder)
            .unwrap()
            .filter_map(Result::ok)
            .find(|e| e.file_name().to_string_lossy().starts_with(&prefix));
        std::fs::read(entry.unwrap().path()).unwrap()
    };
    let labels = dir.path().join("labels.txt");
    std::fs::write(&labels, inception_demo_data::DEMO_LABELS.join("\n")).unwrap();
    let nats = LocalNats::start(&dir.path().join("nats")).unwrap();
    let port = free_port();
    let env = env_vars([
        ("NATS__URL", nats.url()),
        ("STORE__URL", format!("file://{}", store.display())),
        ("DATASET__NAME", "live".to_string()),
        ("INGEST__METRICS_ADDR", format!("127.0.0.1:{port}")),
        ("INGEST__SHARD_MAX_IMAGES", "4".to_string()),
        ("INGEST__SHARD_MAX_AGE", "1s".to_string()),
        ("INGEST__POLL_INTERVAL", "0.2s".to_string()),
    ]);
    let args = ["--incoming", incoming.to_str().unwrap(), "--labels-file", labels.to_str().unwrap()];
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut shards = client.subscribe("inception.shards.live.train").await.unwrap();

    let mut ingest = Proc::spawn("inception-ingest", &args, &env, &logs);
    // Four good images: one full shard.
    for i in 0..2 {
        drop_image(&incoming, &format!("roses/r{i}.jpg"), &jpeg("roses", i));
        drop_image(&incoming, &format!("daisy/d{i}.jpg"), &jpeg("daisy", i));
    }
    let first = next_shard(&mut shards, &ingest, Duration::from_secs(30)).await;
    assert_eq!(first.records, 4);
    assert!(first.uri.starts_with("datasets/live/train-live-"), "{}", first.uri);
    assert_eq!(first.labels.len(), 5);
    // A corrupt file, an unknown label and one good image: a shard by age.
    drop_image(&incoming, "roses/broken.jpg", &jpeg("roses", 0)[..200]);
    drop_image(&incoming, "cactus/c0.jpg", &jpeg("tulips", 0));
    drop_image(&incoming, "tulips/t0.jpg", &jpeg("tulips", 1));
    let second = next_shard(&mut shards, &ingest, Duration::from_secs(30)).await;
    assert_eq!(second.records, 1);
    assert_ne!(second.uri, first.uri);
    let quarantine = store.join("datasets/live/ingest/quarantine/cactus");
    assert!(quarantine.join("c0.jpg").is_file());
    let reason = std::fs::read_to_string(quarantine.join("c0.jpg.reason.json")).unwrap();
    assert!(reason.contains("cactus") && reason.contains("not in the label set"), "{reason}");
    let (_, metrics) = http_get(port, "/metrics").unwrap();
    for (result, n) in [("written", 5), ("skipped_corrupt", 1), ("quarantined", 1)] {
        let line = format!("inception_ingest_images_total{{result=\"{result}\"}} {n}");
        assert!(metrics.contains(&line), "{line} not in\n{metrics}");
    }
    assert!(ingest.is_running());
    assert!(ingest.terminate(Duration::from_secs(20)).success());

    // While stopped: two more images. The restart takes just those two.
    drop_image(&incoming, "roses/r9.jpg", &jpeg("roses", 2));
    drop_image(&incoming, "sunflowers/s9.jpg", &jpeg("sunflowers", 0));
    let mut ingest = Proc::spawn("inception-ingest", &args, &env, &logs);
    let third = next_shard(&mut shards, &ingest, Duration::from_secs(30)).await;
    assert_eq!(third.records, 2);
    assert!(ingest.terminate(Duration::from_secs(20)).success());
    assert!(tokio::time::timeout(Duration::from_millis(300), shards.next()).await.is_err(), "no other announcement");

    let mut names: Vec<String> = [&first, &second, &third]
        .iter()
        .flat_map(|s| record_filenames(&std::fs::read(store.join(&s.uri)).unwrap()))
        .collect();
    names.sort();
    assert_eq!(names, vec!["d0.jpg", "d1.jpg", "r0.jpg", "r1.jpg", "r9.jpg", "s9.jpg", "t0.jpg"]);
}
