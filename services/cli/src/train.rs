//! `inception train DIR`: a user's folder of photos to a trained model, in
//! one command. The services run as their own processes, wired the way a
//! deployment wires them, around an embedded nats-server and a local store
//! under a persistent work folder:
//!
//! ```text
//! <work>/store/               the object store (file://): shards, checkpoints, evaluations
//! <work>/nats/                the nats-server's JetStream data
//! <work>/runs/<run>/run.json  what the run trains on, its steps, whether it finished
//! <work>/runs/<run>/logs/     each service's stdout and stderr
//! <work>/runs/<run>/report.html  the run's report (`inception report`)
//! ```
//!
//! Every run is kept: a second invocation resumes an interrupted run or
//! starts a new one (`run-1`, `run-2`, …), and never deletes a model. A run
//! is its own dataset in the store (`datasets/<run>`), ingested once.
//! `inception demo` is this command on generated images.

use crate::progress::{self, Seen};
use crate::recipe::Choice;
use crate::split::{Dataset, Layout};
use anyhow::{bail, Context};
use inception_cli::UsageError;
use inception_core::cli::CommonArgs;
use inception_core::local_nats::LocalNats;
use inception_core::process::{ChildGuard, OnDrop};
use inception_core::settings::env_vars;
use inception_ingest::report::RunReport;
use std::ffi::OsString;
use std::io::{BufRead, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Default of `--work`: in the folder the command is run from.
pub(crate) const DEFAULT_WORK: &str = "inception-work";

/// How often the progress line is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// How long a service may take to finish after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// Settings the command sets itself: given with `--set` they would point
/// the services away from the work folder or the run.
const OWN_SETTINGS: [(&str, &str); 7] = [
    ("nats.subject_prefix", "--run NAME (each run has its own streams)"),
    ("store.url", "--work DIR"),
    ("nats.url", "nothing: the command starts its own nats-server"),
    ("pipeline.run", "--run NAME"),
    ("train.run", "--run NAME"),
    ("dataset.name", "--run NAME (each run is its own dataset)"),
    ("train.max_steps", "--steps N"),
];

#[derive(Debug, clap::Args)]
pub(crate) struct TrainArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Folder of photos: DIR/<label>/<image> (validation split off), or
    /// DIR/train/<label>/<image> with an optional DIR/validation/<label>/<image>.
    #[arg(value_name = "DIR")]
    images: PathBuf,
    /// Share of each class held out for validation when DIR has no
    /// validation/ folder, chosen by a hash of each file's path.
    #[arg(long, default_value_t = 0.1, value_parser = fraction)]
    validation_split: f64,
    /// Train with the services' defaults (the original's recipe) instead of
    /// the recipe for photos.
    #[arg(long)]
    original_recipe: bool,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    model: ModelArgs,
}

/// Where runs are kept and which one to train.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct RunArgs {
    /// Work folder: the store, the NATS data, every run and its logs.
    #[arg(long, default_value = DEFAULT_WORK)]
    pub(crate) work: PathBuf,
    /// Train this run: resumed (up to --steps) if it exists, else started
    /// under this name. Default: resume the last run on the same images if
    /// it did not finish, else start a new one.
    #[arg(long, value_name = "NAME", value_parser = run_name)]
    pub(crate) run: Option<String>,
    /// Always start a new run (run-N), keeping the others.
    #[arg(long, conflicts_with = "run")]
    pub(crate) new_run: bool,
}

/// The model, the steps and the machine's share of the work.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ModelArgs {
    /// Training steps (at least 1); a resumed run trains up to this step.
    #[arg(long, default_value_t = 900, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) steps: u64,
    /// Square input size of the model (default 75; the published model uses 299).
    #[arg(long)]
    pub(crate) image_size: Option<u32>,
    /// Width multiplier of the model (default 0.25; the published model uses 1.0).
    #[arg(long)]
    pub(crate) depth_multiplier: Option<f64>,
    /// Images per training batch (default 32).
    #[arg(long)]
    pub(crate) batch_size: Option<u32>,
    /// Preprocess worker processes.
    #[arg(long, default_value_t = 1)]
    pub(crate) workers: usize,
    /// Initial learning rate (default: the recipe's).
    #[arg(long)]
    pub(crate) learning_rate: Option<f64>,
}

