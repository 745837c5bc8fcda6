//! Chaos: the whole pipeline (continuous ingest, a preprocess worker, the
//! trainer, the evaluator) runs over a real nats-server with JetStream on
//! file storage while a seeded driver `kill -9`s each service in turn and
//! restarts it, kills and restarts nats-server on the same port and store
//! directory, and drops new images into the incoming folder. Afterwards:
//!
//! * every accepted image is in exactly one shard, and every dropped image is
//!   in the ingest ledger exactly once (written, skipped or quarantined);
//! * the trainer's checkpointed step never goes backwards, each restart
//!   resumed from the complete checkpoint the pointer named at the kill, and
//!   each incarnation counts on from there one step at a time;
//! * every checkpoint was evaluated exactly once (one result object and one
//!   `EvalResult` per announced checkpoint, at most one completed evaluation);
//! * no batch object outlives the orphan window and no temporary file is left;
//! * every service answers /healthz and /readyz again, learnt of every shard
//!   (also those announced after the last NATS restart) and stops cleanly.
//!
//! `CHAOS_SEED=<n>` replays another schedule. Run alone:
//! `cargo test -p inception-integration-tests --test chaos -- --nocapture`.

use inception_core::local_nats::LocalNats;
use inception_core::nats::Streams;
use inception_core::settings::env_vars;
use inception_integration_tests::{
    checkpoint_pointer, drop_image, failure_lines, files_under, free_port, http_get, logged_steps, pointer_step,
    record_filenames, wait_until, Proc,
};
use inception_proto::pipeline::{BatchReady, EvalResult};
use inception_proto::Message;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

const ORPHAN_AGE_SECS: u64 = 4;
const CHECKPOINT_EVERY: u64 = 10;
const KEEP_CHECKPOINTS: usize = 5;
const ROUNDS: usize = 12;

/// splitmix64: a seeded schedule without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }
}

/// One service: its command line, fixed metrics port and one log folder per incarnation.
struct Service {
    bin: &'static str,
    args: Vec<String>,
    env: Vec<(String, String)>,
    port: u16,
    logs: PathBuf,
    incarnations: Vec<PathBuf>,
    proc: Option<Proc>,
}

impl Service {
    fn new(bin: &'static str, args: Vec<String>, env: &[(String, String)], port_key: &str, logs: &Path) -> Self {
        let port = free_port();
        let mut env = env.to_vec();
        env.extend(env_vars([(port_key, format!("127.0.0.1:{port}"))]));
        Service { bin, args, env, port, logs: logs.join(bin), incarnations: Vec::new(), proc: None }
    }

    fn start(&mut self) {
        let dir = self.logs.join(self.incarnations.len().to_string());
        std::fs::create_dir_all(&dir).expect("log folder");
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.proc = Some(Proc::spawn(self.bin, &args, &self.env, &dir));
        self.incarnations.push(dir);
    }

    fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            assert!(p.is_running(), "{} died on its own before the kill:\n{}", self.bin, self.tail());
            p.kill();
        }
    }

    fn running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(Proc::is_running)
    }

    fn out(&self, i: usize) -> String {
        std::fs::read_to_string(self.incarnations[i].join(format!("{}.out", self.bin))).unwrap_or_default()
    }
    fn err(&self, i: usize) -> String {
        std::fs::read_to_string(self.incarnations[i].join(format!("{}.err", self.bin))).unwrap_or_default()
    }
    fn tail(&self) -> String {
        let last = self.incarnations.len().saturating_sub(1);
        let (out, err) = (self.out(last), self.err(last));
        let cut = |s: &str| s[s.len().saturating_sub(3000)..].to_string();
        format!(
            "--- {} #{last} failures\n{}\n--- stdout\n{}\n--- stderr\n{}",
            self.bin,
            failure_lines(&err, 10),
            cut(&out),
            cut(&err)
        )
    }
}

/// Steps of the metadata keys the pointer keeps.
fn kept_steps(store: &Path) -> Vec<u64> {
    let Some(p) = checkpoint_pointer(store) else { return Vec::new() };
    p["all"].as_array().into_iter().flatten().filter_map(|k| step_of(k.as_str()?)).collect()
}

fn step_of(key: &str) -> Option<u64> {
    key.rsplit("model.ckpt-").next()?.split('.').next()?.parse().ok()
}

