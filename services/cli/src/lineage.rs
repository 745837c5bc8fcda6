//! `inception lineage CHECKPOINT [--image KEY_OR_SHA256]… [--json]`: where
//! a checkpoint comes from, from the store alone. It prints the line of
//! checkpoints back to the first (each one's parent, examples and shards
//! since its parent, from its metadata's `lineage`; an ancestor the trainer
//! has pruned since is listed with what its descendant recorded of it), the
//! label map, and the examples drawn from each shard since the first
//! checkpoint. With `--image` it answers whether an image (named by its
//! source key or path, the end of it such as `roses/a.jpg`, its SHA-256, or
//! a local file, which is hashed) was in the checkpoint's training data, by
//! looking it up in the manifests of those shards
//! (`datasets/<name>/manifests/<shard>.json`).
//!
//! How often: the trainer knows how many examples it drew from each shard,
//! not which records. So the answer gives, for each shard holding the
//! image, the examples drawn from the shard and the shard's records, and
//! an estimate of the image's draws, `examples × copies / records`, which
//! assumes uniform draws within a shard (true of the default shuffle, not
//! of class-balanced draws).

use inception_core::limits::MAX_MANIFEST_BYTES;
use inception_core::manifest::{is_sha256, sha256_hex, ShardManifest};
use inception_core::store::StoreError;
use inception_core::{keys, Store};
use inception_model::checkpoint::{self, CheckpointError, Lineage, ShardCount};
use serde::Serialize;
use std::path::Path;

/// Why no lineage could be given.
#[derive(Debug, thiserror::Error)]
pub enum LineageError {
    /// The checkpoint or a pointer to it could not be read.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A pointer that does not exist.
    #[error("run {run:?} has no {pointer} pointer ({key})")]
    NoPointer {
        /// The run.
        run: String,
        /// latest, best or promoted.
        pointer: &'static str,
        /// Its key.
        key: String,
    },
}

/// `inception lineage`'s arguments.
#[derive(Debug, clap::Args)]
pub struct LineageArgs {
    #[command(flatten)]
    common: inception_core::cli::CommonArgs,
    /// `latest`, `best`, `promoted`, a step of the run, or a metadata key
    /// (`checkpoints/<run>/model.ckpt-<step>.json`).
    checkpoint: String,
    /// The run (pipeline.run) of `latest`, `best`, `promoted` or a step.
    #[arg(long)]
    run: Option<String>,
    /// An image to look for: its source key or path (or its end, such as
    /// `roses/a.jpg`), its SHA-256, or a local file (hashed). Repeatable.
    #[arg(long, value_name = "KEY_OR_SHA256")]
    image: Vec<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Everything `inception lineage` prints.
#[derive(Debug, Clone, Serialize)]
pub struct LineageReport {
    /// The checkpoint's metadata key.
    pub checkpoint: String,
    /// Its run.
    pub run: String,
    /// Its step.
    pub step: u64,
    /// Its label map: label i+1 is `labels[i]`.
    pub labels: Vec<String>,
    /// Its lineage as recorded in its metadata.
    pub lineage: Lineage,
    /// The line, newest first: the checkpoint itself, then its ancestors.
    pub history: Vec<HistoryEntry>,
    /// One answer per `--image`.
    pub images: Vec<ImageAnswer>,
}

/// One checkpoint of the line.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryEntry {
    /// Its step.
    pub step: u64,
    /// Its metadata key.
    pub metadata: String,
    /// Examples trained on since its parent.
    pub examples: u64,
    /// Its parent's step; none for the first checkpoint of the line.
    pub parent_step: Option<u64>,
    /// Of its examples, by shard; none when its metadata is gone (pruned).
    pub shards: Option<Vec<ShardCount>>,
    /// Of its examples, those of no named shard; none when its metadata is gone.
    pub unattributed_examples: Option<u64>,
}

