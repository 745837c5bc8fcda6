//! The whole continuous-training loop as processes, with a tiny model: a
//! validation set ingested once, then uploads dropped into the folder that
//! continuous ingest watches, a preprocess worker, the trainer, the
//! evaluator with its promotion gate and `inception-serve` following the
//! `promoted` pointer, over a real nats-server and a local store.
//!
//! 1. The first uploads are trained on (a trainer run of `FIRST_STEPS`),
//!    evaluated and promoted; the server answers POST /v1/classify with
//!    the promoted step.
//! 2. A second set of uploads; the trainer goes on until a checkpoint that
//!    drew from the new shards passes the gate. A client keeps sending
//!    requests all the while: every one is answered (200), by promoted
//!    steps only, never going back, and the server ends on the last one.
//! 3. A damaged copy of the last checkpoint (its logits layer predicts one
//!    label for every image), pointed at and announced as a newer step, is
//!    rejected with its reasons; the pointer and the server stay.
//! 4. `inception lineage promoted` finds an image of each upload set in
//!    the promoted checkpoint's training data.
//!
//! `WHOLE_LOOP_KEEP=1` keeps the work folder (its path is printed);
//! `WHOLE_LOOP_SEED=<n>` trains from other initial weights and batches.

use inception_core::local_nats::LocalNats;
use inception_core::nats::Streams;
use inception_core::settings::env_vars;
use inception_core::shutdown::CancellationToken;
use inception_integration_tests::{drop_image, failure_lines, http_get, pointer_step, scraped_value, wait_until, Proc};
use inception_proto::pipeline::CheckpointReady;
use inception_proto::Message;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const RUN: &str = "default";
/// Images of each label in each upload set.
const UPLOADS_PER_LABEL: usize = 6;
/// Validation images of each label: the gate's min_examples is all of them.
const VALIDATION_PER_LABEL: usize = 8;
const LABELS: usize = inception_demo_data::DEMO_LABELS.len();
/// The first trainer run's steps (on the first uploads alone).
const FIRST_STEPS: u64 = 80;
const CHECKPOINT_EVERY: u64 = 20;
/// Every wait's bound: generous for two loaded cores.
const WAIT: Duration = Duration::from_secs(240);

/// The processes started so far, and the store, for the context of a failure.
struct Procs(Vec<Proc>, PathBuf);

impl Procs {
    fn start(&mut self, name: &str, args: &[&str], env: &[(String, String)], logs: &Path) -> usize {
        std::fs::create_dir_all(logs).expect("log folder");
        self.0.push(Proc::spawn(name, args, env, logs));
        self.0.len() - 1
    }