fn fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if f > 0.0 && f < 1.0 => Ok(f),
        Ok(f) => Err(format!("{f} is not between 0 and 1 (exclusive): the share of images held out, e.g. 0.1")),
        Err(e) => Err(format!("{s:?} is not a number: {e}")),
    }
}

fn run_name(s: &str) -> Result<String, String> {
    if inception_core::settings::is_safe_token(s) && !s.is_empty() {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?}: use only letters, digits, '_' and '-' (it names folders and subjects)"))
    }
}

/// `outer`: the `--config` and `--set` given before the subcommand.
pub(crate) fn run(outer: &CommonArgs, args: TrainArgs) -> anyhow::Result<()> {
    let recipe = if args.original_recipe { Vec::new() } else { crate::recipe::for_photos(args.model.steps) };
    let job = Job {
        images: args.images,
        validation_split: args.validation_split,
        run: args.run,
        model: args.model,
        user: inception_cli::merged_settings_flags(&[outer, &args.common]),
        recipe,
        recipe_title: "training recipe for your photos (--original-recipe for the original's):",
        extra: Vec::new(),
    };
    job.run()
}

/// One invocation: the images, the run, and the settings the services get.
pub(crate) struct Job {
    pub(crate) images: PathBuf,
    pub(crate) validation_split: f64,
    pub(crate) run: RunArgs,
    pub(crate) model: ModelArgs,
    /// The user's `--config` and `--set`, passed to every service.
    pub(crate) user: CommonArgs,
    /// Learning settings, printed, each kept only where the user set nothing.
    pub(crate) recipe: Vec<Choice>,
    pub(crate) recipe_title: &'static str,
    /// Further `SECTION__KEY` settings, not printed, kept only where the user set nothing.
    pub(crate) extra: Vec<Choice>,
}

/// The folders of a work folder.
struct Work {
    root: PathBuf,
}

impl Work {
    fn store(&self) -> PathBuf {
        self.root.join("store")
    }
    fn store_url(&self) -> String {
        format!("file://{}", self.store().display())
    }
    fn runs(&self) -> PathBuf {
        self.root.join("runs")
    }
    fn run_dir(&self, run: &str) -> PathBuf {
        self.runs().join(run)
    }
    /// A file of the store by its key.
    fn object(&self, key: &str) -> PathBuf {
        self.store().join(key)
    }
}

/// A run's `run.json`.
#[derive(Debug, Clone)]
struct RunRecord {
    name: String,
    images: PathBuf,
    finished: bool,
    created: u64,
}

impl RunRecord {
    fn read(path: &Path) -> Option<RunRecord> {
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
        Some(RunRecord {
            name: json["run"].as_str()?.to_string(),
            images: PathBuf::from(json["images"].as_str()?),
            finished: json["finished"].as_bool().unwrap_or(false),
            created: json["created"].as_u64().unwrap_or(0),
        })
    }

    fn write(&self, work: &Work, steps: u64, step: Option<u64>) -> anyhow::Result<()> {
        let dir = work.run_dir(&self.name);
        std::fs::create_dir_all(&dir)?;
        let json = serde_json::json!({
            "run": self.name,
            "images": self.images.display().to_string(),
            "steps": steps,
            "finished": self.finished,
            "final_step": step,
            "created": self.created,
            "store": work.store_url(),
        });
        let tmp = dir.join("run.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&json)?)?;
        std::fs::rename(&tmp, dir.join("run.json"))?;
        Ok(())
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    Ok(if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir()?.join(p) })
}

/// Every run of the work folder, oldest first.
fn runs(work: &Work) -> Vec<RunRecord> {
    let mut runs: Vec<RunRecord> = std::fs::read_dir(work.runs())
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| RunRecord::read(&e.path().join("run.json")))
        .collect();
    runs.sort_by_key(|r| (r.created, number(&r.name)));
    runs
}

