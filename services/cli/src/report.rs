//! `inception report RUN`: one self-contained HTML page about a training
//! run, made from the object store alone (the run's processes may be long
//! gone): charts of the loss, the learning rate and precision@1 against
//! step and time, the latest evaluation's per-class table and confusion
//! matrix, every evaluation, the dataset's ingest summary, the model and
//! the settings the trainer read.
//!
//! What it reads, all optional but one of the run's own:
//! * `checkpoints/<run>/log/steps-*.jsonl`: the trainer's logged steps
//!   ([`inception_trainer::history`]);
//! * `checkpoints/<run>/settings.json`: the settings the trainer read;
//! * `checkpoints/<run>/checkpoint` and the metadata it points at (model,
//!   labels, examples seen), and `checkpoints/<run>/best`;
//! * `eval/<run>/step-*.json`: the evaluator's results;
//! * `datasets/<dataset>/ingest/report.json` and `labels.txt`.
//!
//! The page has no script and no outside resource; its Content Security
//! Policy forbids both, and every text from the store is escaped.

mod charts;
mod html;

use inception_core::store::StoreError;
use inception_core::{keys, Store};
use inception_evaluator::Evaluation;
use inception_ingest::RunReport;
use inception_model::checkpoint::{self, BestPointer, CheckpointMeta, CheckpointPointer, MAX_METADATA_BYTES};
use inception_trainer::history::{self, SettingsRecord, StepRecord};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use html::render;

/// The most one JSON object read for the report may have (an evaluation
/// of many classes carries its confusion matrix).
const MAX_OBJECT_BYTES: u64 = 256 << 20;

/// Why no report was written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store has nothing of the run: no checkpoint, log, settings or evaluation.
    #[error("the store {url} has nothing of a run named {run:?} (no checkpoints/{run}/ nor eval/{run}/)")]
    NoRun {
        /// The run asked for.
        run: String,
        /// The store's URL.
        url: String,
    },
    /// The page could not be written.
    #[error("cannot write the report to {path}: {source}")]
    Write {
        /// Where it was to go.
        path: String,
        /// Why not.
        source: std::io::Error,
    },
}

/// Everything the page shows, as read from the store.
#[derive(Debug, Clone, Default)]
pub struct RunData {
    /// The run's name.
    pub run: String,
    /// The dataset's name.
    pub dataset: String,
    /// The store's URL.
    pub store_url: String,
    /// The logged steps, by step (the later record of a step wins).
    pub steps: Vec<StepRecord>,
    /// The evaluations, by step.
    pub evaluations: Vec<Evaluation>,
    /// The run's `checkpoint` pointer.
    pub pointer: Option<CheckpointPointer>,
    /// The metadata of the latest checkpoint.
    pub latest: Option<CheckpointMeta>,
    /// The run's `best` pointer.
    pub best: Option<BestPointer>,
    /// The settings the trainer read at its latest start.
    pub settings: Option<SettingsRecord>,
    /// One-shot ingest's report of the dataset.
    pub ingest: Option<RunReport>,
    /// The dataset's label names (`labels.txt`).
    pub labels: Option<Vec<String>>,
    /// What was there but could not be read, one line each.
    pub problems: Vec<String>,
    /// When the page was made, seconds since the Unix epoch.
    pub generated_unix: i64,
}

