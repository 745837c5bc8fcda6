//! `inception demo`: every service as its own process, wired together the
//! way a deployment wires them, on this machine.

use anyhow::{bail, Context};
use inception_core::local_nats::LocalNats;
use inception_core::process::{ChildGuard, OnDrop};
use inception_core::settings::env_vars;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// Folder with train/<label>/<image> and validation/<label>/<image>;
    /// default: generated demo images.
    #[arg(long)]
    images: Option<PathBuf>,
    /// Scratch folder for the store, NATS data and generated images.
    #[arg(long, default_value = "var/demo")]
    workdir: PathBuf,
    /// Training steps.
    #[arg(long, default_value_t = 900)]
    steps: u64,
    /// Square input size of the model (the published model uses 299).
    #[arg(long, default_value_t = 75)]
    image_size: u32,
    /// Width multiplier of the model (the published model uses 1.0).
    #[arg(long, default_value_t = 0.25)]
    depth_multiplier: f64,
    /// Images per training batch.
    #[arg(long, default_value_t = 32)]
    batch_size: u32,
    /// Preprocess worker processes.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Initial learning rate of RMSProp.
    #[arg(long, default_value_t = 0.05)]
    learning_rate: f64,
    /// Also distort colours in training (the services' default). Off in the
    /// demo: its generated classes differ by palette as well as texture, and
    /// the narrow demo model needs many more steps with it (measured: 0.59
    /// precision@1 after 900 steps, 0.49 after 1500).
    #[arg(long)]
    distort_color: bool,
}

/// How long a service may take to finish after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// SIGTERM, and SIGKILL if that did not stop it within [`STOP_GRACE`].
fn stop(service: &mut ChildGuard) {
    if let (_, true) = service.terminate(STOP_GRACE) {
        eprintln!("{} did not stop within {STOP_GRACE:?} of SIGTERM; killed it", service.name());
    }
}

fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the inception binary")?;
    let path = exe.parent().map(|d| d.join(name)).context("binary has no folder")?;
    if !path.is_file() {
        bail!("{} not found next to {}: build the workspace (scripts/setup.sh)", path.display(), exe.display());
    }
    Ok(path)
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    Ok(if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir()?.join(p) })
}

pub(crate) fn run(args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let workdir = absolute(&args.workdir)?;
    let images = match &args.images {
        Some(dir) => absolute(dir)?,
        None => {
            let dir = workdir.join("images");
            if !dir.join("train").is_dir() {
                let n = inception_demo_data::generate(&dir, 60, 20, 42)?;
                println!("generated {n} demo images under {}", dir.display());
            }
            dir
        }
    };
    for split in ["train", "validation"] {
        if !images.join(split).is_dir() {
            bail!(
                "{} has no {split}/ folder: give --images a folder with train/<label>/ and validation/<label>/",
                images.display()
            );
        }
    }
    // Each demo starts from an empty store and queue.
    let store_dir = workdir.join("store");
    let nats_dir = workdir.join("nats");
    for d in [&store_dir, &nats_dir] {
        if d.exists() {
            std::fs::remove_dir_all(d).with_context(|| format!("cannot clear {}", d.display()))?;
        }
        std::fs::create_dir_all(d)?;
    }
    let nats = LocalNats::start(&nats_dir)?;
    println!("nats-server on {}; object store file://{}", nats.url(), store_dir.display());

    let env: Vec<(String, String)> = env_vars([
        ("NATS__URL", nats.url()),
        ("STORE__URL", format!("file://{}", store_dir.display())),
        ("DATASET__NAME", "demo".into()),
        ("MODEL__IMAGE_SIZE", args.image_size.to_string()),
        ("MODEL__DEPTH_MULTIPLIER", args.depth_multiplier.to_string()),
        ("MODEL__MIN_DEPTH", "8".into()),
        ("PREPROCESS__BATCH_SIZE", args.batch_size.to_string()),
        ("PREPROCESS__DISTORT_COLOR", args.distort_color.to_string()),
        ("TRAIN__MAX_STEPS", args.steps.to_string()),
        ("TRAIN__INITIAL_LEARNING_RATE", args.learning_rate.to_string()),
        ("TRAIN__CHECKPOINT_EVERY_STEPS", (args.steps / 3).max(1).to_string()),
        ("TRAIN__LOG_EVERY_STEPS", "10".into()),
        ("TRAIN__TENSORBOARD_DIR", workdir.join("tensorboard/train").display().to_string()),
        ("EVAL__TENSORBOARD_DIR", workdir.join("tensorboard/eval").display().to_string()),
        ("EVAL__NUM_EXAMPLES", "0".into()),
        ("EVAL__EVAL_INTERVAL_SECS", "10".into()),
        ("INGEST__METRICS_ADDR", "127.0.0.1:0".into()),
        ("PREPROCESS__METRICS_ADDR", "127.0.0.1:0".into()),
        ("TRAIN__METRICS_ADDR", "127.0.0.1:0".into()),
        ("EVAL__METRICS_ADDR", "127.0.0.1:0".into()),
    ]);
    let command = |name: &str| -> anyhow::Result<Command> {
        let mut c = Command::new(binary(name)?);
        c.envs(env.iter().cloned());
        Ok(c)
    };
    let spawn = |name: &'static str, extra: &[&str]| -> anyhow::Result<ChildGuard> {
        let child = command(name)?.args(extra).spawn().with_context(|| format!("cannot start {name}"))?;
        Ok(ChildGuard::new(name, child, OnDrop::Terminate(STOP_GRACE)))
    };
    let check = |name: &str, status: ExitStatus| -> anyhow::Result<()> {
        if !status.success() {
            bail!("{name} failed ({status})");
        }
        Ok(())
    };

    let train_dir = images.join("train");
    let validation_dir = images.join("validation");
    let status = command("inception-ingest")?
        .arg("--train-directory")
        .arg(&train_dir)
        .arg("--validation-directory")
        .arg(&validation_dir)
        .status()
        .context("cannot run inception-ingest")?;
    check("inception-ingest", status)?;

    let mut evaluator = spawn("inception-evaluator", &[])?;
    let mut workers: Vec<ChildGuard> = (0..args.workers.max(1))
        .map(|i| spawn("inception-preprocess", &["--worker-id", &format!("demo-worker-{i}")]))
        .collect::<anyhow::Result<_>>()?;
    let status = command("inception-trainer")?.status().context("cannot run inception-trainer")?;
    for w in &mut workers {
        stop(w);
    }
    check("inception-trainer", status)?;

    // The evaluator picks up the final checkpoint from its announcement.
    let result = store_dir.join(format!("eval/default/step-{}.json", args.steps));
    let deadline = Instant::now() + Duration::from_secs(600);
    while !result.is_file() {
        if Instant::now() > deadline {
            bail!("the evaluator wrote no result for step {} within 10 minutes", args.steps);
        }
        if let Some(status) = evaluator.exited() {
            bail!("the evaluator exited early ({status})");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    stop(&mut evaluator);
    let text = std::fs::read_to_string(&result)?;
    let json: serde_json::Value = serde_json::from_str(&text)?;
    let p1 = json["precision_at_1"].as_f64().unwrap_or(f64::NAN);
    let r5 = json["recall_at_5"].as_f64().unwrap_or(f64::NAN);
    let n = json["examples"].as_u64().unwrap_or(0);
    println!("demo finished in {:.0}s; final evaluation of step {}:", started.elapsed().as_secs_f64(), args.steps);
    println!("precision @ 1 = {p1:.4} recall @ 5 = {r5:.4} [{n} examples]");
    drop(nats);
    Ok(())
}