fn number(run: &str) -> u64 {
    run.strip_prefix("run-").and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// The run to train and whether it is resumed, with the line that says so.
fn choose_run(work: &Work, args: &RunArgs, images: &Path) -> anyhow::Result<(RunRecord, bool, String)> {
    let all = runs(work);
    let fresh = |name: String| RunRecord { name, images: images.to_path_buf(), finished: false, created: now_secs() };
    let next = || {
        let n = all.iter().map(|r| number(&r.name)).max().unwrap_or(0) + 1;
        (1..).map(|i| format!("run-{}", n + i - 1)).find(|name| !work.run_dir(name).exists()).unwrap_or_default()
    };
    let kept = |all: &[RunRecord]| {
        let names: Vec<&str> = all.iter().map(|r| r.name.as_str()).collect();
        if names.is_empty() {
            String::new()
        } else {
            format!(" (kept: {})", names.join(", "))
        }
    };
    if let Some(name) = &args.run {
        return match all.iter().find(|r| &r.name == name) {
            Some(r) if r.images != images => Err(UsageError(format!(
                "run {name} trains on {}, not {}: give --new-run (or another --run NAME) for these images",
                r.images.display(),
                images.display()
            ))
            .into()),
            Some(r) => Ok((r.clone(), true, format!("resuming run {name}"))),
            None if work.run_dir(name).exists() => Err(UsageError(format!(
                "{} exists but is not a run (no run.json): choose another --run NAME",
                work.run_dir(name).display()
            ))
            .into()),
            None => Ok((fresh(name.clone()), false, format!("new run {name}{}", kept(&all)))),
        };
    }
    if !args.new_run {
        if let Some(last) = all.iter().rev().find(|r| r.images == images) {
            if !last.finished {
                let why = format!("resuming run {}, which did not finish (--new-run starts another)", last.name);
                return Ok((last.clone(), true, why));
            }
        }
    }
    let name = next();
    Ok((fresh(name.clone()), false, format!("new run {name}{}", kept(&all))))
}

/// Holds `<work>/.lock` so that two commands never share a work folder.
fn lock(work: &Work) -> anyhow::Result<std::fs::File> {
    let path = work.root.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on a file descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!(UsageError(format!(
            "another inception train or demo is using {}: wait for it, or give another --work",
            work.root.display()
        )));
    }
    Ok(file)
}

impl Job {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let started = Instant::now();
        self.refuse_own_settings()?;
        // A mistake in --config or --set shows before anything starts.
        self.user.settings(Vec::new()).context("the settings given with --config / --set")?;
        let images = std::fs::canonicalize(&self.images)
            .with_context(|| format!("cannot read the image folder {}", self.images.display()))?;
        let dataset = Dataset::read(&images, self.validation_split)?;
        let work = Work { root: absolute(&self.run.work)? };
        std::fs::create_dir_all(&work.root).with_context(|| format!("cannot create {}", work.root.display()))?;
        let _lock = lock(&work)?;
        let (mut record, resumed, why) = choose_run(&work, &self.run, &images)?;
        let steps = self.model.steps;
        let run = record.name.clone();
        let logs = work.run_dir(&run).join("logs");
        std::fs::create_dir_all(&logs)?;
        record.finished = false;
        record.write(&work, steps, None)?;
        println!("{why}; work folder {} (logs in {})", work.root.display(), logs.display());

        let nats = LocalNats::start(&work.root.join("nats"))?;
        let services = Services { env: self.env(&work, &run, &nats.url()), args: self.user_flags(), logs };