/// Reads what the store has of `run` (and of `dataset`). Objects that are
/// there but unreadable are listed in [`RunData::problems`]; an error only
/// when the store cannot be read at all or has nothing of the run.
pub async fn gather(store: &Store, run: &str, dataset: &str) -> Result<RunData, ReportError> {
    let mut data = RunData {
        run: run.to_string(),
        dataset: dataset.to_string(),
        store_url: store.url().to_string(),
        generated_unix: chrono::Utc::now().timestamp(),
        ..RunData::default()
    };
    let mut problems = Vec::new();

    let mut steps = BTreeMap::new();
    for key in sorted(store.list(&keys::train_log_prefix(run)).await?) {
        match store.get_at_most(&key, MAX_OBJECT_BYTES).await {
            Ok(bytes) => {
                let (records, bad) = history::parse_json_lines(&bytes);
                if bad > 0 {
                    problems.push(format!("{key}: {bad} lines are not step records"));
                }
                steps.extend(records.into_iter().map(|r| (r.step, r)));
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
    data.steps = steps.into_values().collect();

    let mut evaluations = BTreeMap::new();
    let eval_prefix = format!("eval/{run}/step-");
    for key in store.list(&eval_prefix).await? {
        if !key.ends_with(".json") {
            continue;
        }
        if let Some(e) = read_json::<Evaluation>(store, &key, MAX_OBJECT_BYTES, &mut problems).await {
            evaluations.insert(e.step, e);
        }
    }
    data.evaluations = evaluations.into_values().collect();

    data.pointer = read_json(store, &keys::checkpoint_pointer(run), MAX_METADATA_BYTES, &mut problems).await;
    let latest_key = match &data.pointer {
        Some(p) => Some(p.metadata.clone()),
        None => latest_metadata_key(store, run).await?,
    };
    if let Some(key) = latest_key.filter(|k| keys::below(k, &keys::checkpoint_dir(run)).is_some()) {
        data.latest = read_json(store, &key, MAX_METADATA_BYTES, &mut problems).await;
    }
    data.best = read_json(store, &keys::checkpoint_best(run), MAX_METADATA_BYTES, &mut problems).await;
    data.settings = read_json(store, &keys::train_settings(run), MAX_METADATA_BYTES, &mut problems).await;

    let has_run = !data.steps.is_empty()
        || !data.evaluations.is_empty()
        || data.pointer.is_some()
        || data.latest.is_some()
        || data.settings.is_some()
        || !store.list(&format!("{}/", keys::checkpoint_dir(run))).await?.is_empty();
    if !has_run {
        return Err(ReportError::NoRun { run: run.to_string(), url: store.url().to_string() });
    }

    data.ingest = read_json(store, &keys::ingest_report(dataset), MAX_OBJECT_BYTES, &mut problems).await;
    match store.get_at_most(&keys::labels(dataset), MAX_METADATA_BYTES).await {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            data.labels = Some(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect());
        }
        Err(StoreError::NotFound { .. }) => {}
        Err(e) => problems.push(e.to_string()),
    }
    data.problems = problems;
    Ok(data)
}

/// Gathers what the store has of `run` and writes the page to `out`
/// (folders created); returns `out`. What `inception train` calls at the
/// end of a run, and `inception report RUN` on demand.
pub async fn write_report(store: &Store, run: &str, dataset: &str, out: &Path) -> Result<PathBuf, ReportError> {
    let data = gather(store, run, dataset).await?;
    let page = render(&data);
    let failed = |source| ReportError::Write { path: out.display().to_string(), source };
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(failed)?;
    }
    // Written beside it and renamed: a browser never shows half a page.
    let partial = out.with_extension("html.partial");
    std::fs::write(&partial, page).map_err(failed)?;
    std::fs::rename(&partial, out).map_err(failed)?;
    Ok(out.to_path_buf())
}

/// The default file name of a run's report: `report-<run>.html`, with
/// characters other than letters, digits, `-`, `_` and `.` replaced.
pub fn default_file_name(run: &str) -> String {
    let safe: String =
        run.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect();
    format!("report-{safe}.html")
}

fn sorted(mut keys: Vec<String>) -> Vec<String> {
    keys.sort();
    keys
}

/// The key of the highest `model.ckpt-<step>.json` of the run, for a run
/// whose pointer is missing.
async fn latest_metadata_key(store: &Store, run: &str) -> Result<Option<String>, StoreError> {
    let listed = store.list(&format!("{}/model.ckpt-", keys::checkpoint_dir(run))).await?;
    Ok(listed
        .into_iter()
        .filter(|k| k.ends_with(".json"))
        .filter_map(|k| checkpoint::step_of(&k).map(|s| (s, k)))
        .max()
        .map(|(_, k)| k))
}

/// A JSON object of the store; `None` when it is absent, and also when it
/// cannot be read or parsed (then said in `problems`).
async fn read_json<T: DeserializeOwned>(store: &Store, key: &str, max: u64, problems: &mut Vec<String>) -> Option<T> {
    match store.get_at_most(key, max).await {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(value) => Some(value),
            Err(e) => {
                problems.push(format!("{key}: not readable: {e}"));
                None
            }
        },
        Err(StoreError::NotFound { .. }) => None,
        Err(e) => {
            problems.push(e.to_string());
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_keep_to_safe_characters() {
        assert_eq!(default_file_name("default"), "report-default.html");
        assert_eq!(default_file_name("a/b c<d>"), "report-a_b_c_d_.html");
    }
}

/// `inception report RUN`: the arguments.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    #[command(flatten)]
    common: inception_core::cli::CommonArgs,
    /// The training run (pipeline.run of its trainer and evaluator).
    run: String,
    /// Where to write the page; default: report-<RUN>.html here.
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
    /// The dataset whose ingest summary and labels to show; default: dataset.name.
    #[arg(long)]
    dataset: Option<String>,
}

/// Runs `inception report`; prints the page's path. `outer`: the
/// `--config` and `--set` given before the subcommand.
pub fn run(outer: &inception_core::cli::CommonArgs, args: ReportArgs) -> anyhow::Result<bool> {
    let mut overrides = Vec::new();
    inception_core::cli::flag(&mut overrides, "dataset.name", &args.dataset);
    let settings = crate::merged_settings_flags(&[outer, &args.common]).settings(overrides)?;
    let store = Store::open(&settings.store)?;
    let out = args.output.unwrap_or_else(|| PathBuf::from(default_file_name(&args.run)));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let written = runtime.block_on(write_report(&store, &args.run, &settings.dataset.name, &out))?;
    println!("{}", written.display());
    Ok(true)
}
