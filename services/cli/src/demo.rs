//! `inception demo`: every service as its own process, wired together the
//! way a deployment wires them, on this machine.

use anyhow::{bail, Context};
use inception_core::local_nats::LocalNats;
use inception_core::process::{ChildGuard, OnDrop};
use inception_core::settings::env_vars;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
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
    /// Initial learning rate (default: 0.05 with RMSProp on the generated
    /// images; the photo recipe's with --images).
    #[arg(long)]
    learning_rate: Option<f64>,
    /// With --images: train with the services' defaults (the original's
    /// recipe) instead of the recipe for photos.
    #[arg(long)]
    original_recipe: bool,
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
    let images = image_folders(&args, &workdir)?;
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
    let mut env = service_env(&args, &nats, &store_dir, &workdir);
    env.extend(training_recipe(&args));
    let services = Services { env };

    let (train, validation) = (images.join("train"), images.join("validation"));
    let ingest_args =
        [OsStr::new("--train-directory"), train.as_os_str(), "--validation-directory".as_ref(), validation.as_os_str()];
    services.run_to_end("inception-ingest", &ingest_args)?;
    let mut evaluator = services.spawn("inception-evaluator", &[])?;
    let mut workers: Vec<ChildGuard> = (0..args.workers.max(1))
        .map(|i| services.spawn("inception-preprocess", &["--worker-id", &format!("demo-worker-{i}")]))
        .collect::<anyhow::Result<_>>()?;
    let trained = services.run_to_end::<&str>("inception-trainer", &[]);
    for w in &mut workers {
        stop(w);
    }
    trained?;

    // The evaluator picks up the final checkpoint from its announcement.
    let result = store_dir.join(format!("eval/default/step-{}.json", args.steps));
    wait_for_evaluation(&result, &mut evaluator, args.steps)?;
    stop(&mut evaluator);
    println!("demo finished in {:.0}s; final evaluation of step {}:", started.elapsed().as_secs_f64(), args.steps);
    print_evaluation(&result)?;
    drop(nats);
    Ok(())
}

/// The folder with train/ and validation/: given, or generated once under the work folder.
fn image_folders(args: &DemoArgs, workdir: &Path) -> anyhow::Result<PathBuf> {
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
    Ok(images)
}

/// The settings every service of the demo gets, as `INCEPTION__…` variables.
fn service_env(args: &DemoArgs, nats: &LocalNats, store_dir: &Path, workdir: &Path) -> Vec<(String, String)> {
    env_vars([
        ("NATS__URL", nats.url()),
        ("STORE__URL", format!("file://{}", store_dir.display())),
        ("DATASET__NAME", "demo".into()),
        ("MODEL__IMAGE_SIZE", args.image_size.to_string()),
        ("MODEL__DEPTH_MULTIPLIER", args.depth_multiplier.to_string()),
        ("MODEL__MIN_DEPTH", "8".into()),
        ("PIPELINE__BATCH_SIZE", args.batch_size.to_string()),
        ("AUGMENT__DISTORT_COLOR", args.distort_color.to_string()),
        ("TRAIN__MAX_STEPS", args.steps.to_string()),
        ("TRAIN__CHECKPOINT_EVERY_STEPS", (args.steps / 3).max(1).to_string()),
        ("TRAIN__LOG_EVERY_STEPS", "10".into()),
        ("TRAIN__TENSORBOARD_DIR", workdir.join("tensorboard/train").display().to_string()),
        ("EVAL__TENSORBOARD_DIR", workdir.join("tensorboard/eval").display().to_string()),
        ("EVAL__NUM_EXAMPLES", "0".into()),
        ("EVAL__EVAL_INTERVAL", "10s".into()),
        ("INGEST__METRICS_ADDR", "127.0.0.1:0".into()),
        ("PREPROCESS__METRICS_ADDR", "127.0.0.1:0".into()),
        ("TRAIN__METRICS_ADDR", "127.0.0.1:0".into()),
        ("EVAL__METRICS_ADDR", "127.0.0.1:0".into()),
    ])
}