        let report_path = work.object(&inception_core::keys::ingest_report(&run));
        if !resumed || !report_path.is_file() {
            self.ingest(&services, &work, &run, &dataset)?;
        }
        print_summary(&dataset, &work, &run, self.validation_split)?;
        if !self.recipe.is_empty() {
            self.print_recipe();
        }
        println!("nats-server on {}; object store {}", nats.url(), work.store_url());

        let mut evaluator = services.spawn("inception-evaluator", &[])?;
        let mut workers: Vec<ChildGuard> = (0..self.model.workers.max(1))
            .map(|i| services.spawn("inception-preprocess", &["--worker-id", &format!("{run}-worker-{i}")]))
            .collect::<anyhow::Result<_>>()?;
        let trained = watch_trainer(&services, &work, &run, steps, &mut evaluator, &mut workers);
        for w in &mut workers {
            stop(w);
        }
        let step = trained?;
        wait_for_evaluation(&work, &run, step, &mut evaluator, &services)?;
        stop(&mut evaluator);
        drop(nats);
        record.finished = true;
        record.write(&work, steps, Some(step))?;
        println!("run {run} finished in {}; evaluation of step {step}:", progress::human(started.elapsed()));
        print_evaluation(&work.object(&inception_core::keys::eval_result(&run, step)))?;
        match self.write_report(&work, &run) {
            Ok(page) => println!("report: {}", page.display()),
            Err(e) => eprintln!("the run's HTML report was not written: {e:#}"),
        }
        self.print_classify(&work, &run, &dataset)
    }

    /// The run's HTML report (`inception report`) in its folder.
    fn write_report(&self, work: &Work, run: &str) -> anyhow::Result<PathBuf> {
        let settings = self.user.settings(vec![("store.url".into(), work.store_url())])?;
        let store = inception_core::Store::open(&settings.store)?;
        let page = work.run_dir(run).join("report.html");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(runtime.block_on(inception_cli::report::write_report(&store, run, run, &page))?)
    }

    fn refuse_own_settings(&self) -> anyhow::Result<()> {
        for (key, _) in &self.user.set {
            if let Some((_, instead)) = OWN_SETTINGS.iter().find(|(k, _)| k == key) {
                bail!(UsageError(format!("--set {key}=… is the command's own setting: use {instead}")));
            }
        }
        Ok(())
    }

    /// `--config` and `--set` for every service.
    fn user_flags(&self) -> Vec<OsString> {
        let mut flags = Vec::new();
        if let Some(config) = &self.user.config {
            flags.extend([OsString::from("--config"), config.clone().into_os_string()]);
        }
        for (k, v) in &self.user.set {
            flags.extend([OsString::from("--set"), OsString::from(format!("{k}={v}"))]);
        }
        flags
    }

    /// Whether the user set `key` (`SECTION__KEY`) with `--set` or in the environment.
    fn set_by_user(&self, key: &str) -> bool {
        let dotted = key.to_lowercase().replacen("__", ".", 1);
        self.user.set.iter().any(|(k, _)| *k == dotted)
            || std::env::var_os(format!("{}__{key}", inception_core::settings::ENV_PREFIX)).is_some()
    }

    /// The settings every service gets, as `INCEPTION__…` variables.
    fn env(&self, work: &Work, run: &str, nats_url: &str) -> Vec<(String, String)> {
        let run_dir = work.run_dir(run);
        let steps = self.model.steps;
        let mut vars: Vec<(String, String)> = vec![
            ("NATS__URL".into(), nats_url.into()),
            // Each run has its own streams: batches another run left queued
            // never fill this run's queue.
            ("NATS__SUBJECT_PREFIX".into(), format!("inception-{run}")),
            ("STORE__URL".into(), work.store_url()),
            ("DATASET__NAME".into(), run.into()),
            ("PIPELINE__RUN".into(), run.into()),
            ("TRAIN__MAX_STEPS".into(), steps.to_string()),
            ("TRAIN__LOG_EVERY_STEPS".into(), "10".into()),
            ("TRAIN__TENSORBOARD_DIR".into(), run_dir.join("tensorboard/train").display().to_string()),
            ("EVAL__TENSORBOARD_DIR".into(), run_dir.join("tensorboard/eval").display().to_string()),
            ("EVAL__NUM_EXAMPLES".into(), "0".into()),
            ("INGEST__METRICS_ADDR".into(), "127.0.0.1:0".into()),
            ("PREPROCESS__METRICS_ADDR".into(), "127.0.0.1:0".into()),
            ("TRAIN__METRICS_ADDR".into(), "127.0.0.1:0".into()),
            ("EVAL__METRICS_ADDR".into(), "127.0.0.1:0".into()),
        ];
        // Defaults where the user set nothing: a model that trains in minutes on a CPU.
        let choice = |key, value: String| Choice { key, value, why: "" };
        let defaults = [
            choice("MODEL__IMAGE_SIZE", "75".into()),
            choice("MODEL__DEPTH_MULTIPLIER", "0.25".into()),
            choice("MODEL__MIN_DEPTH", "8".into()),
            choice("PIPELINE__BATCH_SIZE", "32".into()),
            choice("TRAIN__CHECKPOINT_EVERY_STEPS", (steps / 3).max(1).to_string()),
            choice("EVAL__EVAL_INTERVAL", "10s".into()),
            // The evaluator shares the machine with the trainer: one libtorch
            // thread keeps their OpenMP threads off each other's cores.
            choice("EVAL__THREADS", "1".into()),
        ];
        for c in defaults.iter().chain(&self.extra).chain(&self.recipe) {
            if !self.set_by_user(c.key) {
                vars.retain(|(k, _)| k != c.key);
                vars.push((c.key.to_string(), c.value.clone()));
            }
        }
        // Flags given on the command line win over everything but --set.
        let m = &self.model;
        let flags = [
            ("MODEL__IMAGE_SIZE", m.image_size.map(|v| v.to_string())),
            ("MODEL__DEPTH_MULTIPLIER", m.depth_multiplier.map(|v| v.to_string())),
            ("PIPELINE__BATCH_SIZE", m.batch_size.map(|v| v.to_string())),
            ("TRAIN__INITIAL_LEARNING_RATE", m.learning_rate.map(|v| v.to_string())),
        ];
        for (key, value) in flags {
            if let Some(value) = value {
                vars.retain(|(k, _)| k != key);
                vars.push((key.to_string(), value));
            }
        }
        env_vars(vars)
    }

    fn print_recipe(&self) {
        println!("{}", self.recipe_title);
        for c in &self.recipe {
            if self.model.learning_rate.is_some() && c.key == "TRAIN__INITIAL_LEARNING_RATE" {
                println!("  {}: yours, from --learning-rate", c.setting());
            } else if self.set_by_user(c.key) {
                println!("  {}: yours", c.setting());
            } else {
                println!("  {} = {}   ({})", c.setting(), c.value, c.why);
            }
        }
    }

    /// Ingests the run's dataset: the folders as given, or the split written
    /// under the run's folder (removed once the shards are written).
    fn ingest(&self, services: &Services, work: &Work, run: &str, dataset: &Dataset) -> anyhow::Result<()> {
        let split_dir = work.run_dir(run).join("split");
        let (train, validation) = match dataset.layout {
            Layout::Given => (dataset.root.join("train"), dataset.root.join("validation")),
            Layout::Pool | Layout::TrainOnly => dataset.materialise(&split_dir)?,
        };
        println!(
            "ingesting {} images into datasets/{run} (log: {})",
            dataset.train.len() + dataset.validation.len(),
            services.logs.join("inception-ingest.err").display()
        );
        let args = [
            OsString::from("--train-directory"),
            train.into_os_string(),
            OsString::from("--validation-directory"),
            validation.into_os_string(),
        ];
        let outcome = services.run_to_end("inception-ingest", &args);
        if split_dir.exists() {
            std::fs::remove_dir_all(&split_dir).ok();
        }
        outcome
    }

    /// The command that classifies with the run's best checkpoint, and the
    /// same on one validation image.
    fn print_classify(&self, work: &Work, run: &str, dataset: &Dataset) -> anyhow::Result<()> {
        let best = work.object(&inception_core::keys::checkpoint_best(run));
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&best)?)?;
        let exe = std::env::current_exe()?;
        let cwd = std::env::current_dir()?;
        let exe = exe.strip_prefix(&cwd).map_or(exe.clone(), Path::to_path_buf);
        let mut command = vec![exe.display().to_string(), "classify".into()];
        if let Some(config) = &self.user.config {
            command.extend(["--config".into(), absolute(config)?.display().to_string()]);
        }
        command.extend(["--set".into(), format!("store.url={}", work.store_url())]);
        for (k, v) in &self.user.set {
            if k.starts_with("augment.eval_") || k == "eval.device" {
                command.extend(["--set".into(), format!("{k}={v}")]);
            }
        }
        command.extend(["--run".into(), run.into(), "--checkpoint".into(), "best".into()]);
        let command: Vec<String> = command.iter().map(|w| shell_quote(w)).collect();
        println!(
            "best checkpoint: step {}, precision@1 {:.4} ({})",
            json["step"].as_u64().unwrap_or(0),
            json["precision_at_1"].as_f64().unwrap_or(f64::NAN),
            best.display()
        );
        println!("classify your photos with it:");
        println!("  {} PHOTO…", command.join(" "));
        if let Some(example) = dataset.validation.first() {
            println!("for example, on one of the validation images:");
            println!("  {} {}", command.join(" "), shell_quote(&example.path.display().to_string()));
        }
        println!("this run and every earlier one stay in {}", work.root.display());
        Ok(())
    }
}

