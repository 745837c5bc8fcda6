//! Data-parallel training with trainer ranks as processes, as torchrun or a
//! PyTorchJob starts them (`WORLD_SIZE`, `RANK`, `MASTER_ADDR`,
//! `MASTER_PORT`), fed by a preprocess worker over NATS: checkpoints from
//! rank 0 alone, once per checkpoint step, counting every rank's examples;
//! a rank killed with SIGKILL stops the other within the time-out, and the
//! job started again resumes every rank from the latest checkpoint.

use inception_core::local_nats::LocalNats;
use inception_core::settings::env_vars;
use inception_integration_tests::{failure_lines, free_port, logged_steps, pointer_step, Proc};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const BATCH: u64 = 8;

/// One job at a time: each runs several processes on 2 cores, and ports
/// picked by binding port 0 could be taken by another job's processes
/// before a rank binds its own.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Job {
    _dir: tempfile::TempDir,
    _nats: LocalNats,
    worker: Option<Proc>,
    root: PathBuf,
    store: PathBuf,
    env: Vec<(String, String)>,
}

/// Demo images ingested, a preprocess worker running; `extra` settings for every service.
fn job(extra: &[(&str, &str)]) -> Job {
    let mut job = job_without_worker(extra);
    job.start_worker();
    job
}

/// Demo images ingested; no preprocess worker yet.
fn job_without_worker(extra: &[(&str, &str)]) -> Job {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let (images, store, logs) = (root.join("images"), root.join("store"), root.join("logs"));
    std::fs::create_dir_all(&logs).unwrap();
    inception_demo_data::generate(&images, 12, 2, 5).unwrap();
    let nats = LocalNats::start(&root.join("nats")).unwrap();
    let mut env: Vec<(String, String)> = env_vars([
        ("NATS__URL", nats.url()),
        ("STORE__URL", format!("file://{}", store.display())),
        ("MODEL__IMAGE_SIZE", "75".into()),
        ("MODEL__DEPTH_MULTIPLIER", "0.1".into()),
        ("MODEL__MIN_DEPTH", "8".into()),
        ("PIPELINE__BATCH_SIZE", BATCH.to_string()),
        ("TRAIN__LOG_EVERY_STEPS", "1".into()),
        ("TRAIN__KEEP_CHECKPOINTS", "20".into()),
        ("TRAIN__BATCH_ACK_WAIT", "10s".into()),
        ("TRAIN__THREADS", "1".into()),
        ("INGEST__METRICS_ADDR", "127.0.0.1:0".into()),
        ("PREPROCESS__METRICS_ADDR", "127.0.0.1:0".into()),
        ("TRAIN__METRICS_ADDR", "127.0.0.1:0".into()),
        ("EVAL__METRICS_ADDR", "127.0.0.1:0".into()),
    ]);
    env.extend(env_vars(extra.iter().map(|(k, v)| (*k, v.to_string()))));
    let (train_dir, validation_dir) = (images.join("train"), images.join("validation"));
    let mut ingest = Proc::spawn(
        "inception-ingest",
        &["--train-directory", train_dir.to_str().unwrap(), "--validation-directory", validation_dir.to_str().unwrap()],
        &env,
        &logs,
    );
    assert!(ingest.wait(Duration::from_secs(60)).success(), "{:?}", ingest.output());
    Job { _dir: dir, _nats: nats, worker: None, root, store, env }
}

impl Job {
    fn start_worker(&mut self) {
        self.worker = Some(Proc::spawn("inception-preprocess", &[], &self.env, &self.root.join("logs")));
    }

    /// The `world` ranks of one launch, each logging under `logs/<launch>/rank-K`.
    fn launch(&self, launch: &str, world: u32) -> Vec<Proc> {
        let port = free_port().to_string();
        (0..world)
            .map(|rank| {
                let logs = self.root.join("logs").join(launch).join(format!("rank-{rank}"));
                std::fs::create_dir_all(&logs).unwrap();
                let mut env = self.env.clone();
                for (k, v) in [
                    ("WORLD_SIZE", world.to_string()),
                    ("RANK", rank.to_string()),
                    ("LOCAL_RANK", rank.to_string()),
                    ("MASTER_ADDR", "127.0.0.1".to_string()),
                    ("MASTER_PORT", port.clone()),
                ] {
                    env.push((k.to_string(), v));
                }
                Proc::spawn("inception-trainer", &[], &env, &logs)
            })
            .collect()
    }

    fn metadata(&self, step: u64) -> serde_json::Value {
        let path = self.store.join(format!("checkpoints/default/model.ckpt-{step}.json"));
        serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
    }
}

