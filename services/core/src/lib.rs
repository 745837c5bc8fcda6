//! What every service needs, and nothing specific to one stage.
//!
//! * [`settings`]: the layered configuration (`config/default.toml`, file, env).
//! * [`nats`]: connecting with retries, the pipeline's JetStream streams;
//!   [`follow`]: hearing announcements through restarts and lost consumers.
//! * [`store`]: the shared object store.
//! * [`telemetry`]: logs, Prometheus metrics, `/healthz` and `/readyz`.
//! * [`shutdown`]: SIGTERM handling.
//! * [`tfrecord`], [`example`], [`batch`], [`manifest`]: the on-store formats; [`tfevents`]: TensorBoard files.
//! * [`local_nats`]: a nats-server child process for local runs and tests;
//!   [`process`]: a child process stopped when its guard is dropped.
//! * [`backoff`]: the exponential back-off of every retry loop.
//! * [`limits`]: the upper bounds on sizes and counts that come from outside;
//!   [`announcements`]: the checks of shard announcements.
//! * [`bootstrap`]: the start-up every service main shares.

#![warn(missing_docs)]

pub mod announcements;
pub mod backoff;
pub mod batch;
pub mod bootstrap;
pub mod cli;
pub mod example;
pub mod follow;
pub mod limits;
pub mod local_nats;
pub mod manifest;
pub mod memory;
pub mod nats;
pub mod process;
pub mod settings;
pub mod shutdown;
pub mod stall;
pub mod store;
pub mod telemetry;
pub mod tfevents;
pub mod tfrecord;

pub use settings::Settings;
pub use store::Store;

