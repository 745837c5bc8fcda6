//! Rule 4 of issue 16 (a service that cannot make progress says so and gives
//! up on what cannot be fetched) and issue 17's "services that discover what
//! exists", with real processes:
//! * a worker started after ingest, whose announcements are gone, finds the
//!   shards in the store;
//! * 10,000 announcements of shards that do not exist do not stall it: it
//!   hands over batches from the readable shard meanwhile, gives up on the
//!   missing ones and stays ready;
//! * a worker with nothing readable says what it waits for on /readyz (200),
//!   then, after `pipeline.stall_after`, answers 503 and sets `inception_stalled`.

use bytes::Bytes;
use inception_core::local_nats::LocalNats;
use inception_core::nats::Streams;
use inception_core::settings::env_vars;
use inception_integration_tests::{free_port, http_get, scraped_value, wait_until, Proc};
use inception_proto::pipeline::ShardReady;
use inception_proto::Message;
use std::time::Duration;

fn stalled_gauge(port: u16) -> Option<f64> {
    scraped_value(port, "inception_stalled{service=\"preprocess\"}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_shards_never_stall_a_worker_and_a_stall_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (images, store, logs) = (dir.path().join("images"), dir.path().join("store"), dir.path().join("logs"));
    for sub in ["ingest", "good", "idle"] {
        std::fs::create_dir_all(logs.join(sub)).unwrap();
    }
    inception_demo_data::generate(&images, 6, 0, 3).unwrap();
    let nats = LocalNats::start(&dir.path().join("nats")).unwrap();
    let env = env_vars([
        ("NATS__URL", nats.url()),
        ("STORE__URL", format!("file://{}", store.display())),
        ("MODEL__IMAGE_SIZE", "75".into()),
        ("PIPELINE__BATCH_SIZE", "4".into()),
        ("PIPELINE__QUEUE_CAPACITY", "1000".into()),
        ("PIPELINE__STALL_AFTER", "3s".into()),
        ("PREPROCESS__SHARD_READ_ATTEMPTS", "2".into()),
        ("INGEST__METRICS_ADDR", "127.0.0.1:0".into()),
    ]);
    let train = images.join("train");
    let mut ingest =
        Proc::spawn("inception-ingest", &["--train-directory", train.to_str().unwrap()], &env, &logs.join("ingest"));
    assert!(ingest.wait(Duration::from_secs(60)).success(), "{:?}", ingest.output());

    // The announcements are lost (a stream dropped or bounded away); then
    // 10,000 well-formed announcements of shards that do not exist.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let context = async_nats::jetstream::new(client.clone());
    context.delete_stream("INCEPTION_SHARDS").await.expect("drop the announcements");
    let streams = Streams::new(client, "inception");
    streams.shards().await.unwrap();
    let subject = streams.subjects.shards("flowers", "train");
    let mut acks = Vec::new();
    for i in 0..10_000u32 {
        let missing = ShardReady {
            uri: format!("datasets/flowers/train-missing-{i:05}"),
            records: 100,
            dataset: "flowers".into(),
            split: "train".into(),
            ..Default::default()
        };
        acks.push(context.publish(subject.clone(), Bytes::from(missing.encode_to_vec())).await.unwrap());
        // The client holds a bounded number of acknowledgements in flight.
        if acks.len() == 500 {
            for ack in acks.drain(..) {
                ack.await.expect("announced");
            }
        }
    }
    for ack in acks {
        ack.await.expect("announced");
    }

    let port = free_port();
    let mut worker_env = env.clone();
    worker_env.extend(env_vars([("PREPROCESS__METRICS_ADDR", format!("127.0.0.1:{port}"))]));
    let mut good = Proc::spawn("inception-preprocess", &[], &worker_env, &logs.join("good"));
    let batches = || scraped_value(port, "inception_preprocess_batches_total").unwrap_or(0.0);
    wait_until(
        "20 batches despite 10,000 missing shards",
        Duration::from_secs(120),
        || batches() >= 20.0,
        || format!("{:?}", good.output()),
    );
    let (status, body) = http_get(port, "/readyz").unwrap();
    assert!(status.contains("200"), "a worker making progress is ready: {status} {body}");
    assert_eq!(stalled_gauge(port), Some(0.0));
    let abandoned = scraped_value(port, "inception_preprocess_shards_abandoned_total").unwrap_or(0.0);
    assert!(abandoned >= 1.0, "missing shards are given up on");
    let (out, err) = good.output();
    assert!(out.contains("train shards of flowers in the store") || err.contains("in the store"), "{out}\n{err}");
    good.terminate(Duration::from_secs(30));

    // A dataset with nothing readable: waiting is shown, then a stall.
    let idle_port = free_port();
    let mut idle_env = env.clone();
    idle_env.extend(env_vars([
        ("DATASET__NAME", "empty".to_string()),
        ("PREPROCESS__METRICS_ADDR", format!("127.0.0.1:{idle_port}")),
    ]));
    let mut idle = Proc::spawn("inception-preprocess", &[], &idle_env, &logs.join("idle"));
    let readyz = || http_get(idle_port, "/readyz").unwrap_or_default();
    wait_until(
        "the wait shown on /readyz",
        Duration::from_secs(60),
        || readyz().1.contains("waiting for"),
        || format!("{:?} {:?}", readyz(), idle.output()),
    );
    wait_until(
        "a stall reported",
        Duration::from_secs(60),
        || readyz().0.contains("503"),
        || format!("{:?} {:?}", readyz(), idle.output()),
    );
    let (_, body) = readyz();
    assert!(body.contains("stalled: waiting for train shards of empty"), "{body}");
    assert_eq!(stalled_gauge(idle_port), Some(1.0));
    assert!(idle.terminate(Duration::from_secs(30)).success(), "a stalled worker still stops cleanly");
}