/// A word as a POSIX shell reads it back.
fn shell_quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-:=+@%,".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// Per split and class: images written to shards; then what was skipped.
fn print_summary(dataset: &Dataset, work: &Work, run: &str, fraction: f64) -> anyhow::Result<()> {
    let path = work.object(&inception_core::keys::ingest_report(run));
    let report: RunReport = serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("the ingest wrote no report at {}", path.display()))?,
    )
    .with_context(|| format!("{} is not an ingest report", path.display()))?;
    let root = dataset.root.display();
    let how = match dataset.layout {
        Layout::Pool => format!(
            "{root}/<label>/<image>; {:.0} % of each class held out for validation by a hash of its path",
            fraction * 100.0
        ),
        Layout::TrainOnly => format!(
            "{root}/train/<label>/<image>; {:.0} % of each class held out for validation by a hash of its path",
            fraction * 100.0
        ),
        Layout::Given => format!("{root}/train/ and {root}/validation/ as given"),
    };
    println!("dataset: {how}");
    // A skipped file's label is the folder above it.
    let skipped_in = |split: &str, label: &str| {
        report
            .splits
            .iter()
            .filter(|s| s.split == split)
            .flat_map(|s| &s.skipped)
            .filter(|k| Path::new(&k.file).parent().and_then(Path::file_name).is_some_and(|n| n == label))
            .count()
    };
    let width = dataset.labels.iter().map(String::len).max().unwrap_or(5).max(5);
    println!("  {:<width$} {:>8} {:>11}", "class", "train", "validation");
    let (mut train_total, mut validation_total) = (0, 0);
    for (label, (train, validation)) in dataset.counts() {
        let train = train.saturating_sub(skipped_in("train", &label));
        let validation = validation.saturating_sub(skipped_in("validation", &label));
        train_total += train;
        validation_total += validation;
        println!("  {label:<width$} {train:>8} {validation:>11}");
    }
    println!("  {:<width$} {train_total:>8} {validation_total:>11}", "all");
    let skipped: Vec<_> = report.splits.iter().flat_map(|s| &s.skipped).collect();
    if skipped.is_empty() && dataset.ignored.is_empty() {
        println!("  no file skipped");
    } else {
        println!("  {} file(s) skipped:", skipped.len() + dataset.ignored.len());
        for k in skipped {
            println!("    {}: {} ({})", original(dataset, &k.file), k.reason, k.result.as_str());
        }
        for i in &dataset.ignored {
            println!("    {}: {}", i.path.display(), i.reason);
        }
    }
    Ok(())
}

