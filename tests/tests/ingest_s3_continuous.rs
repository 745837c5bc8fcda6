//! Continuous ingest with everything in S3 (a real moto_server on loopback):
//! images uploaded under `s3://pics/incoming/<label>/` become announced
//! shards in `s3://pics/store`, an unknown label is quarantined in the
//! bucket, and a restart takes only what was uploaded meanwhile.

use bytes::Bytes;
use futures::StreamExt;
use inception_core::local_nats::LocalNats;
use inception_core::settings::{env_vars, Secret, Settings, StoreSettings};
use inception_core::Store;
use inception_integration_tests::{next_shard, record_filenames, Proc, S3Server};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_to_an_s3_prefix_become_announced_shards() {
    let dir = tempfile::tempdir().unwrap();
    let (images, logs) = (dir.path().join("images"), dir.path().join("logs"));
    std::fs::create_dir_all(&logs).unwrap();
    let s3 = S3Server::start(&logs);
    s3.create_bucket("pics");
    // Credentials from the settings, not the environment, on this side.
    let settings = |url: &str| StoreSettings {
        url: url.to_string(),
        s3_endpoint: s3.endpoint(),
        s3_allow_http: true,
        s3_access_key_id: "test".into(),
        s3_secret_access_key: Secret::new("test"),
        ..Settings::defaults().unwrap().store
    };
    let incoming = Store::open(&settings("s3://pics/incoming")).unwrap();
    let store = Store::open(&settings("s3://pics/store")).unwrap();
    inception_demo_data::generate(&images, 3, 0, 21).unwrap();
    let image = |label: &str, i: usize| {
        let folder = images.join("train").join(label);
        let entry = std::fs::read_dir(&folder).unwrap().filter_map(Result::ok).nth(i).unwrap();
        Bytes::from(std::fs::read(entry.path()).unwrap())
    };
    let labels = dir.path().join("labels.txt");
    std::fs::write(&labels, inception_demo_data::DEMO_LABELS.join("\n")).unwrap();

    let nats = LocalNats::start(&dir.path().join("nats")).unwrap();
    let mut env = env_vars([
        ("NATS__URL", nats.url()),
        ("STORE__URL", "s3://pics/store".to_string()),
        ("DATASET__NAME", "s3live".to_string()),
        ("INGEST__METRICS_ADDR", "127.0.0.1:0".to_string()),
        ("INGEST__SHARD_MAX_IMAGES", "10".to_string()),
        ("INGEST__SHARD_MAX_AGE", "1s".to_string()),
        ("INGEST__POLL_INTERVAL", "0.2s".to_string()),
    ]);
    env.extend(s3.env());
    let args = ["--incoming", "s3://pics/incoming", "--labels-file", labels.to_str().unwrap()];
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut announced = client.subscribe("inception.shards.s3live.train").await.unwrap();

    // Uploaded before the start, so the first listing sees them together.
    for (key, bytes) in
        [("roses/a.jpg", image("roses", 0)), ("daisy/b.jpg", image("daisy", 0)), ("tulips/c.jpg", image("tulips", 0))]
    {
        incoming.put(key, bytes).await.unwrap();
    }
    incoming.put("cactus/d.jpg", image("roses", 1)).await.unwrap();
    let mut ingest = Proc::spawn("inception-ingest", &args, &env, &logs);
    let first = next_shard(&mut announced, &ingest, Duration::from_secs(60)).await;
    assert!(first.uri.starts_with("datasets/s3live/train-live-"), "{}", first.uri);
    assert_eq!(first.records, 3);
    assert!(ingest.terminate(Duration::from_secs(30)).success(), "{:?}", ingest.output());

    // Uploaded while stopped: the restart takes these and only these.
    incoming.put("sunflowers/e.jpg", image("sunflowers", 0)).await.unwrap();
    incoming.put("roses/f.jpg", image("roses", 2)).await.unwrap();
    let mut ingest = Proc::spawn("inception-ingest", &args, &env, &logs);
    let second = next_shard(&mut announced, &ingest, Duration::from_secs(60)).await;
    assert_eq!(second.records, 2);
    assert!(ingest.terminate(Duration::from_secs(30)).success(), "{:?}", ingest.output());
    assert!(tokio::time::timeout(Duration::from_millis(500), announced.next()).await.is_err(), "no other announcement");

    let mut names = Vec::new();
    for shard in [&first, &second] {
        names.extend(record_filenames(&store.get(&shard.uri).await.unwrap()));
    }
    names.sort();
    assert_eq!(names, vec!["a.jpg", "b.jpg", "c.jpg", "e.jpg", "f.jpg"]);
    let quarantined = store.list("datasets/s3live/ingest/quarantine/cactus/").await.unwrap();
    assert!(quarantined.iter().any(|k| k.ends_with("d.jpg")), "{quarantined:?}");
    assert!(quarantined.iter().any(|k| k.ends_with("d.jpg.reason.json")), "{quarantined:?}");
}