fn kept_steps(store: &Path) -> Vec<u64> {
    let pointer: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("checkpoints/default/checkpoint")).unwrap()).unwrap();
    pointer["all"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k.as_str()?.rsplit("model.ckpt-").next()?.strip_suffix(".json")?.parse().ok())
        .collect()
}

#[test]
fn two_ranks_train_checkpoint_once_per_step_and_are_evaluated() {
    let _serial = serial();
    let job =
        job(&[("TRAIN__MAX_STEPS", "6"), ("TRAIN__CHECKPOINT_EVERY_STEPS", "3"), ("DISTRIBUTED__TIMEOUT", "60s")]);
    let mut ranks = job.launch("first", 2);
    for rank in &mut ranks {
        let status = rank.wait(Duration::from_secs(300));
        assert!(status.success(), "{:?}", rank.output());
    }
    let (out0, err0) = ranks[0].output();
    let (out1, err1) = ranks[1].output();
    assert_eq!(logged_steps(&out0), (1..=6).collect::<Vec<_>>(), "{out0}");
    assert_eq!(logged_steps(&out1), (1..=6).collect::<Vec<_>>(), "every rank takes every step: {out1}");
    assert_eq!(err0.matches("written and announced").count(), 2, "rank 0 checkpoints at 3 and 6: {err0}");
    assert!(!err1.contains("written and announced"), "rank 1 writes no checkpoint: {err1}");
    assert!(err1.contains("state of rank 0 at step 0 taken"), "{err1}");
    assert_eq!(kept_steps(&job.store), vec![3, 6]);

    // Every rank's examples count: 2 ranks x 8 images x 6 steps.
    let meta = job.metadata(6);
    assert_eq!(meta["examples_seen"], 2 * BATCH * 6);
    assert_eq!(meta["lineage"]["total_examples"], 2 * BATCH * 6, "{}", meta["lineage"]);
    assert_eq!(meta["lineage"]["examples"], 2 * BATCH * 3, "since step 3");
    let by_shard: u64 =
        meta["lineage"]["shards"].as_array().unwrap().iter().map(|s| s["examples"].as_u64().unwrap()).sum();
    assert_eq!(by_shard + meta["lineage"]["unattributed_examples"].as_u64().unwrap(), 2 * BATCH * 3);
    assert!(
        !job.store.join("checkpoints/default/ranks/step-6").join("rank-1.json").exists(),
        "handed over, then removed"
    );

    let logs = job.root.join("logs").join("eval");
    std::fs::create_dir_all(&logs).unwrap();
    let mut evaluator = Proc::spawn("inception-evaluator", &["--run-once"], &job.env, &logs);
    assert!(evaluator.wait(Duration::from_secs(120)).success(), "{:?}", evaluator.output());
    assert!(job.store.join("eval/default/step-6.json").is_file(), "{:?}", evaluator.output());
}