    /// The gate's decisions, each process's failure lines and the tails of its output.
    fn context(&self) -> String {
        let cut = |s: &str| {
            let mut from = s.len().saturating_sub(2500);
            while !s.is_char_boundary(from) {
                from += 1;
            }
            s[from..].to_string()
        };
        let procs = self.0.iter().map(|p| {
            let (out, err) = p.output();
            format!(
                "--- {} ({}) failures\n{}\n--- stdout\n{}\n--- stderr\n{}",
                p.name,
                p.stdout.display(),
                failure_lines(&err, 10),
                cut(&out),
                cut(&err)
            )
        });
        std::iter::once(decisions(&self.1)).chain(procs).collect::<Vec<_>>().join("\n")
    }
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn checkpoints(store: &Path) -> PathBuf {
    store.join("checkpoints").join(RUN)
}

fn promoted(store: &Path) -> Option<Value> {
    read_json(&checkpoints(store).join("promoted"))
}

fn promoted_step(store: &Path) -> Option<u64> {
    promoted(store)?["step"].as_u64()
}

fn decision(store: &Path, step: u64) -> Option<Value> {
    read_json(&checkpoints(store).join(format!("promotions/step-{step}.json")))
}

fn step_of(key: &str) -> Option<u64> {
    key.rsplit("model.ckpt-").next()?.strip_suffix(".json")?.parse().ok()
}

/// Steps of the checkpoints the trainer's pointer keeps (the latest included).
fn kept_steps(store: &Path) -> BTreeSet<u64> {
    let Some(p) = read_json(&checkpoints(store).join("checkpoint")) else { return BTreeSet::new() };
    let mut keys: Vec<&str> = p["all"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    keys.extend(p["metadata"].as_str());
    keys.into_iter().filter_map(step_of).collect()
}

/// Every kept checkpoint evaluated, so decided (the gate runs before the
/// result object is written).
fn settled(store: &Path) -> bool {
    let kept = kept_steps(store);
    !kept.is_empty() && kept.iter().all(|s| store.join(format!("eval/{RUN}/step-{s}.json")).is_file())
}

/// The shards that hold an image whose source contains `marker`, and those
/// images' sources (one entry per record).
fn shards_with(store: &Path, marker: &str) -> (BTreeSet<String>, Vec<String>) {
    let (mut shards, mut sources) = (BTreeSet::new(), Vec::new());
    let dir = store.join("datasets/flowers/manifests");
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Some(m) = read_json(&entry.path()) else { continue };
        for source in m["images"].as_array().into_iter().flatten().filter_map(|i| i["source"].as_str()) {
            if source.contains(marker) {
                shards.insert(m["shard"].as_str().unwrap_or_default().to_string());
                sources.push(source.to_string());
            }
        }
    }
    (shards, sources)
}

/// Every image of the set `marker` names in some shard.
fn all_in_shards(store: &Path, marker: &str, images: usize) -> bool {
    shards_with(store, marker).1.iter().collect::<BTreeSet<_>>().len() >= images
}

/// Each decision of the gate so far: step, verdict and precision@1.
fn decisions(store: &Path) -> String {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(checkpoints(store).join("promotions")).into_iter().flatten().flatten() {
        if let Some(d) = read_json(&entry.path()) {
            let verdict = format!("{} {}", d["decision"].as_str().unwrap_or("?"), d["precision_at_1"]);
            out.insert(d["step"].as_u64().unwrap_or(0), verdict);
        }
    }
    format!("decisions: {out:?}; promoted: {:?}", promoted(store))
}

/// The port of the address a service logged it bound (`<field>=<address>`
/// on its line that contains `marker`).
fn bound_port(log: &str, marker: &str, field: &str) -> Option<u16> {
    let line = log.lines().find(|l| l.contains(marker))?;
    let address = line.split(&format!("{field}=")).nth(1)?.split_whitespace().next()?;
    address.parse::<std::net::SocketAddr>().ok().map(|a| a.port())
}

/// The shards a checkpoint's line drew examples from (its lineage's totals).
fn trained_on(store: &Path, step: u64) -> BTreeSet<String> {
    let Some(meta) = read_json(&checkpoints(store).join(format!("model.ckpt-{step}.json"))) else {
        return BTreeSet::new();
    };
    meta["lineage"]["total_shards"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["shard"].as_str().map(str::to_string))
        .collect()
}

/// The generated images of `dir/train`, each as `(<label>/<prefix><name>, its file)`.
fn uploads(dir: &Path, prefix: &str) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for label in inception_demo_data::DEMO_LABELS {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("train").join(label))
            .expect("generated label folder")
            .map(|e| e.expect("entry").path())
            .collect();
        files.sort();
        for f in files {
            let name = f.file_name().expect("name").to_string_lossy().into_owned();
            out.push((format!("{label}/{prefix}{name}"), f));
        }
    }
    out
}

fn drop_all(incoming: &Path, files: &[(String, PathBuf)]) {
    for (key, path) in files {
        drop_image(incoming, key, &std::fs::read(path).expect("generated image"));
    }
}

/// POST /v1/classify with one image as the body; (status code, body).
fn classify(port: u16, image: &[u8]) -> std::io::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let head = format!(
        "POST /v1/classify HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        image.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(image)?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, body.to_string()))
}

/// The step that answered, or why there is none.
fn served_step(port: u16, image: &[u8]) -> Result<u64, String> {
    match classify(port, image) {
        Ok((200, body)) => serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| {
                let top = v["results"][0]["predictions"].as_array()?.len();
                (top > 0).then_some(v["step"].as_u64()?)
            })
            .ok_or_else(|| format!("200 without a step and predictions: {body}")),
        Ok((code, body)) => Err(format!("{code}: {body}")),
        Err(e) => Err(format!("request failed: {e}")),
    }
}

/// What the client saw: the step of every answer, in order, and every failure.
#[derive(Default)]
struct Seen {
    steps: Vec<u64>,
    failures: Vec<String>,
}

