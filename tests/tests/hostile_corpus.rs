//! The hostile-input corpus of issue 16 (scripts/hostile-corpus.py) against
//! every stage, as processes: ingest, `inception records`, preprocess, the
//! trainer, the evaluator, `inception classify`, and the settings of a
//! service. For each kind of input: no crash (no panic, no signal), no hang
//! (every command within a time limit), a refusal that names the input, and
//! every good input beside the hostile ones used.

use bytes::Bytes;
use inception_core::local_nats::LocalNats;
use inception_core::nats::Streams;
use inception_core::settings::env_vars;
use inception_core::shutdown::CancellationToken;
use inception_integration_tests::{binary, free_port, http_get, wait_for_file, Proc};
use inception_proto::pipeline::{BatchReady, CheckpointReady, ShardReady};
use inception_proto::Message;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// One input of the corpus, as manifest.json lists it.
struct Entry {
    stage: String,
    kind: String,
    name: String,
    /// For settings: the value and the key it is for.
    value: String,
    key: String,
}

impl Entry {
    fn of(v: &serde_json::Value) -> Entry {
        let field = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        Entry {
            stage: field("stage"),
            kind: field("kind"),
            name: field("name"),
            value: field("value"),
            key: field("key"),
        }
    }
}

struct Corpus {
    dir: PathBuf,
    entries: Vec<Entry>,
}

impl Corpus {
    fn make(dir: &Path, good_jpeg: &Path) -> Corpus {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/hostile-corpus.py");
        let out = Command::new("python3").arg(&script).arg(dir).arg(good_jpeg).output().expect("python3");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        println!("{}", String::from_utf8_lossy(&out.stdout).trim());
        let manifest = std::fs::read(dir.join("manifest.json")).expect("manifest");
        let entries: Vec<serde_json::Value> = serde_json::from_slice(&manifest).expect("manifest JSON");
        Corpus { dir: dir.to_path_buf(), entries: entries.iter().map(Entry::of).collect() }
    }

    fn of<'a>(&'a self, stage: &'a str) -> impl Iterator<Item = &'a Entry> + 'a {
        self.entries.iter().filter(move |e| e.stage == stage)
    }

    fn path(&self, e: &Entry) -> PathBuf {
        self.dir.join(&e.stage).join(&e.name)
    }
}