#[test]
fn a_killed_rank_stops_the_other_and_the_job_resumes_from_the_latest_checkpoint() {
    let _serial = serial();
    const STEPS: u64 = 30;
    let job =
        job(&[("TRAIN__MAX_STEPS", "30"), ("TRAIN__CHECKPOINT_EVERY_STEPS", "5"), ("DISTRIBUTED__TIMEOUT", "10s")]);
    let mut ranks = job.launch("first", 2);
    let deadline = Instant::now() + Duration::from_secs(300);
    while pointer_step(&job.store).unwrap_or(0) < 10 {
        assert!(
            Instant::now() < deadline && ranks[0].is_running(),
            "no checkpoint at step 10: {:?}",
            ranks[0].output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    ranks[1].kill();
    let stopped = Instant::now();
    let status = ranks[0].wait(Duration::from_secs(60));
    let (_, err) = ranks[0].output();
    assert!(!status.success(), "rank 0 must fail when rank 1 is gone: {err}");
    eprintln!("rank 0 stopped after {:?}: {}", stopped.elapsed(), failure_lines(&err, 3));
    assert!(err.contains("rank 0 of 2"), "the error names the rank: {err}");
    assert!(stopped.elapsed() < Duration::from_secs(40), "within the time-out: {:?}", stopped.elapsed());
    let saved = pointer_step(&job.store).unwrap();
    assert!(saved.is_multiple_of(5) && saved < STEPS, "saved {saved}");

    let mut again = job.launch("second", 2);
    for rank in &mut again {
        let status = rank.wait(Duration::from_secs(300));
        assert!(status.success(), "{:?}", rank.output());
    }
    for rank in &again {
        let (out, err) = rank.output();
        assert!(
            err.contains(&format!("resumed from checkpoints/default/model.ckpt-{saved}.json at step {saved}")),
            "{err}"
        );
        let steps = logged_steps(&out);
        assert_eq!(steps.first(), Some(&(saved + 1)), "{steps:?}");
        assert_eq!(steps.last(), Some(&STEPS), "{steps:?}");
    }
    assert_eq!(pointer_step(&job.store), Some(STEPS));
    let meta = job.metadata(STEPS);
    assert_eq!(meta["examples_seen"], 2 * BATCH * STEPS, "nothing counted twice or lost");
    assert_eq!(meta["lineage"]["total_examples"], 2 * BATCH * STEPS);
}

/// Ranks that wait for batches (no worker yet, then batches trickling in
/// one by one) keep meeting every round: the wait outlasts the time-out
/// without failing it, and a rank that got its batch while another waits
/// keeps it (none is delivered again).
#[test]
fn ranks_wait_for_batches_longer_than_the_time_out_and_keep_what_they_hold() {
    let _serial = serial();
    let mut job = job_without_worker(&[
        ("TRAIN__MAX_STEPS", "8"),
        ("TRAIN__CHECKPOINT_EVERY_STEPS", "8"),
        ("TRAIN__BATCH_ACK_WAIT", "4s"),
        ("DISTRIBUTED__TIMEOUT", "4s"),
        ("PIPELINE__QUEUE_CAPACITY", "2"),
    ]);
    let mut ranks = job.launch("waiting", 2);
    std::thread::sleep(Duration::from_secs(10));
    for rank in &mut ranks {
        assert!(rank.is_running(), "a rank gave up waiting: {:?}", rank.output());
    }
    job.start_worker();
    for rank in &mut ranks {
        let status = rank.wait(Duration::from_secs(300));
        assert!(status.success(), "{:?}", rank.output());
    }
    for rank in &ranks {
        let (out, err) = rank.output();
        assert_eq!(logged_steps(&out), (1..=8).collect::<Vec<_>>(), "{out}");
        assert!(!err.contains("delivered again"), "a held batch was dropped and came back: {err}");
    }
    assert_eq!(job.metadata(8)["examples_seen"], 2 * BATCH * 8);
}

/// A queue with room for fewer batches than ranks would never give every
/// rank one (each holds its own while the others wait): refused at start.
#[test]
fn a_batch_queue_smaller_than_the_job_is_refused() {
    let _serial = serial();
    let job = job_without_worker(&[("PIPELINE__QUEUE_CAPACITY", "1"), ("DISTRIBUTED__TIMEOUT", "60s")]);
    let mut ranks = job.launch("small-queue", 2);
    for rank in &mut ranks {
        let status = rank.wait(Duration::from_secs(120));
        let (_, err) = rank.output();
        assert_eq!(status.code(), Some(2), "a configuration error: {err}");
        assert!(err.contains("holds at most 1 batches, fewer than the 2 ranks"), "{err}");
    }
}

/// `torchrun --no-python` runs the trainer binary as its ranks; its agent
/// hosts the rendezvous store (`TORCHELASTIC_USE_AGENT_STORE=True`).
#[test]
fn torchrun_launches_the_trainer_binary_as_its_ranks() {
    let _serial = serial();
    let torchrun = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/torchrun");
    assert!(torchrun.is_file(), "{} is missing: run scripts/setup.sh (torch brings it)", torchrun.display());
    let job =
        job(&[("TRAIN__MAX_STEPS", "4"), ("TRAIN__CHECKPOINT_EVERY_STEPS", "4"), ("DISTRIBUTED__TIMEOUT", "60s")]);
    let trainer = inception_integration_tests::binary("inception-trainer");
    let port = free_port().to_string();
    let mut child = std::process::Command::new(&torchrun)
        .args(["--nnodes", "1", "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", &port])
        .arg("--no-python")
        .arg(&trainer)
        .envs(job.env.iter().cloned())
        .env("RUST_LOG", "info")
        .env("RUST_LIB_BACKTRACE", "0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start torchrun");
    let deadline = Instant::now() + Duration::from_secs(300);
    while child.try_wait().expect("torchrun status").is_none() {
        if Instant::now() > deadline {
            child.kill().ok();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = child.wait_with_output().expect("torchrun output");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{text}");
    assert!(text.contains("rank 1 of 2: process group up"), "{text}");
    assert_eq!(pointer_step(&job.store), Some(4), "{text}");
    assert_eq!(job.metadata(4)["examples_seen"], 2 * BATCH * 4);
}
