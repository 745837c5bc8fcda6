//! Preprocess workers as separate processes: they join and leave (one by
//! `kill -9`) while the trainer runs, new shards are picked up without a
//! restart, orphan batch objects are cleaned up, memory stays in budget;
//! and the batch hand-off is at-least-once.

use bytes::Bytes;
use futures::StreamExt;
use inception_core::local_nats::LocalNats;
use inception_core::nats::Streams;
use inception_core::settings::env_vars;
use inception_integration_tests::{free_port, logged_steps, scraped_value, wait_until, Proc};
use std::path::Path;
use std::time::{Duration, Instant};

fn batch_objects(store: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(store.join("batches/flowers"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn workers_join_and_leave_while_the_trainer_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (images, more, store, logs) =
        (dir.path().join("images"), dir.path().join("more"), dir.path().join("store"), dir.path().join("logs"));
    for sub in ["a", "b", "c", "ingest2"] {
        std::fs::create_dir_all(logs.join(sub)).unwrap();
    }
    inception_demo_data::generate(&images, 8, 0, 5).unwrap();
    inception_demo_data::generate(&more, 8, 0, 6).unwrap();
    let nats = LocalNats::start(&dir.path().join("nats")).unwrap();
    const STEPS: u64 = 150;
    const SHUFFLE_CAP: u64 = 200_000;
    let env = env_vars([
        ("NATS__URL", nats.url()),
        ("STORE__URL", format!("file://{}", store.display())),
        ("MODEL__IMAGE_SIZE", "75".into()),
        ("MODEL__DEPTH_MULTIPLIER", "0.1".into()),
        ("MODEL__MIN_DEPTH", "8".into()),
        ("PIPELINE__BATCH_SIZE", "8".into()),
        ("PIPELINE__QUEUE_CAPACITY", "3".into()),
        ("PREPROCESS__SHUFFLE_BUFFER_MAX_BYTES", SHUFFLE_CAP.to_string()),
        ("PREPROCESS__ORPHAN_BATCH_AGE", "4s".into()),
        ("TRAIN__MAX_STEPS", STEPS.to_string()),
        ("TRAIN__CHECKPOINT_EVERY_STEPS", "1000".into()),
        ("TRAIN__LOG_EVERY_STEPS", "1".into()),
        ("INGEST__METRICS_ADDR", "127.0.0.1:0".into()),
        ("TRAIN__METRICS_ADDR", "127.0.0.1:0".into()),
    ]);
    let worker_env = |name: &str, port: u16| {
        let mut e = env.clone();
        e.extend(env_vars([
            ("PREPROCESS__WORKER_ID", name.to_string()),
            ("PREPROCESS__METRICS_ADDR", format!("127.0.0.1:{port}")),
        ]));
        e
    };
    let train = images.join("train");
    let mut ingest = Proc::spawn("inception-ingest", &["--train-directory", train.to_str().unwrap()], &env, &logs);
    assert!(ingest.wait(Duration::from_secs(60)).success(), "{:?}", ingest.output());

    let (port_a, port_b, port_c) = (free_port(), free_port(), free_port());
    let mut a = Proc::spawn("inception-preprocess", &[], &worker_env("a", port_a), &logs.join("a"));
    let mut trainer = Proc::spawn("inception-trainer", &[], &env, &logs);
    let t0 = Instant::now();
    let step = |t: &Proc| logged_steps(&t.output().0).last().copied().unwrap_or(0);
    wait_until(
        "step 10",
        Duration::from_secs(180),
        || step(&trainer) >= 10,
        || format!("{:?}\n{:?}", trainer.output(), a.output()),
    );

    // A second worker joins; new shards are announced while both run.
    let mut b = Proc::spawn("inception-preprocess", &[], &worker_env("b", port_b), &logs.join("b"));
    wait_until(
        "worker b's first batch",
        Duration::from_secs(60),
        || scraped_value(port_b, "inception_preprocess_batches_total").unwrap_or(0.0) >= 1.0,
        || format!("{:?}", b.output()),
    );
    assert!(trainer.is_running() && step(&trainer) < STEPS, "b joined while the trainer ran");
    let more_train = more.join("train");
    let mut ingest2 = Proc::spawn(
        "inception-ingest",
        &["--train-directory", more_train.to_str().unwrap(), "--train-shards", "4", "--validation-shards", "4"],
        &env,
        &logs.join("ingest2"),
    );
    assert!(ingest2.wait(Duration::from_secs(60)).success(), "{:?}", ingest2.output());
    wait_until(
        "both workers learning of the new shards",
        Duration::from_secs(30),
        || [&a, &b].iter().all(|w| w.output().1.contains("new train shard datasets/flowers/train-00003-of-00004")),
        || format!("{:?}\n{:?}", a.output(), b.output()),
    );

    eprintln!("{:?}: new shards known at step {}", t0.elapsed(), step(&trainer));
    // Worker a dies mid-work; a third worker starts; training goes on.
    let before = step(&trainer);
    a.kill();
    // An object a worker wrote but never queued (as a could have left).
    let ghost = store.join("batches/flowers/ghost-1-0000000000.safetensors");
    std::fs::write(&ghost, b"half a batch").unwrap();
    let mut c = Proc::spawn("inception-preprocess", &[], &worker_env("c", port_c), &logs.join("c"));
    wait_until(
        "worker c's first batch",
        Duration::from_secs(60),
        || scraped_value(port_c, "inception_preprocess_batches_total").unwrap_or(0.0) >= 1.0,
        || format!("{:?}", c.output()),
    );
    assert!(
        trainer.is_running() && step(&trainer) < STEPS,
        "c joined while the trainer ran (a killed at step {before})"
    );
    assert!(trainer.wait(Duration::from_secs(300)).success(), "{:?}", trainer.output());
    eprintln!("{:?}: trainer done", t0.elapsed());
    let (out, err) = trainer.output();
    let steps = logged_steps(&out);
    assert_eq!(steps, (1..=STEPS).collect::<Vec<_>>(), "every step once, in order (a was killed after {before})");
    assert!(!err.contains("terminating a batch message"), "no batch was lost or corrupt: {err}");
    for (name, port) in [("b", port_b), ("c", port_c)] {
        assert!(
            scraped_value(port, "inception_preprocess_batches_total").unwrap_or(0.0) >= 1.0,
            "worker {name} handed over batches"
        );
    }

    // Memory: shuffle buffer within its byte cap; the process within the
    // documented budget (docs/design.md: 64 MB + cap + 2 shards + 2 batches).
    for (w, port) in [(&b, port_b), (&c, port_c)] {
        let buffered = scraped_value(port, "inception_preprocess_shuffle_buffer_bytes").unwrap_or(0.0);
        let largest_shard = std::fs::read_dir(store.join("datasets/flowers"))
            .unwrap()
            .filter_map(Result::ok)
            .filter_map(|e| e.metadata().ok().map(|m| m.len()))
            .max()
            .unwrap();
        assert!(buffered > 0.0 && buffered <= (SHUFFLE_CAP + largest_shard) as f64, "buffer {buffered} bytes");
        let rss = inception_core::telemetry::resident_memory_bytes_of(w.id()).unwrap_or(0);
        let budget = 64_000_000 + SHUFFLE_CAP + 2 * largest_shard + 2 * 8 * 75 * 75 * 3;
        eprintln!("worker {}: shuffle buffer {buffered} bytes, resident {rss} bytes, budget {budget}", w.name);
        assert!(rss > 0 && rss < budget, "worker {} resident {rss} bytes, budget {budget}", w.name);
    }

    // The ghost and whatever a left behind are deleted; what remains is
    // queued (at most the queue's capacity) and nothing else.
    wait_until(
        "orphan cleanup",
        Duration::from_secs(30),
        || !ghost.exists() && batch_objects(&store).len() <= 3,
        || format!("{:?}\n{:?}", batch_objects(&store), c.output()),
    );
    assert!(
        scraped_value(port_b, "inception_preprocess_orphan_batches_deleted_total").unwrap_or(0.0)
            + scraped_value(port_c, "inception_preprocess_orphan_batches_deleted_total").unwrap_or(0.0)
            >= 1.0
    );
    for w in [&mut b, &mut c] {
        assert!(w.terminate(Duration::from_secs(30)).success(), "{:?}", w.output());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_not_acknowledged_in_time_is_delivered_again() {
    let dir = tempfile::tempdir().unwrap();
    let nats = LocalNats::start(&dir.path().join("nats")).unwrap();
    let ack_wait = Duration::from_secs(1);
    let published = {
        let streams = Streams::new(async_nats::connect(nats.url()).await.unwrap(), "inception");
        let stream = streams.batches(4).await.unwrap();
        let never_shutdown = inception_core::shutdown::CancellationToken::new();
        let subject = streams.subjects.batches("flowers");
        streams.publish_acked(&subject, Bytes::from_static(b"batch one"), "one", &never_shutdown).await.unwrap();

        // A trainer takes the batch and dies before acknowledging it.
        let consumer = streams.batch_consumer(&stream, "flowers", ack_wait).await.unwrap();
        let mut fetched = consumer.fetch().max_messages(1).messages().await.unwrap();
        let first = fetched.next().await.unwrap().unwrap();
        assert_eq!(first.info().unwrap().delivered, 1);
        first.payload.clone()
    };
    // The next trainer gets it again once ack_wait has passed, and its ack removes it.
    let streams = Streams::new(async_nats::connect(nats.url()).await.unwrap(), "inception");
    let stream = streams.batches(4).await.unwrap();
    let consumer = streams.batch_consumer(&stream, "flowers", ack_wait).await.unwrap();
    let started = Instant::now();
    let again = loop {
        let mut fetched =
            consumer.fetch().max_messages(1).expires(Duration::from_millis(500)).messages().await.unwrap();
        if let Some(m) = fetched.next().await {
            break m.unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(20), "never delivered again");
    };
    assert_eq!(again.payload, published);
    assert_eq!(again.info().unwrap().delivered, 2);
    again.double_ack().await.unwrap();
    assert_eq!(stream.get_info().await.unwrap().state.messages, 0, "acknowledged: gone from the work queue");
}