/// Runs a one-shot command; fails the test if it hangs, panics or dies of a signal.
fn run(name: &str, args: &[&str], env: &[(String, String)], limit: Duration) -> Output {
    let mut child = Command::new(binary(name))
        .args(args)
        .envs(env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start");
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            child.kill().ok();
            panic!("{name} {args:?} hung (over {limit:?})");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    let code = out.status.code();
    assert!(code.is_some() && code != Some(101), "{name} {args:?} crashed ({:?}): {}", out.status, text(&out));
    out
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The good images of `from` and the hostile ones in one folder tree.
fn copy_tree(from: &Path, to: &Path) {
    for label in std::fs::read_dir(from).unwrap().filter_map(Result::ok) {
        let dest = to.join(label.file_name());
        std::fs::create_dir_all(&dest).unwrap();
        for f in std::fs::read_dir(label.path()).unwrap().filter_map(Result::ok) {
            std::fs::copy(f.path(), dest.join(f.file_name())).unwrap();
        }
    }
}

fn ingest(corpus: &Corpus, images: &Path, store: &Path, env: &[(String, String)]) {
    let train = corpus.dir.join("ingest");
    copy_tree(&images.join("train"), &train);
    let good = std::fs::read_dir(images.join("train"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .count();
    let validation = images.join("validation");
    let args = ["--train-directory", train.to_str().unwrap(), "--validation-directory", validation.to_str().unwrap()];
    let out = run("inception-ingest", &args, env, Duration::from_secs(120));
    assert!(out.status.success(), "good images beside hostile ones: ingest succeeds\n{}", text(&out));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("datasets/flowers/ingest/report.json")).unwrap()).unwrap();
    let splits = report["splits"].as_array().unwrap();
    let split = splits.iter().find(|s| s["split"] == "train").expect("the train split");
    assert_eq!(split["written"].as_u64(), Some(good as u64), "every good image written: {split}");
    let skipped = split["skipped"].as_array().unwrap();
    for e in corpus.of("ingest/daisy") {
        let line = skipped.iter().find(|s| s["file"].as_str().is_some_and(|f| f.ends_with(&e.name)));
        let reason = line.and_then(|l| l["reason"].as_str()).unwrap_or("");
        assert!(!reason.is_empty(), "{} ({}) has a line with a reason in the report: {skipped:?}", e.name, e.kind);
    }
}

fn records(corpus: &Corpus, store: &Path, env: &[(String, String)]) {
    let shard = store.join("datasets/flowers/train-00000-of-00002");
    let mut args = vec!["records".to_string(), "verify".to_string(), shard.display().to_string()];
    args.extend(corpus.of("records").map(|e| corpus.path(e).display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run("inception", &args, env, Duration::from_secs(60));
    let all = text(&out);
    assert!(!out.status.success(), "hostile files make verify fail: {all}");
    assert!(all.contains("train-00000-of-00002") && all.contains("every checksum matches"), "good shard: {all}");
    for e in corpus.of("records") {
        assert!(all.contains(&e.name), "{} ({}) is named: {all}", e.name, e.kind);
    }
}

/// Hostile shards in the store and announced, hostile announcements, and
/// hostile batches queued ahead of the good ones the worker makes.
async fn poison_the_streams(corpus: &Corpus, store: &Path, streams: &Streams) {
    let context = &streams.context;
    let shards = streams.subjects.shards("flowers", "train");
    for e in corpus.of("records") {
        let key = format!("datasets/flowers/train-hostile-{}", e.name);
        std::fs::copy(corpus.path(e), store.join(&key)).unwrap();
        let ready =
            ShardReady { dataset: "flowers".into(), split: "train".into(), uri: key, records: 1, ..Default::default() };
        context.publish(shards.clone(), Bytes::from(ready.encode_to_vec())).await.unwrap().await.unwrap();
    }
    for e in corpus.of("messages") {
        let payload = Bytes::from(std::fs::read(corpus.path(e)).unwrap());
        let subject = match e.name.split('-').next() {
            Some("shards") => shards.clone(),
            Some("batches") => streams.subjects.batches("flowers"),
            _ => streams.subjects.checkpoints("default"),
        };
        // The server may refuse one itself (too large): that is a refusal too.
        if let Ok(ack) = context.publish(subject, payload).await {
            ack.await.ok();
        }
    }
    let batches = streams.subjects.batches("flowers");
    for e in corpus.of("batches") {
        let key = format!("batches/flowers/hostile-{}", e.name);
        std::fs::create_dir_all(store.join("batches/flowers")).unwrap();
        std::fs::copy(corpus.path(e), store.join(&key)).unwrap();
        let ready = BatchReady { uri: key.clone(), batch_size: 2, image_size: 75, ..Default::default() };
        streams
            .publish_acked(&batches, Bytes::from(ready.encode_to_vec()), &key, &CancellationToken::new())
            .await
            .unwrap();
    }
    for e in corpus.of("checkpoints") {
        let key = format!("checkpoints/default/{}", e.name);
        std::fs::create_dir_all(store.join("checkpoints/default")).unwrap();
        std::fs::copy(corpus.path(e), store.join(&key)).unwrap();
        if let Some(step) = e.name.strip_suffix(".json").and_then(|n| n.strip_prefix("model.ckpt-")) {
            let ready = CheckpointReady {
                run: "default".into(),
                step: step.parse().unwrap(),
                uri: key.replace(".json", ".safetensors"),
                metadata_uri: key,
            };
            let subject = streams.subjects.checkpoints("default");
            context.publish(subject, Bytes::from(ready.encode_to_vec())).await.unwrap().await.unwrap();
        }
    }
}

fn classify(corpus: &Corpus, store: &Path, good: &Path, env: &[(String, String)]) {
    let folder = corpus.dir.join("classify");
    std::fs::copy(good, folder.join("good.jpg")).unwrap();
    let args = ["classify", "--checkpoint", "latest", folder.to_str().unwrap()];
    let out = run("inception", &args, env, Duration::from_secs(120));
    let all = text(&out);
    assert!(!out.status.success(), "hostile images make classify fail: {all}");
    let good_line = all.lines().find(|l| l.contains("good.jpg")).unwrap_or_default();
    let refused = ["error", "skipped", "cannot"].iter().any(|w| good_line.contains(w));
    assert!(good_line.contains(" (") && !refused, "the good image is classified: {all}");
    for e in corpus.of("classify").filter(|e| e.name != "folder.jpg") {
        assert!(all.contains(&e.name), "{} ({}) is named: {all}", e.name, e.kind);
    }
    for e in corpus.of("checkpoints").filter(|e| e.name.ends_with(".json")) {
        let meta = store.join("checkpoints/default").join(&e.name);
        let args = ["classify", "--checkpoint", meta.to_str().unwrap(), good.to_str().unwrap()];
        let out = run("inception", &args, env, Duration::from_secs(60));
        assert!(!out.status.success(), "{} ({}) refused: {}", e.name, e.kind, text(&out));
        assert!(text(&out).contains(&e.name), "{} is named: {}", e.name, text(&out));
    }
}

fn settings(corpus: &Corpus, env: &[(String, String)]) {
    for e in corpus.of("settings") {
        let mut env = env.to_vec();
        env.extend(env_vars([(e.name.as_str(), e.value.as_str())]));
        let out = run("inception-preprocess", &[], &env, Duration::from_secs(30));
        assert_eq!(out.status.code(), Some(2), "{} is a configuration error: {}", e.kind, text(&out));
        assert!(text(&out).contains(&e.key), "{} names {}: {}", e.kind, e.key, text(&out));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_hostile_input_stops_a_stage() {
    let dir = tempfile::tempdir().unwrap();
    let (images, store, logs) = (dir.path().join("images"), dir.path().join("store"), dir.path().join("logs"));
    inception_demo_data::generate(&images, 4, 2, 11).unwrap();
    let good_jpeg = images.join("train/daisy/daisy_0000.jpg");
    let corpus = Corpus::make(&dir.path().join("corpus"), &good_jpeg);
    let nats = LocalNats::start(&dir.path().join("nats")).unwrap();
    let env = env_vars([
        ("NATS__URL", nats.url()),
        ("STORE__URL", format!("file://{}", store.display())),
        ("MODEL__IMAGE_SIZE", "75".into()),
        ("MODEL__DEPTH_MULTIPLIER", "0.1".into()),
        ("MODEL__MIN_DEPTH", "8".into()),
        ("PIPELINE__BATCH_SIZE", "8".into()),
        ("PIPELINE__QUEUE_CAPACITY", "64".into()),
        ("PREPROCESS__SHARD_READ_ATTEMPTS", "2".into()),
        ("TRAIN__MAX_STEPS", "3".into()),
        ("TRAIN__CHECKPOINT_EVERY_STEPS", "3".into()),
        ("TRAIN__THREADS", "1".into()),
        ("EVAL__THREADS", "1".into()),
        ("EVAL__EVAL_INTERVAL", "2s".into()),
        ("INGEST__METRICS_ADDR", "127.0.0.1:0".into()),
        ("TRAIN__METRICS_ADDR", "127.0.0.1:0".into()),
        ("EVAL__METRICS_ADDR", "127.0.0.1:0".into()),
    ]);

    ingest(&corpus, &images, &store, &env);
    records(&corpus, &store, &env);
    settings(&corpus, &env);

    let streams = Streams::new(async_nats::connect(nats.url()).await.unwrap(), "inception");
    streams.batches(64).await.unwrap();
    for sub in ["preprocess", "trainer", "evaluator"] {
        std::fs::create_dir_all(logs.join(sub)).unwrap();
    }
    let mut evaluator = Proc::spawn("inception-evaluator", &[], &env, &logs.join("evaluator"));
    tokio::time::sleep(Duration::from_secs(3)).await; // its consumer of new announcements is bound
    poison_the_streams(&corpus, &store, &streams).await;
    let port = free_port();
    let mut worker_env = env.clone();
    worker_env.extend(env_vars([("PREPROCESS__METRICS_ADDR", format!("127.0.0.1:{port}"))]));
    let mut worker = Proc::spawn("inception-preprocess", &[], &worker_env, &logs.join("preprocess"));
    let mut trainer = Proc::spawn("inception-trainer", &[], &env, &logs.join("trainer"));
    let status = trainer.wait(Duration::from_secs(300));
    let (out, err) = trainer.output();
    assert!(status.success(), "the trainer trains past every hostile batch\n{out}\n{err}");
    let terminated = err.matches("terminating a batch message").count();
    let hostile_batches =
        corpus.of("batches").count() + corpus.of("messages").filter(|e| e.name.starts_with("batches")).count();
    assert_eq!(terminated, hostile_batches, "each hostile batch terminated, with its reason\n{err}");
    assert!(worker.is_running(), "the worker is alive: {:?}", worker.output());
    assert!(http_get(port, "/healthz").unwrap().0.contains("200"));

    // The real checkpoint at step 3 is evaluated; no hostile one scores.
    wait_for_file(&store.join("eval/default/step-3.json"), Duration::from_secs(180), || {
        format!("{:?}", evaluator.output())
    });
    assert!(evaluator.is_running(), "the evaluator is alive: {:?}", evaluator.output());
    for step in 90..=96 {
        assert!(!store.join(format!("eval/default/step-{step}.json")).exists(), "hostile checkpoint {step} scored");
    }
    classify(&corpus, &store, &good_jpeg, &env);
    evaluator.terminate(Duration::from_secs(30));
    worker.terminate(Duration::from_secs(30));
}
