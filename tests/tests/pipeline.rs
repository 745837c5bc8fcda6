//! The whole pipeline as separate processes: a real nats-server, a local
//! object store, the four built service binaries, generated images.

use futures::StreamExt;
use inception_core::example::parse_image_example;
use inception_core::local_nats::LocalNats;
use inception_core::settings::env_vars;
use inception_core::tfrecord;
use inception_integration_tests::{free_port, http_get, wait_for_file, Proc};
use inception_proto::pipeline::{CheckpointPromoted, CheckpointReady, EvalResult, ShardReady};
use inception_proto::tensorflow::{event, Event};
use inception_proto::Message;
use std::path::Path;
use std::time::Duration;

// Enough for a 75 px, 0.25-width model to be far above chance (0.2) on the
// generated classes (observed 0.4–0.8 at 300 steps, 0.74–1.0 at 600).
const STEPS: u64 = 500;

fn dir_path(store: &Path) -> std::path::PathBuf {
    store.with_file_name("tensorboard")
}

fn write_bad_inputs(train: &Path) {
    let roses = train.join("roses");
    std::fs::write(roses.join("notes.jpg"), b"this is text, not a JPEG").unwrap();
    std::fs::write(roses.join("empty.jpg"), b"").unwrap();
    let good = std::fs::read(roses.join("roses_0000.jpg")).unwrap();
    std::fs::write(roses.join("truncated.jpg"), &good[..good.len() / 4]).unwrap();
}