/// Values of `<before>N<after>` on the lines of `text` that contain `marker`, in order.
fn numbers_after(text: &str, marker: &str, before: &str, after: char) -> Vec<u64> {
    text.lines()
        .filter(|l| l.contains(marker))
        .filter_map(|l| l.split(before).nth(1)?.split(after).next()?.trim().parse().ok())
        .collect()
}

/// Entry files of the ledger (not its segments).
fn ledger_entry_files(store: &Path) -> Vec<PathBuf> {
    files_under(&store.join("datasets/flowers/ingest/ledger"))
        .into_iter()
        .filter(|p| !p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("segment-")))
        .collect()
}

fn ledger_entries(store: &Path) -> Vec<serde_json::Value> {
    ledger_entry_files(store)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| serde_json::from_slice(&std::fs::read(&p).expect("ledger entry")).expect("ledger entry is JSON"))
        .collect()
}

/// Source keys the ledger took, with their outcome.
fn ledger_images(store: &Path) -> Vec<(String, String)> {
    ledger_entries(store)
        .iter()
        .flat_map(|e| e["images"].as_array().cloned().unwrap_or_default())
        .map(|i| (i["key"].as_str().unwrap_or("").to_string(), i["result"].as_str().unwrap_or("").to_string()))
        .collect()
}

fn ledger_settled(store: &Path) -> bool {
    let files = ledger_entry_files(store);
    let done: HashSet<String> =
        files.iter().filter_map(|p| p.to_str()?.strip_suffix(".done").map(str::to_string)).collect();
    files.iter().filter_map(|p| p.to_str()?.strip_suffix(".json")).all(|p| done.contains(p))
}

fn healthy(port: u16) -> bool {
    ["/healthz", "/readyz"].iter().all(|p| http_get(port, p).is_ok_and(|(status, _)| status.contains("200")))
}

/// Object keys the BATCHES stream still holds messages for.
async fn queued_batches(url: &str) -> BTreeSet<String> {
    let client = async_nats::connect(url).await.expect("connect to NATS");
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("INCEPTION_BATCHES").await.expect("batch stream");
    let state = stream.info().await.expect("batch stream info").state.clone();
    let mut uris = BTreeSet::new();
    if state.messages == 0 {
        return uris;
    }
    for seq in state.first_sequence..=state.last_sequence {
        if let Ok(m) = stream.get_raw_message(seq).await {
            if let Ok(b) = BatchReady::decode(m.payload.as_ref()) {
                uris.insert(b.uri);
            }
        }
    }
    uris
}

/// Every `EvalResult` of the run, from the EVALS stream's history.
async fn eval_results(url: &str) -> Vec<EvalResult> {
    let client = async_nats::connect(url).await.expect("connect to NATS");
    let streams = Streams::new(client, "inception");
    let stream = streams.evals().await.expect("evals stream");
    let subject = streams.subjects.evals("default");
    streams
        .history(&stream, &subject)
        .await
        .expect("eval history")
        .iter()
        .map(|p| EvalResult::decode(p.as_ref()).expect("an EvalResult"))
        .collect()
}