/// Object-store keys of the pipeline, in one place.
pub mod keys {
    /// The part of `key` below the folder `dir` (`<dir>/<rest>`), or None
    /// when the key is outside it or contains `..`. Every key a message
    /// names is checked with this before it is read, so that no message can
    /// point a service at an arbitrary object.
    pub fn below<'a>(key: &'a str, dir: &str) -> Option<&'a str> {
        if key.contains("..") {
            return None;
        }
        key.strip_prefix(dir)?.strip_prefix('/')
    }
    /// Directory of a dataset's shards and label file.
    pub fn dataset_dir(dataset: &str) -> String {
        format!("datasets/{dataset}")
    }
    /// `datasets/<name>/<split>-00000-of-00002`, build_image_data.py's naming.
    pub fn shard(dataset: &str, split: &str, index: u32, total: u32) -> String {
        format!("datasets/{dataset}/{split}-{index:05}-of-{total:05}")
    }
    /// A shard of continuous ingest: `datasets/<name>/<split>-live-00000042`,
    /// numbered by the ingest ledger's sequence (never reused). It matches
    /// the original's `<split>-*` glob, like build_image_data.py's shards.
    pub fn live_shard(dataset: &str, split: &str, sequence: u64) -> String {
        format!("datasets/{dataset}/{split}-live-{sequence:08}")
    }
    /// The manifest of a shard (JSON, [`crate::manifest::ShardManifest`]):
    /// `datasets/<name>/manifests/<shard name>.json` beside the shard's
    /// folder. In a folder of its own, so that no listing of shards
    /// (`<split>-…` directly in `datasets/<name>/`) can take it for one.
    pub fn shard_manifest(shard_key: &str) -> String {
        match shard_key.rsplit_once('/') {
            Some((dir, name)) => format!("{dir}/manifests/{name}.json"),
            None => format!("manifests/{shard_key}.json"),
        }
    }
    /// Continuous ingest's ledger: one entry per sequence number.
    pub fn ingest_ledger_dir(dataset: &str) -> String {
        format!("datasets/{dataset}/ingest/ledger/")
    }
    /// One ledger entry (JSON): the source images of a sequence number and the shard they went into.
    pub fn ingest_ledger_entry(dataset: &str, sequence: u64) -> String {
        format!("datasets/{dataset}/ingest/ledger/{sequence:08}.json")
    }
    /// The source keys taken by ledger entries `from..=through`.
    pub fn ingest_ledger_segment(dataset: &str, from: u64, through: u64) -> String {
        format!("datasets/{dataset}/ingest/ledger/segment-{from:08}-{through:08}.json")
    }
    /// Written once a ledger entry's shard is stored and announced.
    pub fn ingest_ledger_done(dataset: &str, sequence: u64) -> String {
        format!("datasets/{dataset}/ingest/ledger/{sequence:08}.done")
    }
    /// Copies of images under labels that are not in the label set, each
    /// beside a `<name>.reason.json`.
    pub fn ingest_quarantine(dataset: &str, source_key: &str) -> String {
        format!("datasets/{dataset}/ingest/quarantine/{source_key}")
    }
    /// One-shot ingest's report of what it wrote and skipped (JSON).
    pub fn ingest_report(dataset: &str) -> String {
        format!("datasets/{dataset}/ingest/report.json")
    }
    /// The label names, one per line; line i is label i (1-based).
    pub fn labels(dataset: &str) -> String {
        format!("datasets/{dataset}/labels.txt")
    }
    /// Where batches wait for the trainer (claim check of `BatchReady`).
    pub fn batch_dir(dataset: &str) -> String {
        format!("batches/{dataset}")
    }
    /// One batch object in [`batch_dir`], named by its producer and the producer's sequence.
    pub fn batch(dataset: &str, producer: &str, sequence: u64) -> String {
        format!("{}/{producer}-{sequence:010}.safetensors", batch_dir(dataset))
    }
    /// Directory of a run's checkpoints and its pointer.
    pub fn checkpoint_dir(run: &str) -> String {
        format!("checkpoints/{run}")
    }
    /// The tensors (model and optimizer) of the checkpoint at `step` (safetensors).
    pub fn checkpoint_weights(run: &str, step: u64) -> String {
        format!("checkpoints/{run}/model.ckpt-{step}.safetensors")
    }
    /// The checkpoint's metadata at `step` (JSON): step, labels, model configuration, weights' key.
    pub fn checkpoint_metadata(run: &str, step: u64) -> String {
        format!("checkpoints/{run}/model.ckpt-{step}.json")
    }
    /// Points at the latest complete checkpoint (like TF's `checkpoint` file).
    pub fn checkpoint_pointer(run: &str) -> String {
        format!("checkpoints/{run}/checkpoint")
    }
    /// Points at the run's best evaluated checkpoint (JSON: step, metadata
    /// and weights keys, precision@1, validation loss), written by the
    /// evaluator; the trainer never prunes the checkpoint it points at.
    pub fn checkpoint_best(run: &str) -> String {
        format!("checkpoints/{run}/best")
    }
    /// Points at the run's promoted checkpoint, the one to serve (JSON:
    /// step, metadata and weights keys, precision@1, when), written
    /// atomically by the promotion gate; the trainer never prunes it.
    pub fn checkpoint_promoted(run: &str) -> String {
        format!("checkpoints/{run}/promoted")
    }
    /// The promotion gate's decision on the checkpoint at `step` (JSON:
    /// promoted or rejected, and why).
    pub fn promotion_decision(run: &str, step: u64) -> String {
        format!("checkpoints/{run}/promotions/step-{step}.json")
    }
    /// The trainer's log lines (JSON lines: step, time, loss, learning
    /// rate) of the steps up to `step` since the previous such object,
    /// written after the checkpoint of `step`.
    pub fn train_log(run: &str, step: u64) -> String {
        format!("{}{step:010}.jsonl", train_log_prefix(run))
    }
    /// The prefix of every [`train_log`] key of a run (to list them).
    pub fn train_log_prefix(run: &str) -> String {
        format!("checkpoints/{run}/log/steps-")
    }
    /// The settings the run's trainer read at its latest start (JSON).
    pub fn train_settings(run: &str) -> String {
        format!("checkpoints/{run}/settings.json")
    }
    /// The evaluation of a run's checkpoint at `step` (JSON).
    pub fn eval_result(run: &str, step: u64) -> String {
        format!("eval/{run}/step-{step}.json")
    }
}

#[cfg(test)]
mod key_tests {
    use super::keys::below;

    #[test]
    fn below_accepts_only_keys_inside_the_folder() {
        assert_eq!(below("batches/demo/w-1.safetensors", "batches/demo"), Some("w-1.safetensors"));
        assert_eq!(below("batches/demo/a/b", "batches/demo"), Some("a/b"));
        assert_eq!(below("batches/demox/w-1", "batches/demo"), None, "a sibling with the same start");
        assert_eq!(below("batches/demo", "batches/demo"), None);
        assert_eq!(below("batches/demo/../secret", "batches/demo"), None);
        assert_eq!(below("other/batches/demo/x", "batches/demo"), None);
    }

    #[test]
    fn a_manifest_is_never_named_like_a_shard() {
        use super::keys::{shard, shard_manifest};
        let key = shard("flowers", "train", 0, 2);
        assert_eq!(shard_manifest(&key), "datasets/flowers/manifests/train-00000-of-00002.json");
        let manifest = shard_manifest(&key);
        let name = below(&manifest, "datasets/flowers").unwrap();
        assert!(name.contains('/'), "not directly in the dataset folder, where shards are");
        assert!(!name.starts_with("train-") && !name.starts_with("validation-"));
    }
}