fn env(nats: &LocalNats, store: &Path) -> Vec<(String, String)> {
    let tensorboard = store.with_file_name("tensorboard");
    env_vars([
        ("TRAIN__TENSORBOARD_DIR", tensorboard.join("train").display().to_string()),
        ("EVAL__TENSORBOARD_DIR", tensorboard.join("eval").display().to_string()),
        ("NATS__URL", nats.url()),
        ("STORE__URL", format!("file://{}", store.display())),
        ("DATASET__NAME", "shapes".to_string()),
        ("MODEL__IMAGE_SIZE", "75".to_string()),
        ("MODEL__DEPTH_MULTIPLIER", "0.25".to_string()),
        ("MODEL__MIN_DEPTH", "8".to_string()),
        ("PIPELINE__BATCH_SIZE", "32".to_string()),
        // As `inception demo`: 300 steps of a narrow model learn the generated
        // classes without colour distortion (covered by the vision tests).
        ("AUGMENT__DISTORT_COLOR", "false".to_string()),
        ("PIPELINE__QUEUE_CAPACITY", "4".to_string()),
        ("TRAIN__MAX_STEPS", STEPS.to_string()),
        ("TRAIN__CHECKPOINT_EVERY_STEPS", (STEPS / 2).to_string()),
        ("TRAIN__INITIAL_LEARNING_RATE", "0.05".to_string()),
        ("EVAL__NUM_EXAMPLES", "0".to_string()),
        ("EVAL__EVAL_INTERVAL", "5s".to_string()),
        ("INGEST__METRICS_ADDR", "127.0.0.1:0".to_string()),
        ("PREPROCESS__METRICS_ADDR", "127.0.0.1:0".to_string()),
        ("TRAIN__METRICS_ADDR", "127.0.0.1:0".to_string()),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_services_train_and_evaluate_over_nats() {
    let dir = tempfile::tempdir().unwrap();
    let (images, store, logs) = (dir.path().join("images"), dir.path().join("store"), dir.path().join("logs"));
    std::fs::create_dir_all(&logs).unwrap();
    inception_demo_data::generate(&images, 60, 20, 7).unwrap();
    write_bad_inputs(&images.join("train"));
    let nats = LocalNats::start(&dir.path().join("nats")).unwrap();
    let env = env(&nats, &store);

    // Watch every announcement as a bystander would.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut announcements = client.subscribe("inception.>").await.unwrap();

    // Ingest: the three bad files are skipped and named; the rest is written.
    let mut ingest = Proc::spawn(
        "inception-ingest",
        &[
            "--train-directory",
            images.join("train").to_str().unwrap(),
            "--validation-directory",
            images.join("validation").to_str().unwrap(),
        ],
        &env,
        &logs,
    );
    assert!(ingest.wait(Duration::from_secs(120)).success(), "{:?}", ingest.output());
    let (out, err) = ingest.output();
    assert!(out.contains("train: 303 images found, 300 written to 2 shards, 3 skipped"), "{out}");
    for bad in ["notes.jpg", "empty.jpg", "truncated.jpg"] {
        assert!(err.contains(bad), "warning names {bad}: {err}");
    }

    // The shards are real TFRecords of tf.Example with labels 1..=5.
    let mut records = 0;
    for shard in ["train-00000-of-00002", "train-00001-of-00002"] {
        let bytes = std::fs::read(store.join("datasets/shapes").join(shard)).unwrap();
        for r in tfrecord::records(&bytes) {
            let ex = parse_image_example(r.unwrap()).unwrap();
            assert!((1..=5).contains(&ex.label));
            let expected = inception_demo_data::DEMO_LABELS[(ex.label - 1) as usize];
            assert_eq!(ex.text, expected);
            records += 1;
        }
    }
    assert_eq!(records, 300);
    assert!(store.join("datasets/shapes/validation-00001-of-00002").is_file());

    // Preprocess, trainer and evaluator run together.
    let eval_port = free_port();
    let mut eval_env = env.clone();
    eval_env.push(("INCEPTION__EVAL__METRICS_ADDR".into(), format!("127.0.0.1:{eval_port}")));
    let mut evaluator = Proc::spawn("inception-evaluator", &[], &eval_env, &logs);
    let mut worker = Proc::spawn("inception-preprocess", &["--worker-id", "w1"], &env, &logs);
    let mut trainer = Proc::spawn("inception-trainer", &[], &env, &logs);
    let status = trainer.wait(Duration::from_secs(900));
    assert!(status.success(), "trainer: {:?}", trainer.output());
    let (train_out, _) = trainer.output();
    assert!(train_out.contains(&format!("step {STEPS}, loss = ")), "{train_out}");
    assert!(train_out.contains("examples/sec;"), "{train_out}");

    // Checkpoints: weights, metadata and the pointer.
    let ckpt = store.join("checkpoints/default");
    for step in [STEPS / 2, STEPS] {
        assert!(ckpt.join(format!("model.ckpt-{step}.safetensors")).is_file());
        assert!(ckpt.join(format!("model.ckpt-{step}.json")).is_file());
    }
    let pointer: serde_json::Value = serde_json::from_slice(&std::fs::read(ckpt.join("checkpoint")).unwrap()).unwrap();
    assert_eq!(pointer["step"], STEPS);

    // Lineage: every shard has a manifest; the last checkpoint names its
    // parent and the train shards its examples came from, all of them.
    for shard in ["train-00000-of-00002", "train-00001-of-00002", "validation-00000-of-00002"] {
        let manifest = store.join(format!("datasets/shapes/manifests/{shard}.json"));
        let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(manifest).unwrap()).unwrap();
        assert!(manifest["records"].as_u64().unwrap() > 0 && manifest["images"][0]["sha256"].is_string());
    }
    let json = |step: u64| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(ckpt.join(format!("model.ckpt-{step}.json"))).unwrap()).unwrap()
    };
    let (last, lineage) = (json(STEPS), json(STEPS)["lineage"].clone());
    assert_eq!(lineage["parent"], format!("checkpoints/default/model.ckpt-{}.json", STEPS / 2));
    assert_eq!(lineage["total_examples"], last["examples_seen"]);
    assert_eq!(lineage["total_unattributed_examples"], 0, "{lineage}");
    let named: Vec<&str> =
        lineage["total_shards"].as_array().unwrap().iter().map(|c| c["shard"].as_str().unwrap()).collect();
    assert_eq!(named.len(), 2, "{named:?}");
    assert!(named.iter().all(|s| s.starts_with("datasets/shapes/train-")), "{named:?}");
    let since: u64 = lineage["shards"].as_array().unwrap().iter().map(|c| c["examples"].as_u64().unwrap()).sum();
    assert_eq!(since, lineage["examples"].as_u64().unwrap());

    // The evaluator evaluates the final checkpoint from its announcement.
    let result = store.join(format!("eval/default/step-{STEPS}.json"));
    wait_for_file(&result, Duration::from_secs(300), || format!("{:?}", evaluator.output()));
    let eval: serde_json::Value = serde_json::from_slice(&std::fs::read(&result).unwrap()).unwrap();
    let p1 = eval["precision_at_1"].as_f64().unwrap();
    eprintln!("precision@1 at step {STEPS}: {p1}");
    assert_eq!(eval["examples"], 100);
    assert!(p1 > 0.4, "precision@1 {p1} should be well above chance (0.2)");
    // The promotion gate decided on both checkpoints; the first was promoted.
    for step in [STEPS / 2, STEPS] {
        let decision = ckpt.join(format!("promotions/step-{step}.json"));
        wait_for_file(&decision, Duration::from_secs(60), || format!("{:?}", evaluator.output()));
    }
    let promoted: serde_json::Value = serde_json::from_slice(&std::fs::read(ckpt.join("promoted")).unwrap()).unwrap();
    assert!(promoted["step"] == STEPS / 2 || promoted["step"] == STEPS, "{promoted}");
    let (eval_out, _) = evaluator.output();
    assert!(eval_out.contains(&format!("precision @ 1 = {p1:.4} recall @ 5 = ")), "{eval_out}");

    // --run-once evaluates the latest checkpoint and exits.
    let once_logs = logs.join("once");
    std::fs::create_dir_all(&once_logs).unwrap();
    let mut once_env = env.clone();
    once_env.push(("INCEPTION__EVAL__METRICS_ADDR".into(), "127.0.0.1:0".into()));
    let mut once = Proc::spawn("inception-evaluator", &["--run-once"], &once_env, &once_logs);
    assert!(once.wait(Duration::from_secs(120)).success(), "{:?}", once.output());
    let (once_out, _) = once.output();
    assert!(
        once_out.contains(&format!(
            "Successfully loaded model from checkpoints/default/model.ckpt-{STEPS}.json at step={STEPS}."
        )),
        "{once_out}"
    );
    assert!(
        once_out.contains(&format!("precision @ 1 = {p1:.4} recall @ 5 = ")),
        "same weights, same answer: {once_out}"
    );

    // classify: top-5 labels per image, a clear error for a bad file.
    let mut args: Vec<String> = vec!["classify".into(), "--checkpoint".into(), "latest".into(), "--json".into()];
    for label in inception_demo_data::DEMO_LABELS {
        args.push(images.join(format!("validation/{label}/{label}_0000.jpg")).display().to_string());
    }
    let bad = images.join("train/roses/notes.jpg").display().to_string();
    args.push(bad.clone());
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut classify = Proc::spawn("inception", &arg_refs, &once_env, &once_logs);
    let status = classify.wait(Duration::from_secs(120));
    assert_eq!(status.code(), Some(1), "a bad file makes the exit status 1: {:?}", classify.output());
    let (json, _) = classify.output();
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(doc["checkpoint_step"], STEPS);
    let results = doc["results"].as_array().unwrap();
    assert_eq!(results.len(), 6);
    let mut correct = 0;
    for (r, label) in results.iter().zip(inception_demo_data::DEMO_LABELS) {
        let p = r["predictions"].as_array().unwrap_or_else(|| panic!("{r}"));
        assert_eq!(p.len(), 5);
        let probs: Vec<f64> = p.iter().map(|x| x["probability"].as_f64().unwrap()).collect();
        assert!(probs.windows(2).all(|w| w[0] >= w[1]) && probs.iter().sum::<f64>() <= 1.0 + 1e-6, "{probs:?}");
        correct += usize::from(p[0]["label"] == label);
    }
    assert!(correct >= 1, "{results:?}");
    assert_eq!(results[5]["file"], bad.as_str());

    // inception lineage: a training image was in the training data, a validation one was not.
    let train_image = images.join("train/roses/roses_0000.jpg").display().to_string();
    let validation_image = images.join("validation/roses/roses_0000.jpg").display().to_string();
    let args = ["lineage", "latest", "--image", &train_image, "--image", &validation_image, "--json"];
    let mut lineage = Proc::spawn("inception", &args, &once_env, &once_logs);
    assert!(lineage.wait(Duration::from_secs(60)).success(), "{:?}", lineage.output());
    let doc: serde_json::Value = serde_json::from_str(&lineage.output().0).unwrap();
    assert_eq!(doc["step"], STEPS);
    assert_eq!(doc["images"][0]["verdict"], "yes", "{}", doc["images"][0]);
    assert_eq!(doc["images"][1]["verdict"], "no", "{}", doc["images"][1]);
    assert!(results[5]["error"].as_str().unwrap().contains("not a recognised image format"), "{}", results[5]);

    // Metrics and health of a running service.
    let (status, body) = http_get(eval_port, "/metrics").unwrap();
    assert!(status.contains("200"), "{status}");
    assert!(body.contains("inception_eval_precision_at_1"), "{body}");
    assert!(body.contains("inception_build_info"), "{body}");
    assert!(http_get(eval_port, "/healthz").unwrap().0.contains("200"));
    assert!(http_get(eval_port, "/readyz").unwrap().0.contains("200"));

    // SIGTERM stops the long-running services cleanly.
    assert!(worker.terminate(Duration::from_secs(30)).success(), "{:?}", worker.output());
    assert!(evaluator.terminate(Duration::from_secs(30)).success(), "{:?}", evaluator.output());

    // Every stage announced its work.
    let (mut shards, mut checkpoints, mut evals, mut promotions) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), announcements.next()).await {
        let subject = m.subject.as_str();
        if subject.starts_with("inception.shards.") {
            shards.push(ShardReady::decode(m.payload.as_ref()).unwrap());
        } else if subject.starts_with("inception.checkpoints.") {
            checkpoints.push(CheckpointReady::decode(m.payload.as_ref()).unwrap());
        } else if subject.starts_with("inception.evals.") {
            evals.push(EvalResult::decode(m.payload.as_ref()).unwrap());
        } else if subject.starts_with("inception.promotions.") {
            promotions.push(CheckpointPromoted::decode(m.payload.as_ref()).unwrap());
        }
    }
    assert_eq!(shards.len(), 4, "{shards:?}");
    assert_eq!(shards.iter().map(|s| s.records).sum::<u64>(), 400);
    assert!(shards.iter().all(|s| s.labels.len() == 5));
    let steps: Vec<u64> = checkpoints.iter().map(|c| c.step).collect();
    assert_eq!(steps, vec![STEPS / 2, STEPS]);
    assert!(evals.iter().any(|e| e.step == STEPS && (e.precision_at_1 - p1).abs() < 1e-12), "{evals:?}");
    assert!(evals.iter().all(|e| e.examples == 100), "{evals:?}");
    assert_eq!(promotions.first().map(|p| (p.step, p.previous_step)), Some((STEPS / 2, 0)), "{promotions:?}");

    // TensorBoard event files with the original's tags (one file per
    // process that wrote: the watching and the --run-once evaluator).
    for (dir, tag) in [("train", "loss"), ("eval", "Precision @ 1")] {
        let folder = dir_path(&store).join(dir);
        let mut tags = Vec::new();
        for file in std::fs::read_dir(&folder).unwrap() {
            let bytes = std::fs::read(file.unwrap().path()).unwrap();
            for record in tfrecord::records(&bytes) {
                if let Some(event::What::Summary(s)) = Event::decode(record.unwrap()).unwrap().what {
                    tags.extend(s.value.into_iter().map(|v| v.tag));
                }
            }
        }
        assert!(tags.iter().any(|t| t == tag), "{dir}: {tags:?}");
    }

    // Consumed batches were deleted (at most the unconsumed queue remains).
    let left = std::fs::read_dir(store.join("batches/shapes")).map_or(0, |d| d.count());
    assert!(left <= 5, "{left} batch objects left behind");
}