#[test]
fn the_pipeline_survives_kills_and_nats_restarts_and_loses_nothing() {
    let seed: u64 = std::env::var("CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(8);
    let mut rng = Rng(seed);
    let t0 = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let root = if std::env::var_os("CHAOS_KEEP").is_some() { dir.keep() } else { dir.path().to_path_buf() };
    let root = root.as_path();
    eprintln!("chaos seed {seed} in {}", root.display());
    let (images, pool, store, logs, incoming, nats_dir) = (
        root.join("images"),
        root.join("pool"),
        root.join("store"),
        root.join("logs"),
        root.join("incoming"),
        root.join("nats"),
    );
    for d in [&logs, &incoming] {
        std::fs::create_dir_all(d).expect("folder");
    }
    inception_demo_data::generate(&images, 4, 2, 21).expect("initial images");
    inception_demo_data::generate(&pool, 8, 0, 22).expect("images to drop");
    let labels_file = root.join("labels.txt");
    std::fs::write(&labels_file, inception_demo_data::DEMO_LABELS.join("\n")).expect("labels");
    // Images to drop, in a seeded order: good ones, plus one corrupt file
    // and one of an unknown label.
    let mut to_drop: Vec<(String, Vec<u8>)> = files_under(&pool.join("train"))
        .into_iter()
        .map(|p| {
            let label = p.parent().and_then(Path::file_name).expect("label").to_string_lossy().into_owned();
            let name = p.file_name().expect("name").to_string_lossy().into_owned();
            (format!("{label}/c_{name}"), std::fs::read(&p).expect("pool image"))
        })
        .collect();
    for i in (1..to_drop.len()).rev() {
        to_drop.swap(i, rng.range(0, i as u64) as usize);
    }
    let corrupt = to_drop[0].1[..100].to_vec();
    to_drop.insert(3, ("roses/c_broken.jpg".into(), corrupt));
    let cactus = to_drop[5].1.clone();
    to_drop.insert(7, ("cactus/c_cactus.jpg".into(), cactus));
    let total_drops = to_drop.len();
    let mut to_drop = to_drop.into_iter();

    let mut nats = LocalNats::start(&nats_dir).expect("nats-server");
    let nats_port = nats.port();
    let url = nats.url();
    let env = env_vars([
        ("NATS__URL", url.clone()),
        ("NATS__CONNECT_RETRY", "0.2s".into()),
        ("NATS__CONNECT_RETRY_MAX", "1s".into()),
        ("STORE__URL", format!("file://{}", store.display())),
        ("MODEL__IMAGE_SIZE", "75".into()),
        ("MODEL__DEPTH_MULTIPLIER", "0.1".into()),
        ("MODEL__MIN_DEPTH", "8".into()),
        ("PIPELINE__BATCH_SIZE", "8".into()),
        ("PIPELINE__QUEUE_CAPACITY", "3".into()),
        ("PREPROCESS__INPUT_QUEUE_MEMORY_FACTOR", "0.02".into()),
        ("PREPROCESS__SHUFFLE_BUFFER_MAX_BYTES", "2000000".into()),
        ("PREPROCESS__ORPHAN_BATCH_AGE", format!("{ORPHAN_AGE_SECS}s")),
        ("PREPROCESS__WORKER_ID", "w".into()),
        ("TRAIN__MAX_STEPS", "100000".into()),
        ("TRAIN__CHECKPOINT_EVERY_STEPS", CHECKPOINT_EVERY.to_string()),
        ("TRAIN__KEEP_CHECKPOINTS", KEEP_CHECKPOINTS.to_string()),
        ("TRAIN__LOG_EVERY_STEPS", "1".into()),
        ("TRAIN__BATCH_ACK_WAIT", "10s".into()),
        ("EVAL__EVAL_INTERVAL", "2s".into()),
        ("EVAL__NUM_EXAMPLES", "0".into()),
        ("EVAL__BATCH_SIZE", "10".into()),
        ("INGEST__SHARD_MAX_IMAGES", "6".into()),
        ("INGEST__SHARD_MAX_AGE", "1s".into()),
        ("INGEST__POLL_INTERVAL", "0.3s".into()),
    ]);

    // The initial data set, once: labels, validation shards, two train shards.
    let mut once_env = env.clone();
    once_env.extend(env_vars([("INGEST__METRICS_ADDR", "127.0.0.1:0")]));
    let (train_dir, validation_dir) = (images.join("train"), images.join("validation"));
    let mut once = Proc::spawn(
        "inception-ingest",
        &[
            "--train-directory",
            train_dir.to_str().expect("utf-8"),
            "--validation-directory",
            validation_dir.to_str().expect("utf-8"),
            "--labels-file",
            labels_file.to_str().expect("utf-8"),
        ],
        &once_env,
        &logs,
    );
    assert!(once.wait(Duration::from_secs(60)).success(), "{:?}", once.output());

    let ingest_args = vec![
        "--incoming".into(),
        incoming.display().to_string(),
        "--labels-file".into(),
        labels_file.display().to_string(),
    ];
    let mut services = [
        Service::new("inception-ingest", ingest_args, &env, "INGEST__METRICS_ADDR", &logs),
        Service::new("inception-preprocess", Vec::new(), &env, "PREPROCESS__METRICS_ADDR", &logs),
        Service::new("inception-trainer", Vec::new(), &env, "TRAIN__METRICS_ADDR", &logs),
        Service::new("inception-evaluator", Vec::new(), &env, "EVAL__METRICS_ADDR", &logs),
    ];
    const TRAINER: usize = 2;
    let context = |services: &[Service]| services.iter().map(Service::tail).collect::<Vec<_>>().join("\n");
    for s in &mut services {
        s.start();
    }
    wait_until(
        "the first checkpoint",
        Duration::from_secs(120),
        || pointer_step(&store).is_some(),
        || context(&services),
    );
    eprintln!("{:.0?}: pipeline up, first checkpoint at step {:?}", t0.elapsed(), pointer_step(&store));

    // The chaos: each round drops images, then kills one service (in turn)
    // or nats-server, and restarts it.
    let (mut kills, mut nats_restarts, mut dropped) = (0usize, 0usize, Vec::<String>::new());
    let mut pointer_at_trainer_kill: Vec<Option<u64>> = Vec::new();
    let nats_rounds: BTreeSet<usize> = [rng.range(1, 3) as usize, rng.range(5, 7) as usize, ROUNDS - 1].into();
    let mut victim = rng.range(0, 3) as usize;
    for round in 0..ROUNDS {
        std::thread::sleep(rng.millis(1000, 3500));
        for _ in 0..rng.range(2, 5) {
            if let Some((key, bytes)) = to_drop.next() {
                drop_image(&incoming, &key, &bytes);
                dropped.push(key);
            }
        }
        std::thread::sleep(rng.millis(0, 1500));
        if nats_rounds.contains(&round) {
            nats.kill();
            std::thread::sleep(rng.millis(200, 1500));
            nats = LocalNats::start_on(&nats_dir, Some(nats_port)).expect("nats-server restarts on its port");
            nats_restarts += 1;
            eprintln!("{:.0?}: round {round}: nats-server killed and restarted", t0.elapsed());
        } else {
            let s = &mut services[victim];
            let step = pointer_step(&store);
            s.kill9();
            if victim == TRAINER {
                // What the next incarnation must resume from.
                pointer_at_trainer_kill.push(pointer_step(&store));
            }
            kills += 1;
            eprintln!("{:.0?}: round {round}: kill -9 {} (checkpoint step {step:?})", t0.elapsed(), s.bin);
            std::thread::sleep(rng.millis(0, 1000));
            s.start();
            victim = (victim + 1) % services.len();
        }
        for s in &mut services {
            assert!(s.running(), "{} stopped during the chaos\n{}", s.bin, s.tail());
        }
    }
    // The rest of the images arrive after the last NATS restart: the
    // services that lived through it must still hear of the new shards.
    for (key, bytes) in to_drop.by_ref() {
        drop_image(&incoming, &key, &bytes);
        dropped.push(key);
    }
    eprintln!(
        "{:.0?}: chaos over: {kills} kills, {nats_restarts} NATS restarts, {} images dropped",
        t0.elapsed(),
        dropped.len()
    );
    assert_eq!(dropped.len(), total_drops);

    // Quiet again: every image taken, every shard known to the worker, a
    // fresh checkpoint, every batch object either queued or young.
    let dropped_set: BTreeSet<&str> = dropped.iter().map(String::as_str).collect();
    wait_until(
        "ingest taking every dropped image",
        Duration::from_secs(60),
        || {
            let taken: BTreeSet<String> = ledger_images(&store).into_iter().map(|(k, _)| k).collect();
            dropped_set.iter().all(|k| taken.contains(*k)) && ledger_settled(&store)
        },
        || context(&services),
    );
    let dataset_dir = store.join("datasets/flowers");
    let train_shards: Vec<String> = files_under(&dataset_dir)
        .iter()
        // Shards lie in the dataset's folder itself (manifests/ holds their manifests).
        .filter(|p| p.parent() == Some(dataset_dir.as_path()))
        .filter_map(|p| {
            p.file_name()?.to_str().filter(|n| n.starts_with("train-") && !n.contains('#')).map(str::to_string)
        })
        .collect();
    let worker = &services[1];
    let worker_now = worker.incarnations.len() - 1;
    wait_until(
        "the worker learning of every train shard",
        Duration::from_secs(30),
        || {
            let err = worker.err(worker_now);
            train_shards.iter().all(|s| err.contains(&format!("new train shard datasets/flowers/{s} ")))
        },
        || format!("shards {train_shards:?}\n{}", worker.tail()),
    );
    let quiet_from = pointer_step(&store).unwrap_or(0);
    wait_until(
        "a checkpoint after the chaos",
        Duration::from_secs(60),
        || pointer_step(&store).is_some_and(|s| s >= quiet_from + CHECKPOINT_EVERY),
        || context(&services),
    );
    for s in &mut services {
        assert!(s.running(), "{} is not running\n{}", s.bin, s.tail());
        let port = s.port;
        wait_until(&format!("{} healthy and ready", s.bin), Duration::from_secs(20), || healthy(port), || s.tail());
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let batches_dir = store.join("batches/flowers");
    wait_until(
        "no batch object older than the orphan window that no message points at",
        Duration::from_secs(3 * ORPHAN_AGE_SECS),
        || {
            let queued = runtime.block_on(queued_batches(&url));
            files_under(&batches_dir).iter().all(|p| {
                let key = format!("batches/flowers/{}", p.file_name().unwrap_or_default().to_string_lossy());
                let age =
                    p.metadata().and_then(|m| m.modified()).ok().and_then(|m| SystemTime::now().duration_since(m).ok());
                queued.contains(&key)
                    || age.is_some_and(|a| a < Duration::from_secs(ORPHAN_AGE_SECS + ORPHAN_AGE_SECS / 2 + 2))
            })
        },
        || format!("{:?}", files_under(&batches_dir)),
    );

    // Stop: the trainer saves a last checkpoint on SIGTERM; the evaluator
    // then catches up with every kept checkpoint before it stops too.
    for i in [0, 1, TRAINER] {
        let s = &mut services[i];
        let mut p = s.proc.take().expect("running");
        let status = p.terminate(Duration::from_secs(60));
        assert!(status.success(), "{} did not stop cleanly: {status}\n{}", s.bin, s.tail());
    }
    let kept = kept_steps(&store);
    wait_until(
        "the evaluator evaluating every kept checkpoint",
        Duration::from_secs(60),
        || kept.iter().all(|s| store.join(format!("eval/default/step-{s}.json")).is_file()),
        || format!("kept {kept:?}\n{}", services[3].tail()),
    );
    let evaluator = &mut services[3];
    let mut p = evaluator.proc.take().expect("running");
    let status = p.terminate(Duration::from_secs(60));
    assert!(status.success(), "the evaluator did not stop cleanly: {status}\n{}", evaluator.tail());

    // 1. Every accepted image is in exactly one shard.
    let ledger = ledger_images(&store);
    let mut taken_count: BTreeMap<&str, usize> = BTreeMap::new();
    for (k, _) in &ledger {
        *taken_count.entry(k.as_str()).or_default() += 1;
    }
    assert!(taken_count.values().all(|&n| n == 1), "an image taken twice: {taken_count:?}");
    assert_eq!(
        taken_count.keys().copied().collect::<BTreeSet<_>>(),
        dropped_set,
        "the ledger lists exactly the dropped images"
    );
    let outcome: BTreeMap<&str, &str> = ledger.iter().map(|(k, r)| (k.as_str(), r.as_str())).collect();
    assert_eq!(outcome["roses/c_broken.jpg"], "skipped_corrupt");
    assert_eq!(outcome["cactus/c_cactus.jpg"], "quarantined");
    assert!(store.join("datasets/flowers/ingest/quarantine/cactus/c_cactus.jpg.reason.json").is_file());
    let accepted: BTreeSet<String> = ledger
        .iter()
        .filter(|(_, r)| r == "written")
        .map(|(k, _)| k.rsplit('/').next().unwrap_or_default().to_string())
        .collect();
    let initial: BTreeSet<String> = files_under(&train_dir)
        .iter()
        .map(|p| p.file_name().unwrap_or_default().to_string_lossy().into_owned())
        .collect();
    let mut in_shards: BTreeMap<String, usize> = BTreeMap::new();
    for shard in &train_shards {
        for name in record_filenames(&std::fs::read(store.join("datasets/flowers").join(shard)).expect("shard")) {
            *in_shards.entry(name).or_default() += 1;
        }
    }
    let twice: Vec<_> = in_shards.iter().filter(|(_, &n)| n != 1).collect();
    assert!(twice.is_empty(), "images in more than one shard: {twice:?}");
    let expected: BTreeSet<String> = accepted.union(&initial).cloned().collect();
    assert_eq!(in_shards.keys().cloned().collect::<BTreeSet<_>>(), expected, "shards hold exactly the accepted images");

    // 2. The trainer's step never goes backwards; each restart resumed from
    // the complete checkpoint the pointer named when it was killed.
    let trainer = &services[TRAINER];
    let mut announced: Vec<u64> = Vec::new();
    let mut resumes = 0;
    for i in 0..trainer.incarnations.len() {
        let (out, err) = (trainer.out(i), trainer.err(i));
        let resumed = numbers_after(&err, "resumed from ", " at step ", ' ').first().copied();
        let expected_start = if i == 0 { None } else { pointer_at_trainer_kill[i - 1] };
        assert_eq!(resumed, expected_start, "incarnation {i} resumed from the pointer's checkpoint\n{err}");
        if let Some(step) = resumed {
            assert!(
                err.contains(&format!("resumed from checkpoints/default/model.ckpt-{step}.json at step {step}")),
                "{err}"
            );
            resumes += 1;
        }
        let steps = logged_steps(&out);
        assert_eq!(
            steps.first().copied(),
            Some(resumed.unwrap_or(0) + 1),
            "incarnation {i} counts on from its checkpoint"
        );
        assert!(steps.windows(2).all(|w| w[1] == w[0] + 1), "incarnation {i}: {steps:?}");
        announced.extend(numbers_after(&err, "written and announced", "checkpoints/default/model.ckpt-", '.'));
    }
    assert!(announced.windows(2).all(|w| w[1] > w[0]), "checkpoint steps only go up: {announced:?}");
    assert_eq!(announced.last().copied(), pointer_step(&store));

    // 3. Every checkpoint evaluated exactly once.
    let results: BTreeSet<u64> = files_under(&store.join("eval/default"))
        .iter()
        .filter_map(|p| p.file_name()?.to_str()?.strip_prefix("step-")?.strip_suffix(".json")?.parse().ok())
        .collect();
    let announced_set: BTreeSet<u64> = announced.iter().copied().collect();
    assert_eq!(results, announced_set, "one result per announced checkpoint");
    let messages = runtime.block_on(eval_results(&url));
    let mut per_step: BTreeMap<u64, usize> = BTreeMap::new();
    for m in &messages {
        *per_step.entry(m.step).or_default() += 1;
    }
    assert_eq!(per_step.keys().copied().collect::<BTreeSet<_>>(), announced_set, "an EvalResult per checkpoint");
    assert!(per_step.values().all(|&n| n == 1), "one EvalResult per checkpoint: {per_step:?}");
    let evaluator = &services[3];
    let mut completed: BTreeMap<u64, usize> = BTreeMap::new();
    for i in 0..evaluator.incarnations.len() {
        let out = evaluator.out(i);
        let mut current = None;
        for line in out.lines() {
            if let Some(step) = line.split("at step=").nth(1).and_then(|s| s.trim_end_matches('.').parse::<u64>().ok())
            {
                current = Some(step);
            } else if line.contains("precision @ 1 = ") {
                *completed.entry(current.expect("a precision line after a load line")).or_default() += 1;
            }
        }
    }
    assert!(completed.values().all(|&n| n == 1), "at most one completed evaluation per checkpoint: {completed:?}");

    // 4. Nothing left behind: no temporary file anywhere in the store.
    let temporary: Vec<_> = files_under(&store).into_iter().filter(|p| p.to_string_lossy().contains('#')).collect();
    assert!(temporary.is_empty(), "temporary files left: {temporary:?}");

    let figures = format!(
        "chaos (seed {seed}): {kills} kills -9 survived (ingest {}, preprocess {}, trainer {}, evaluator {}), \
         {nats_restarts} NATS restarts, {} trainer resumes; images in: {} dropped ({} written, {} skipped, {} quarantined) \
         + {} initial; images out: {} in {} train shards, each once; {} checkpoints, each evaluated once; final step {:?}; {:.0?}",
        services[0].incarnations.len() - 1,
        services[1].incarnations.len() - 1,
        services[2].incarnations.len() - 1,
        services[3].incarnations.len() - 1,
        resumes,
        dropped.len(),
        ledger.iter().filter(|(_, r)| r == "written").count(),
        ledger.iter().filter(|(_, r)| r.starts_with("skipped")).count(),
        ledger.iter().filter(|(_, r)| r == "quarantined").count(),
        initial.len(),
        in_shards.len(),
        train_shards.len(),
        announced.len(),
        pointer_step(&store),
        t0.elapsed(),
    );
    eprintln!("{figures}");
    drop(nats);
}
