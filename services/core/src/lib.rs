//! What every service needs, and nothing specific to one stage.
//!
//! * [`settings`]: the layered configuration (`config/default.toml`, file, env).
//! * [`nats`]: connecting with retries, the pipeline's JetStream streams.
//! * [`store`]: the shared object store.
//! * [`telemetry`]: logs, Prometheus metrics, `/healthz` and `/readyz`.
//! * [`shutdown`]: SIGTERM handling.
//! * [`tfrecord`], [`example`], [`batch`]: the on-store formats; [`tfevents`]: TensorBoard files.
//! * [`local_nats`]: a nats-server child process for local runs and tests.

pub mod batch;
pub mod cli;
pub mod example;
pub mod local_nats;
pub mod nats;
pub mod settings;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod tfevents;
pub mod tfrecord;

pub use settings::Settings;
pub use store::Store;

/// Object-store keys of the pipeline, in one place.
pub mod keys {
    /// Directory of a dataset's shards and label file.
    pub fn dataset_dir(dataset: &str) -> String {
        format!("datasets/{dataset}")
    }
    /// `datasets/<name>/<split>-00000-of-00002`, build_image_data.py's naming.
    pub fn shard(dataset: &str, split: &str, index: u32, total: u32) -> String {
        format!("datasets/{dataset}/{split}-{index:05}-of-{total:05}")
    }
    /// The label names, one per line; line i is label i (1-based).
    pub fn labels(dataset: &str) -> String {
        format!("datasets/{dataset}/labels.txt")
    }
    pub fn batch(dataset: &str, producer: &str, sequence: u64) -> String {
        format!("batches/{dataset}/{producer}-{sequence:010}.safetensors")
    }
    pub fn checkpoint_dir(run: &str) -> String {
        format!("checkpoints/{run}")
    }
    pub fn checkpoint_weights(run: &str, step: u64) -> String {
        format!("checkpoints/{run}/model.ckpt-{step}.safetensors")
    }
    pub fn checkpoint_metadata(run: &str, step: u64) -> String {
        format!("checkpoints/{run}/model.ckpt-{step}.json")
    }
    /// Points at the latest complete checkpoint (like TF's `checkpoint` file).
    pub fn checkpoint_pointer(run: &str) -> String {
        format!("checkpoints/{run}/checkpoint")
    }
    pub fn eval_result(run: &str, step: u64) -> String {
        format!("eval/{run}/step-{step}.json")
    }
}