#[test]
fn unreachable_nats_is_reported_and_retried_without_panic() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    inception_demo_data::generate(&images, 1, 0, 1).unwrap();
    let port = free_port();
    let env: Vec<(String, String)> = vec![
        ("INCEPTION__NATS__URL".into(), format!("nats://127.0.0.1:{port}")),
        ("INCEPTION__NATS__CONNECT_RETRY".into(), "0.1s".into()),
        ("INCEPTION__NATS__CONNECT_RETRY_MAX".into(), "0.2s".into()),
        ("INCEPTION__STORE__URL".into(), format!("file://{}", dir.path().join("store").display())),
        ("INCEPTION__INGEST__METRICS_ADDR".into(), "127.0.0.1:0".into()),
    ];
    let mut ingest = Proc::spawn(
        "inception-ingest",
        &["--train-directory", images.join("train").to_str().unwrap()],
        &env,
        dir.path(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, err) = ingest.output();
        if err.matches(&format!("cannot reach NATS at nats://127.0.0.1:{port}")).count() >= 3 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no retries reported: {err}");
        assert!(ingest.is_running(), "ingest gave up: {err}");
        std::thread::sleep(Duration::from_millis(100));
    }
    ingest.terminate(Duration::from_secs(10));
    let (_, err) = ingest.output();
    assert!(!err.contains("panicked"), "{err}");
    assert!(!dir.path().join("store/datasets").exists(), "nothing is written before NATS is reachable");
}