/// Sends the images one request after another until `stop`.
fn client(port: u16, images: Vec<Vec<u8>>, stop: Arc<AtomicBool>, seen: Arc<Mutex<Seen>>) {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let answer = served_step(port, &images[n % images.len()]);
        n += 1;
        let mut seen = seen.lock().expect("client log");
        match answer {
            Ok(step) => seen.steps.push(step),
            Err(e) => seen.failures.push(e),
        }
        drop(seen);
        // A steady stream, leaving the two cores to the pipeline.
        std::thread::sleep(Duration::from_millis(30));
    }
}

/// A safetensors file whose logits layers (raw and moving averages) give
/// every image the same logits: label `label` first, the others tied.
fn constant_logits(weights: &[u8], label: usize) -> Vec<u8> {
    let mut out = weights.to_vec();
    let n = u64::from_le_bytes(weights[..8].try_into().expect("header length")) as usize;
    let header: Value = serde_json::from_slice(&weights[8..8 + n]).expect("safetensors header");
    for name in ["fc.weight", "fc.bias", "ema/fc.weight", "ema/fc.bias"] {
        let t = &header[name];
        assert_eq!(t["dtype"], "F32", "{name}: {t}");
        let begin = 8 + n + t["data_offsets"][0].as_u64().expect("offset") as usize;
        let end = 8 + n + t["data_offsets"][1].as_u64().expect("offset") as usize;
        let values = &mut out[begin..end];
        values.fill(0);
        if name.ends_with("bias") {
            values[label * 4..label * 4 + 4].copy_from_slice(&10f32.to_le_bytes());
        }
    }
    out
}