/// Whether an image was trained on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Found in the manifest of a shard the line drew examples from.
    Yes,
    /// In no manifest of the shards drawn from, and every example's shard is known and has one.
    No,
    /// Not found, but some examples came from unnamed shards or shards without a manifest.
    Unknown,
}

/// The answer for one `--image`.
#[derive(Debug, Clone, Serialize)]
pub struct ImageAnswer {
    /// As asked.
    pub query: String,
    /// The SHA-256 looked for, when the query was a hash or a local file.
    pub sha256: Option<String>,
    /// Yes, no, or cannot tell.
    pub verdict: Verdict,
    /// The shards holding it.
    pub found: Vec<FoundIn>,
    /// Shards drawn from that have no readable manifest (it may be in them).
    pub shards_without_manifest: Vec<String>,
    /// Examples since the first checkpoint whose shard is not named.
    pub unattributed_examples: u64,
}

/// One shard holding the image.
#[derive(Debug, Clone, Serialize)]
pub struct FoundIn {
    /// The shard's key.
    pub shard: String,
    /// The records made from the image (indices in the shard).
    pub records: Vec<usize>,
    /// Where the image was read, and its label, as the manifest says.
    pub source: String,
    /// Its label's name.
    pub label: String,
    /// Records in the shard.
    pub shard_records: u64,
    /// Examples drawn from the shard since the first checkpoint of the line.
    pub examples_from_shard: u64,
    /// Of those, since the checkpoint's parent.
    pub examples_from_shard_since_parent: u64,
    /// Estimate: `examples_from_shard × records.len() / shard_records`, the
    /// image's expected draws if draws are uniform within the shard.
    pub estimated_draws: f64,
}

/// Runs `inception lineage`; prints the report. `outer`: the `--config`
/// and `--set` given before the subcommand.
pub fn run(outer: &inception_core::cli::CommonArgs, args: LineageArgs) -> anyhow::Result<bool> {
    let mut overrides = Vec::new();
    inception_core::cli::flag(&mut overrides, "pipeline.run", &args.run);
    let settings = crate::merged_settings_flags(&[outer, &args.common]).settings(overrides)?;
    let store = Store::open(&settings.store)?;
    let queries = args.image.iter().map(|q| Query::of(q)).collect::<anyhow::Result<Vec<_>>>()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let report = runtime.block_on(async {
        let key = resolve(&store, &settings.pipeline.run, &args.checkpoint).await?;
        gather(&store, &key, &queries).await
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_text(&report));
    }
    Ok(true)
}

/// An image to look for, as given and as looked up.
#[derive(Debug, Clone)]
pub struct Query {
    /// As given.
    pub text: String,
    /// The hash looked for (a hash given, or a local file's).
    pub sha256: Option<String>,
}

impl Query {
    /// A SHA-256 as such; an existing local file by its content's hash;
    /// anything else as a source key.
    pub fn of(text: &str) -> anyhow::Result<Self> {
        if is_sha256(text) {
            return Ok(Self { text: text.into(), sha256: Some(text.to_ascii_lowercase()) });
        }
        let path = Path::new(text);
        if path.is_file() {
            let bytes = crate::input::read(path, 1 << 34)?;
            return Ok(Self { text: text.into(), sha256: Some(sha256_hex(&bytes)) });
        }
        Ok(Self { text: text.into(), sha256: None })
    }

    fn find(&self, manifest: &ShardManifest) -> Vec<usize> {
        manifest.find(self.sha256.as_deref().unwrap_or(&self.text))
    }
}

/// The metadata key `checkpoint` names in `run`.
pub async fn resolve(store: &Store, run: &str, checkpoint: &str) -> Result<String, LineageError> {
    let missing = |pointer: &'static str, key: String| LineageError::NoPointer { run: run.into(), pointer, key };
    match checkpoint {
        "latest" => checkpoint::read_pointer(store, run)
            .await?
            .map(|p| p.metadata)
            .ok_or_else(|| missing("latest", keys::checkpoint_pointer(run))),
        "best" => checkpoint::read_best(store, run)
            .await?
            .map(|p| p.metadata)
            .ok_or_else(|| missing("best", keys::checkpoint_best(run))),
        "promoted" => checkpoint::read_promoted(store, run)
            .await?
            .map(|p| p.metadata)
            .ok_or_else(|| missing("promoted", keys::checkpoint_promoted(run))),
        other => Ok(match other.parse::<u64>() {
            Ok(step) => keys::checkpoint_metadata(run, step),
            Err(_) => other.to_string(),
        }),
    }
}