/// The learning settings: on the user's photos the recipe for photos (what
/// the user set in the environment kept), printed; on the generated images
/// RMSProp at 0.05, which learns their palettes and textures fast.
fn training_recipe(args: &DemoArgs) -> Vec<(String, String)> {
    let mut choices = Vec::new();
    if args.images.is_some() && !args.original_recipe {
        let (chosen, kept) = crate::recipe::not_set_by_user(crate::recipe::for_photos(args.steps));
        println!("training recipe for your photos (inception demo --original-recipe for the original's):");
        for c in &chosen {
            println!("  {} = {}   ({})", c.setting(), c.value, c.why);
        }
        for c in &kept {
            println!("  {}: yours, from INCEPTION__{}", c.setting(), c.key);
        }
        choices.extend(chosen.into_iter().map(|c| (c.key.to_string(), c.value)));
    } else if args.images.is_none() {
        choices.push(("TRAIN__INITIAL_LEARNING_RATE".to_string(), "0.05".to_string()));
    }
    if let Some(rate) = args.learning_rate {
        choices.retain(|(k, _)| k != "TRAIN__INITIAL_LEARNING_RATE");
        choices.push(("TRAIN__INITIAL_LEARNING_RATE".to_string(), rate.to_string()));
    }
    // The evaluator shares the machine with the trainer: one libtorch thread
    // keeps their OpenMP threads from spinning on each other's cores.
    let (evaluator_threads, _) = crate::recipe::not_set_by_user(vec![crate::recipe::Choice {
        key: "EVAL__THREADS",
        value: "1".into(),
        why: "",
    }]);
    choices.extend(evaluator_threads.into_iter().map(|c| (c.key.to_string(), c.value)));
    env_vars(choices)
}

/// The service binaries beside this one, each started with the demo's settings.
struct Services {
    env: Vec<(String, String)>,
}

impl Services {
    fn command(&self, name: &str) -> anyhow::Result<Command> {
        let mut c = Command::new(binary(name)?);
        c.envs(self.env.iter().cloned());
        Ok(c)
    }

    /// Starts a long-running service, stopped when its guard is dropped.
    fn spawn(&self, name: &'static str, args: &[&str]) -> anyhow::Result<ChildGuard> {
        let child = self.command(name)?.args(args).spawn().with_context(|| format!("cannot start {name}"))?;
        Ok(ChildGuard::new(name, child, OnDrop::Terminate(STOP_GRACE)))
    }

    /// Runs a service until it exits; an error unless it succeeded.
    fn run_to_end<S: AsRef<OsStr>>(&self, name: &str, args: &[S]) -> anyhow::Result<()> {
        let status = self.command(name)?.args(args).status().with_context(|| format!("cannot run {name}"))?;
        if !status.success() {
            bail!("{name} failed ({status})");
        }
        Ok(())
    }
}

/// Waits up to 10 minutes for the evaluator's result of `step`.
fn wait_for_evaluation(result: &Path, evaluator: &mut ChildGuard, step: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while !result.is_file() {
        if Instant::now() > deadline {
            bail!("the evaluator wrote no result for step {step} within 10 minutes");
        }
        if let Some(status) = evaluator.exited() {
            bail!("the evaluator exited early ({status})");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn print_evaluation(result: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(result)?;
    let json: serde_json::Value = serde_json::from_str(&text)?;
    let p1 = json["precision_at_1"].as_f64().unwrap_or(f64::NAN);
    let r5 = json["recall_at_5"].as_f64().unwrap_or(f64::NAN);
    let n = json["examples"].as_u64().unwrap_or(0);
    println!("precision @ 1 = {p1:.4} recall @ 5 = {r5:.4} [{n} examples]");
    Ok(())
}