/// Writes `bytes` as `path` whole (written aside, then renamed).
fn put(path: &Path, bytes: &[u8]) {
    let tmp = path.with_file_name(format!(".{}.part", path.file_name().expect("name").to_string_lossy()));
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

#[test]
fn uploads_are_trained_on_promoted_and_served_and_a_worse_checkpoint_is_rejected() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let root = if std::env::var_os("WHOLE_LOOP_KEEP").is_some() { dir.keep() } else { dir.path().to_path_buf() };
    let root = root.as_path();
    eprintln!("whole loop in {}", root.display());
    let (store, logs, incoming) = (root.join("store"), root.join("logs"), root.join("incoming"));
    std::fs::create_dir_all(&incoming).expect("incoming folder");
    let (validation, first, second) = (root.join("validation"), root.join("first"), root.join("second"));
    inception_demo_data::generate(&validation, 0, VALIDATION_PER_LABEL, 31).expect("validation images");
    inception_demo_data::generate(&first, UPLOADS_PER_LABEL, 0, 32).expect("first uploads");
    inception_demo_data::generate(&second, UPLOADS_PER_LABEL, 0, 33).expect("second uploads");
    let empty_train = root.join("no-train");
    std::fs::create_dir_all(&empty_train).expect("empty train folder");
    let labels_file = root.join("labels.txt");
    std::fs::write(&labels_file, inception_demo_data::DEMO_LABELS.join("\n")).expect("labels");
    let (first_uploads, second_uploads) = (uploads(&first, "set1_"), uploads(&second, "set2_"));

    let nats = LocalNats::start(&root.join("nats")).expect("nats-server");
    let env = env_vars([
        ("NATS__URL", nats.url()),
        ("NATS__CONNECT_RETRY", "0.2s".into()),
        ("NATS__CONNECT_RETRY_MAX", "1s".into()),
        ("STORE__URL", format!("file://{}", store.display())),
        ("MODEL__IMAGE_SIZE", "75".into()),
        ("MODEL__DEPTH_MULTIPLIER", "0.1".into()),
        ("MODEL__MIN_DEPTH", "8".into()),
        ("PIPELINE__BATCH_SIZE", "8".into()),
        ("PIPELINE__QUEUE_CAPACITY", "3".into()),
        // The generated classes differ by palette too: learnt in few steps
        // without colour distortion (as `inception demo` trains).
        ("AUGMENT__DISTORT_COLOR", "false".into()),
        ("PREPROCESS__INPUT_QUEUE_MEMORY_FACTOR", "0.02".into()),
        ("PREPROCESS__WORKER_ID", "w".into()),
        // AdamW learns the tiny model in a hundred steps of 8 images
        // (measured: precision@1 0.6-0.75 at step 75-100, 0.9 at 150-200),
        // RMSProp at the original's constants is unstable at this batch.
        ("TRAIN__OPTIMIZER", "adamw".into()),
        ("TRAIN__INITIAL_LEARNING_RATE", "0.003".into()),
        // A constant rate: the schedule's epoch would count the shards
        // announced when the trainer starts (none yet).
        ("TRAIN__LR_SCHEDULE", "constant".into()),
        // Evaluation's statistics over the last ten steps or so, not
        // thousands (docs: short runs want short decays).
        ("TRAIN__BATCHNORM_DECAY", "0.9".into()),
        ("TRAIN__MOVING_AVERAGE_DECAY", "0.9".into()),
        ("TRAIN__CHECKPOINT_EVERY_STEPS", CHECKPOINT_EVERY.to_string()),
        ("TRAIN__KEEP_CHECKPOINTS", "1000".into()),
        ("TRAIN__LOG_EVERY_STEPS", "5".into()),
        ("TRAIN__THREADS", "1".into()),
        ("EVAL__EVAL_INTERVAL", "1s".into()),
        ("EVAL__NUM_EXAMPLES", "0".into()),
        ("EVAL__BATCH_SIZE", "20".into()),
        ("EVAL__THREADS", "1".into()),
        ("PROMOTION__MIN_EXAMPLES", (VALIDATION_PER_LABEL * LABELS).to_string()),
        ("PROMOTION__MIN_PRECISION_GAIN", "0.0".into()),
        ("PROMOTION__MAX_RECALL_DROP", "0.3".into()),
        ("INGEST__SHARD_MAX_IMAGES", "1000".into()),
        ("INGEST__SHARD_MAX_AGE", "1s".into()),
        ("INGEST__POLL_INTERVAL", "0.3s".into()),
        ("SERVE__LISTEN_ADDR", "127.0.0.1:0".into()),
        ("SERVE__METRICS_ADDR", "127.0.0.1:0".into()),
        ("SERVE__POLL_INTERVAL", "1s".into()),
        ("SERVE__THREADS", "1".into()),
        ("INGEST__METRICS_ADDR", "127.0.0.1:0".into()),
        ("PREPROCESS__METRICS_ADDR", "127.0.0.1:0".into()),
        ("TRAIN__METRICS_ADDR", "127.0.0.1:0".into()),
        ("EVAL__METRICS_ADDR", "127.0.0.1:0".into()),
    ]);
    let mut env = env;
    if let Ok(seed) = std::env::var("WHOLE_LOOP_SEED") {
        env.extend(env_vars([("PREPROCESS__SEED", seed.clone()), ("TRAIN__SEED", seed)]));
    }
    let with = |extra: &[(&str, String)]| {
        let mut e = env.clone();
        e.extend(env_vars(extra.iter().cloned()));
        e
    };
    let mut procs = Procs(Vec::new(), store.clone());

    // The validation set, once (no train images: those are uploaded).
    let once = procs.start(
        "inception-ingest",
        &[
            "--train-directory",
            empty_train.to_str().expect("utf-8"),
            "--validation-directory",
            validation.join("validation").to_str().expect("utf-8"),
            "--labels-file",
            labels_file.to_str().expect("utf-8"),
        ],
        &env,
        &logs.join("ingest-validation"),
    );
    let status = procs.0[once].wait(Duration::from_secs(120));
    assert!(status.success(), "one-shot ingest of the validation set: {status}\n{}", procs.context());

    // The loop's services; the first uploads.
    let incoming_arg = incoming.to_str().expect("utf-8");
    let labels_arg = labels_file.to_str().expect("utf-8");
    procs.start(
        "inception-ingest",
        &["--incoming", incoming_arg, "--labels-file", labels_arg],
        &env,
        &logs.join("ingest"),
    );
    procs.start("inception-preprocess", &[], &env, &logs.join("preprocess"));
    let evaluator = procs.start("inception-evaluator", &[], &env, &logs.join("evaluator"));
    let serve = procs.start("inception-serve", &[], &env, &logs.join("serve"));
    let trainer = procs.start(
        "inception-trainer",
        &[],
        &with(&[("TRAIN__MAX_STEPS", FIRST_STEPS.to_string())]),
        &logs.join("trainer-1"),
    );
    drop_all(&incoming, &first_uploads);
    // The server's ports, as it bound them.
    let mut ports = None;
    wait_until(
        "the server listening",
        WAIT,
        || {
            let (_, err) = procs.0[serve].output();
            let api = bound_port(&err, "serving POST /v1/classify", "addr");
            let metrics = bound_port(&err, "metrics and health endpoints listening", "bound");
            ports = api.zip(metrics);
            ports.is_some()
        },
        || procs.context(),
    );
    let (serve_port, serve_metrics) = ports.expect("bound ports");

    // 1. Trained, evaluated, promoted, served.
    let status = procs.0[trainer].wait(WAIT);
    assert!(status.success(), "the first trainer run: {status}\n{}", procs.context());
    assert_eq!(pointer_step(&store), Some(FIRST_STEPS));
    wait_until("every first checkpoint decided", WAIT, || settled(&store), || procs.context());
    let first_promoted = promoted_step(&store).expect("a promoted checkpoint");
    let first_decision = decision(&store, first_promoted).expect("its decision");
    assert_eq!(first_decision["decision"], "promoted", "{first_decision}");
    eprintln!(
        "{:.0?}: steps {:?} evaluated; step {first_promoted} promoted (precision@1 {})",
        t0.elapsed(),
        kept_steps(&store),
        first_decision["precision_at_1"]
    );
    let probe = std::fs::read(validation.join("validation/roses/roses_0000.jpg")).expect("a validation image");
    wait_until(
        "the server answering with the promoted step",
        WAIT,
        || served_step(serve_port, &probe) == Ok(first_promoted),
        || format!("last answer: {:?}\n{}", served_step(serve_port, &probe), procs.context()),
    );
    let (status, ready) = http_get(serve_port, "/readyz").expect("readyz");
    assert!(status.contains("200") && ready.contains(&format!("serving step {first_promoted} ")), "{status}: {ready}");
    assert_eq!(scraped_value(serve_metrics, "inception_serve_step"), Some(first_promoted as f64));

    // 2. A client keeps sending while the second uploads are trained on and
    // a later checkpoint is promoted.
    let images: Vec<Vec<u8>> = inception_demo_data::DEMO_LABELS
        .iter()
        .map(|l| std::fs::read(validation.join(format!("validation/{l}/{l}_0001.jpg"))).expect("validation image"))
        .collect();
    let (stop, seen) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Seen::default())));
    let sender = {
        let (stop, seen) = (Arc::clone(&stop), Arc::clone(&seen));
        std::thread::spawn(move || client(serve_port, images, stop, seen))
    };
    drop_all(&incoming, &second_uploads);
    let all = LABELS * UPLOADS_PER_LABEL;
    wait_until(
        "ingest writing every upload into shards",
        WAIT,
        || all_in_shards(&store, "set1_", all) && all_in_shards(&store, "set2_", all),
        || procs.context(),
    );
    let ((first_shards, ones), (second_shards, twos)) = (shards_with(&store, "set1_"), shards_with(&store, "set2_"));
    assert_eq!((ones.len(), twos.len()), (all, all), "each upload in one record: {ones:?} {twos:?}");
    assert!(first_shards.is_disjoint(&second_shards), "{first_shards:?} {second_shards:?}");
    let trainer = procs.start("inception-trainer", &[], &env, &logs.join("trainer-2"));
    let both: BTreeSet<String> = first_shards.union(&second_shards).cloned().collect();
    wait_until(
        "a checkpoint trained on both upload sets promoted",
        WAIT,
        || promoted_step(&store).is_some_and(|s| s > FIRST_STEPS && trained_on(&store, s).is_superset(&both)),
        || format!("shards {both:?}\n{}", procs.context()),
    );
    // Stopped (it saves a last checkpoint), and every checkpoint decided.
    let status = procs.0[trainer].terminate(Duration::from_secs(60));
    assert!(status.success(), "the second trainer run did not stop cleanly: {status}\n{}", procs.context());
    wait_until("every checkpoint decided", WAIT, || settled(&store), || procs.context());
    let last = pointer_step(&store).expect("the pointer");
    let best = promoted(&store).expect("promoted pointer");
    let best_step = best["step"].as_u64().expect("step");
    assert!(best_step > FIRST_STEPS && trained_on(&store, best_step).is_superset(&both), "{best}");
    // The gate promotes nothing less precise; the model learnt something.
    let first_precision = first_decision["precision_at_1"].as_f64().expect("precision");
    let best_precision = best["precision_at_1"].as_f64().expect("precision");
    assert!(best_precision >= first_precision && best_precision > 0.3, "{first_decision}\n{best}");
    wait_until(
        "the server answering with the last promoted step",
        WAIT,
        || seen.lock().expect("client log").steps.last() == Some(&best_step),
        || format!("readyz: {:?}\n{}", http_get(serve_port, "/readyz"), procs.context()),
    );
    let mut decided = BTreeMap::new();
    for s in kept_steps(&store) {
        let d = decision(&store, s).unwrap_or_else(|| panic!("no decision on step {s}"));
        decided.insert(s, d["decision"].as_str().unwrap_or_default().to_string());
    }
    eprintln!(
        "{:.0?}: trained to step {last}; decisions {decided:?}; step {best_step} promoted (precision@1 {})",
        t0.elapsed(),
        best["precision_at_1"]
    );

    // 3. A worse checkpoint: the last one's, its logits layer made to
    // predict daisy for every image, as a newer step, pointed at and announced.
    let bad = last + 1;
    let dir_of = checkpoints(&store);
    let mut meta = read_json(&dir_of.join(format!("model.ckpt-{last}.json"))).expect("the last metadata");
    let weights = std::fs::read(dir_of.join(format!("model.ckpt-{last}.safetensors"))).expect("the last weights");
    let (bad_meta, bad_weights) =
        (format!("checkpoints/{RUN}/model.ckpt-{bad}.json"), format!("checkpoints/{RUN}/model.ckpt-{bad}.safetensors"));
    meta["step"] = bad.into();
    meta["weights"] = bad_weights.clone().into();
    put(&store.join(&bad_weights), &constant_logits(&weights, 1));
    put(&store.join(&bad_meta), &serde_json::to_vec(&meta).expect("metadata"));
    let mut pointer = read_json(&dir_of.join("checkpoint")).expect("the pointer");
    pointer["all"].as_array_mut().expect("kept").push(bad_meta.clone().into());
    pointer["step"] = bad.into();
    pointer["metadata"] = bad_meta.clone().into();
    put(&dir_of.join("checkpoint"), &serde_json::to_vec(&pointer).expect("pointer"));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let client = async_nats::connect(nats.url()).await.expect("connect to NATS");
        let streams = Streams::new(client, "inception");
        let ready = CheckpointReady { run: RUN.into(), step: bad, uri: bad_weights.clone(), metadata_uri: bad_meta };
        let subject = streams.subjects.checkpoints(RUN);
        let id = format!("{RUN}-{bad}");
        streams
            .publish_acked(&subject, ready.encode_to_vec().into(), &id, &CancellationToken::new())
            .await
            .expect("announce the checkpoint");
    });
    wait_until(
        "a decision on the damaged checkpoint",
        WAIT,
        || decision(&store, bad).is_some() && store.join(format!("eval/{RUN}/step-{bad}.json")).is_file(),
        || procs.context(),
    );
    let d = decision(&store, bad).expect("decision");
    eprintln!("{:.0?}: step {bad} (damaged): {d}", t0.elapsed());
    assert_eq!(d["decision"], "rejected", "{d}");
    assert_eq!(d["promoted"]["step"], best_step, "{d}");
    let reasons: Vec<&str> = d["reasons"].as_array().expect("reasons").iter().filter_map(Value::as_str).collect();
    assert!(
        reasons.iter().any(|r| r.contains(&format!("is below the promoted step {best_step}'s"))
            && r.contains("promotion.min_precision_gain")),
        "the precision margin is a reason: {d}"
    );
    // At most 2 of 8 right in each label but daisy would make at most
    // 16 of 40 right: above that, some label's recall fell from over 0.3 to 0.
    let regressed: Vec<&str> =
        d["regressed"].as_array().expect("regressed").iter().filter_map(|r| r["label"].as_str()).collect();
    if best_precision > 0.4 {
        assert!(!regressed.is_empty(), "{d}");
    }
    assert!(!regressed.contains(&"daisy"), "daisy's recall rose to 1: {d}");
    if !regressed.is_empty() {
        assert!(
            reasons.iter().any(|r| r.contains("promotion.max_recall_drop") && regressed.iter().all(|l| r.contains(l))),
            "a reason names every regressed label: {d}"
        );
    }
    let eval = read_json(&store.join(format!("eval/{RUN}/step-{bad}.json"))).expect("its evaluation");
    assert!((eval["precision_at_1"].as_f64().expect("precision") - 1.0 / LABELS as f64).abs() < 1e-9, "{eval}");
    assert_eq!(promoted_step(&store), Some(best_step), "the promoted pointer stays");
    // The server stays too: answers go on coming from the better checkpoint
    // for a few of its polls of the pointer.
    let (answered, polled) = (seen.lock().expect("client log").steps.len(), Instant::now() + Duration::from_secs(3));
    wait_until(
        "more answers after the rejection",
        WAIT,
        || Instant::now() > polled && seen.lock().expect("client log").steps.len() > answered + 10,
        || procs.context(),
    );
    stop.store(true, Ordering::Relaxed);
    sender.join().expect("the client thread");
    let (status, ready) = http_get(serve_port, "/readyz").expect("readyz");
    assert!(ready.contains(&format!("serving step {best_step} ")), "{status}: {ready}");
    assert_eq!(scraped_value(serve_metrics, "inception_serve_step"), Some(best_step as f64));

    // What the client saw: no failure, promoted steps only, never back.
    let seen = seen.lock().expect("client log");
    assert!(
        seen.failures.is_empty(),
        "{} failed requests: {:?}\n{}",
        seen.failures.len(),
        seen.failures,
        procs.context()
    );
    let ever_promoted: BTreeSet<u64> =
        decided.iter().filter(|(_, d)| d.as_str() == "promoted").map(|(s, _)| *s).collect();
    assert!(seen.steps.iter().all(|s| ever_promoted.contains(s)), "{:?} not all in {ever_promoted:?}", seen.steps);
    assert!(seen.steps.windows(2).all(|w| w[0] <= w[1]), "the served step went back: {:?}", seen.steps);
    assert_eq!(seen.steps.first(), Some(&first_promoted));
    assert_eq!(seen.steps.last(), Some(&best_step));
    let swaps: Vec<u64> = seen.steps.windows(2).filter(|w| w[0] != w[1]).map(|w| w[1]).collect();
    eprintln!(
        "{:.0?}: {} answers, all 200; served steps {first_promoted} -> {swaps:?}",
        t0.elapsed(),
        seen.steps.len()
    );

    // 4. Lineage: an image of each upload set was in its training data.
    let (one, two) = (&first_uploads[1], &second_uploads[UPLOADS_PER_LABEL + 2]);
    let (one_file, two_file) = (one.1.to_str().expect("utf-8"), two.1.to_str().expect("utf-8"));
    let cli = procs.start(
        "inception",
        &["lineage", "promoted", "--image", one_file, "--image", &two.0, "--image", two_file, "--json"],
        &env,
        &logs.join("lineage"),
    );
    let status = procs.0[cli].wait(Duration::from_secs(60));
    assert!(status.success(), "inception lineage: {status}\n{}", procs.context());
    let (out, _) = procs.0[cli].output();
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(report["step"], best_step, "{out}");
    let answers = report["images"].as_array().expect("answers");
    assert_eq!(answers.len(), 3, "{out}");
    for (answer, shards) in answers.iter().zip([&first_shards, &second_shards, &second_shards]) {
        assert_eq!(answer["verdict"], "yes", "{answer}");
        let shard = answer["found"][0]["shard"].as_str().expect("a shard");
        assert!(shards.contains(shard), "{shard} not in {shards:?}: {answer}");
    }

    // Every service still up, and stops cleanly.
    for i in [serve, evaluator, 1, 2] {
        let name = procs.0[i].name.clone();
        assert!(procs.0[i].is_running(), "{name} stopped\n{}", procs.context());
        let status = procs.0[i].terminate(Duration::from_secs(60));
        assert!(status.success(), "{name} did not stop cleanly: {status}\n{}", procs.context());
    }
    eprintln!("{:.0?}: whole loop done", t0.elapsed());
    drop(nats);
}