/// Reads the checkpoint at `metadata_key`, its ancestors still in the
/// store, and the manifests the queries need.
pub async fn gather(store: &Store, metadata_key: &str, queries: &[Query]) -> Result<LineageReport, LineageError> {
    let meta = checkpoint::read_meta(store, metadata_key).await?;
    let lineage = meta.lineage.clone();
    let mut history = vec![HistoryEntry {
        step: meta.step,
        metadata: metadata_key.to_string(),
        examples: lineage.examples,
        parent_step: lineage.parent_step,
        shards: Some(lineage.shards.clone()),
        unattributed_examples: Some(lineage.unattributed_examples),
    }];
    for ancestor in lineage.ancestors.iter().rev() {
        let stored = match checkpoint::read_meta(store, &ancestor.metadata).await {
            Ok(m) => Some(m.lineage),
            Err(CheckpointError::Store(StoreError::NotFound { .. })) => None,
            Err(e) => {
                tracing::warn!("{e}");
                None
            }
        };
        history.push(HistoryEntry {
            step: ancestor.step,
            metadata: ancestor.metadata.clone(),
            examples: ancestor.examples,
            parent_step: stored.as_ref().and_then(|l| l.parent_step),
            shards: stored.as_ref().map(|l| l.shards.clone()),
            unattributed_examples: stored.as_ref().map(|l| l.unattributed_examples),
        });
    }
    let images = answer(store, &lineage, queries).await?;
    Ok(LineageReport {
        checkpoint: metadata_key.to_string(),
        run: meta.run,
        step: meta.step,
        labels: meta.labels,
        lineage,
        history,
        images,
    })
}

/// Looks each query up in the manifests of the shards the line drew from.
async fn answer(store: &Store, lineage: &Lineage, queries: &[Query]) -> Result<Vec<ImageAnswer>, LineageError> {
    if queries.is_empty() {
        return Ok(Vec::new());
    }
    let mut manifests = Vec::new();
    let mut without = Vec::new();
    for count in lineage.total_shards.iter().filter(|c| c.examples > 0) {
        match read_manifest(store, &count.shard).await? {
            Some(m) => manifests.push((count, m)),
            None => without.push(count.shard.clone()),
        }
    }
    let since_parent = |shard: &str| lineage.shards.iter().find(|c| c.shard == shard).map_or(0, |c| c.examples);
    Ok(queries
        .iter()
        .map(|query| {
            let found: Vec<FoundIn> = manifests
                .iter()
                .filter_map(|(count, manifest)| {
                    let records = query.find(manifest);
                    let first = manifest.images.get(*records.first()?)?;
                    let estimated_draws = if manifest.records == 0 {
                        0.0
                    } else {
                        count.examples as f64 * records.len() as f64 / manifest.records as f64
                    };
                    Some(FoundIn {
                        shard: count.shard.clone(),
                        source: first.source.clone(),
                        label: first.text.clone(),
                        records,
                        shard_records: manifest.records,
                        examples_from_shard: count.examples,
                        examples_from_shard_since_parent: since_parent(&count.shard),
                        estimated_draws,
                    })
                })
                .collect();
            let unattributed = lineage.total_unattributed_examples;
            let verdict = match (found.is_empty(), without.is_empty() && unattributed == 0) {
                (false, _) => Verdict::Yes,
                (true, true) => Verdict::No,
                (true, false) => Verdict::Unknown,
            };
            ImageAnswer {
                query: query.text.clone(),
                sha256: query.sha256.clone(),
                verdict,
                found,
                shards_without_manifest: without.clone(),
                unattributed_examples: unattributed,
            }
        })
        .collect())
}