/// The user's file for a path of the split written under the run.
fn original(dataset: &Dataset, file: &str) -> String {
    let path = Path::new(file);
    let relative = match (path.parent().and_then(Path::file_name), path.file_name()) {
        (Some(label), Some(name)) => format!("{}/{}", label.to_string_lossy(), name.to_string_lossy()),
        _ => return file.to_string(),
    };
    dataset
        .train
        .iter()
        .chain(&dataset.validation)
        .find(|i| i.relative == relative && (dataset.layout != Layout::Given || path == i.path))
        .map_or_else(|| file.to_string(), |i| i.path.display().to_string())
}

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

/// The last `n` lines of a log file, indented, for an error message.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let shown = lines[lines.len().saturating_sub(n)..].join("\n    ");
    format!("last lines of {}:\n    {shown}", path.display())
}

/// The service binaries beside this one, each started with the run's
/// settings, its output in the run's log folder.
struct Services {
    env: Vec<(String, String)>,
    args: Vec<OsString>,
    logs: PathBuf,
}

impl Services {
    fn log(&self, name: &str, stream: &str) -> PathBuf {
        self.logs.join(format!("{name}.{stream}"))
    }

    fn command(&self, name: &str, args: &[OsString]) -> anyhow::Result<Command> {
        let mut c = Command::new(binary(name)?);
        c.envs(self.env.iter().cloned()).args(args).args(&self.args).stdin(Stdio::null());
        let append = |p: PathBuf| std::fs::OpenOptions::new().create(true).append(true).open(p);
        c.stdout(append(self.log(name, "out"))?).stderr(append(self.log(name, "err"))?);
        Ok(c)
    }