/// A shard's manifest; None when there is none or it is unreadable (logged).
async fn read_manifest(store: &Store, shard: &str) -> Result<Option<ShardManifest>, LineageError> {
    let key = keys::shard_manifest(shard);
    match store.get_at_most(&key, MAX_MANIFEST_BYTES).await {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(m) => Ok(Some(m)),
            Err(e) => {
                tracing::warn!("{key}: {e}; the shard is searched as if it had no manifest");
                Ok(None)
            }
        },
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e @ StoreError::TooLarge { .. }) => {
            tracing::warn!("{e}");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// The report as text.
pub fn render_text(report: &LineageReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let l = &report.lineage;
    let _ = writeln!(out, "checkpoint {} (run {}, step {})", report.checkpoint, report.run, report.step);
    let _ = writeln!(out, "labels ({}): {}", report.labels.len(), report.labels.join(", "));
    let _ = writeln!(
        out,
        "trained on {} examples since the first checkpoint of its line ({} of no named shard)",
        l.total_examples, l.total_unattributed_examples
    );
    let _ = writeln!(out, "\nhistory, newest first:");
    for entry in &report.history {
        let parent = entry.parent_step.map_or("the start".to_string(), |s| format!("step {s}"));
        let _ =
            writeln!(out, "  step {}: {} examples since {parent}  [{}]", entry.step, entry.examples, entry.metadata);
        match &entry.shards {
            Some(shards) => {
                for c in shards {
                    let _ = writeln!(out, "      {:>10}  {}", c.examples, c.shard);
                }
                if let Some(n) = entry.unattributed_examples.filter(|n| *n > 0) {
                    let _ = writeln!(out, "      {n:>10}  (no named shard)");
                }
            }
            None => {
                let _ = writeln!(out, "      (its metadata is gone, pruned: no shard counts)");
            }
        }
    }
    if l.ancestors_left_out > 0 {
        let _ = writeln!(out, "  … and {} older checkpoints not listed", l.ancestors_left_out);
    }
    let _ = writeln!(out, "\nexamples by shard since the first checkpoint:");
    for c in &l.total_shards {
        let _ = writeln!(out, "  {:>10}  {}", c.examples, c.shard);
    }
    for answer in &report.images {
        render_answer(&mut out, answer);
    }
    out
}

fn render_answer(out: &mut String, answer: &ImageAnswer) {
    use std::fmt::Write;
    let hash = answer.sha256.as_ref().map_or(String::new(), |h| format!(" (sha256 {h})"));
    let verdict = match answer.verdict {
        Verdict::Yes => "yes, it was in the training data",
        Verdict::No => "no, it was not in the training data",
        Verdict::Unknown => "not found, but cannot be ruled out",
    };
    let _ = writeln!(out, "\nimage {}{hash}: {verdict}", answer.query);
    for f in &answer.found {
        let _ = writeln!(
            out,
            "  in {} (record {}; {} label {}): {} examples drawn from that shard of {} records ({} since the parent); \
             estimated draws of this image: {:.2} (examples × copies / records, assuming uniform draws within the shard)",
            f.shard,
            f.records.iter().map(usize::to_string).collect::<Vec<_>>().join(", "),
            f.source,
            f.label,
            f.examples_from_shard,
            f.shard_records,
            f.examples_from_shard_since_parent,
            f.estimated_draws
        );
    }
    if !answer.shards_without_manifest.is_empty() {
        let _ = writeln!(
            out,
            "  {} shard(s) drawn from have no manifest: {}",
            answer.shards_without_manifest.len(),
            answer.shards_without_manifest.join(", ")
        );
    }
    if answer.found.is_empty() && answer.unattributed_examples > 0 {
        let _ = writeln!(out, "  {} examples came from shards not named in the lineage", answer.unattributed_examples);
    }
}