    /// Starts a long-running service, stopped when its guard is dropped.
    fn spawn(&self, name: &'static str, args: &[&str]) -> anyhow::Result<ChildGuard> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        let child = self.command(name, &args)?.spawn().with_context(|| format!("cannot start {name}"))?;
        Ok(ChildGuard::new(name, child, OnDrop::Terminate(STOP_GRACE)))
    }

    fn failed(&self, name: &str, status: ExitStatus) -> anyhow::Error {
        anyhow::anyhow!("{name} failed ({status}); {}", tail(&self.log(name, "err"), 15))
    }

    /// Runs a service until it exits; an error with its log's end unless it succeeded.
    fn run_to_end(&self, name: &str, args: &[OsString]) -> anyhow::Result<()> {
        let status = self.command(name, args)?.status().with_context(|| format!("cannot run {name}"))?;
        if !status.success() {
            return Err(self.failed(name, status));
        }
        Ok(())
    }
}

/// Runs the trainer to its end, printing a progress line every
/// [`PROGRESS_EVERY`]; returns the step of its last checkpoint.
fn watch_trainer(
    services: &Services,
    work: &Work,
    run: &str,
    steps: u64,
    evaluator: &mut ChildGuard,
    workers: &mut [ChildGuard],
) -> anyhow::Result<u64> {
    const NAME: &str = "inception-trainer";
    let mut command = services.command(NAME, &[])?;
    command.stdout(Stdio::piped());
    let mut child = command.spawn().with_context(|| format!("cannot start {NAME}"))?;
    let stdout = child.stdout.take().context("the trainer's stdout")?;
    let mut trainer = ChildGuard::new(NAME, child, OnDrop::Terminate(STOP_GRACE));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let reader = {
        let seen = seen.clone();
        let mut log = std::fs::OpenOptions::new().create(true).append(true).open(services.log(NAME, "out"))?;
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                writeln!(log, "{line}").ok();
                if let Some((step, rate)) = progress::parse_step_line(&line) {
                    seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).record(step, rate);
                }
            }
        })
    };
    let eval_dir = work.object(&format!("eval/{run}"));
    let mut last = Instant::now();
    let status = loop {
        if let Some(status) = trainer.exited() {
            break status;
        }
        if let Some(status) = evaluator.exited() {
            return Err(services.failed("inception-evaluator", status));
        }
        if !workers.is_empty() && workers.iter_mut().all(|w| !w.is_running()) {
            let status = workers[0].exited().unwrap_or_default();
            return Err(services.failed("inception-preprocess", status));
        }
        if last.elapsed() >= PROGRESS_EVERY {
            last = Instant::now();
            let line = seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).line(steps);
            let eval = progress::latest_evaluation(&eval_dir)
                .map_or_else(|| "no evaluation yet".to_string(), |(s, p)| format!("precision@1 {p:.4} at step {s}"));
            println!("{line}; {eval}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    reader.join().ok();
    if !status.success() {
        return Err(services.failed(NAME, status));
    }
    let pointer = work.object(&inception_core::keys::checkpoint_pointer(run));
    let json: serde_json::Value = std::fs::read_to_string(&pointer)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .with_context(|| format!("the trainer exited without a checkpoint ({} is missing)", pointer.display()))?;
    json["step"].as_u64().with_context(|| format!("{} names no step", pointer.display()))
}

/// Waits up to 10 minutes for the evaluator's result of `step` and the best pointer.
fn wait_for_evaluation(
    work: &Work,
    run: &str,
    step: u64,
    evaluator: &mut ChildGuard,
    services: &Services,
) -> anyhow::Result<()> {
    let result = work.object(&inception_core::keys::eval_result(run, step));
    let best = work.object(&inception_core::keys::checkpoint_best(run));
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut told = false;
    while !(result.is_file() && best.is_file()) {
        if Instant::now() > deadline {
            bail!("the evaluator wrote no result for step {step} within 10 minutes");
        }
        if let Some(status) = evaluator.exited() {
            return Err(services.failed("inception-evaluator", status));
        }
        if !told {
            println!("training done at step {step}; waiting for its evaluation");
            told = true;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_for_the_shell_only_when_needed() {
        assert_eq!(shell_quote("store.url=file:///a/b"), "store.url=file:///a/b");
        assert_eq!(shell_quote("/my photos/it's.jpg"), "'/my photos/it'\\''s.jpg'");
    }

    #[test]
    fn runs_are_resumed_when_unfinished_and_never_reused_when_finished() {
        let dir = tempfile::tempdir().unwrap();
        let work = Work { root: dir.path().to_path_buf() };
        let images = Path::new("/photos");
        let args = RunArgs { work: dir.path().into(), run: None, new_run: false };
        let (first, resumed, _) = choose_run(&work, &args, images).unwrap();
        assert_eq!((first.name.as_str(), resumed), ("run-1", false));
        first.write(&work, 10, None).unwrap();
        let (again, resumed, why) = choose_run(&work, &args, images).unwrap();
        assert_eq!((again.name.as_str(), resumed), ("run-1", true), "{why}");
        RunRecord { finished: true, ..first }.write(&work, 10, Some(10)).unwrap();
        let (second, resumed, why) = choose_run(&work, &args, images).unwrap();
        assert_eq!((second.name.as_str(), resumed), ("run-2", false));
        assert!(why.contains("kept: run-1"), "{why}");
        let other = choose_run(&work, &RunArgs { run: Some("run-1".into()), ..args }, Path::new("/other"));
        assert!(other.unwrap_err().to_string().contains("--new-run"));
    }
}
