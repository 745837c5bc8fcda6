//! Layered configuration: the embedded `config/default.toml`, then an optional
//! file, then `INCEPTION__SECTION__KEY` environment variables, then overrides
//! given by the caller (command-line flags). Keys of earlier versions are
//! still accepted with a warning ([`renamed`]); integer keys take whole
//! numbers only ([`integers`]); every unacceptable value, out of its bounds
//! ([`crate::limits`]) or otherwise, is reported at once, each naming its
//! key ([`validate`]).

mod env_names;
mod integers;
mod renamed;
mod types;
mod validate;

use serde::Deserialize;
use std::path::Path;
use std::time::Duration;

use types::deserialize_duration;
pub use types::{
    parse_duration, DeviceSetting, DistributedBackend, JpegCheckSetting, OptimizerSetting, PrecisionSetting,
    ResizeMethodSetting, ScheduleSetting, Split,
};

/// The defaults, compiled in so that every binary runs with no file at all.
pub const DEFAULT_TOML: &str = include_str!("../../../../config/default.toml");

/// Prefix of the environment variables that override settings:
/// `INCEPTION__<SECTION>__<KEY>`.
pub const ENV_PREFIX: &str = "INCEPTION";

/// `(SECTION__KEY, value)` pairs as the environment variables that set them,
/// e.g. `("TRAIN__MAX_STEPS", "10")` -> `("INCEPTION__TRAIN__MAX_STEPS", "10")`.
pub fn env_vars<K: std::fmt::Display, V: Into<String>>(
    pairs: impl IntoIterator<Item = (K, V)>,
) -> Vec<(String, String)> {
    pairs.into_iter().map(|(k, v)| (format!("{ENV_PREFIX}__{k}"), v.into())).collect()
}

/// Environment variable that names an extra configuration file.
pub const CONFIG_FILE_ENV: &str = "INCEPTION_CONFIG";

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A configuration file that cannot be read or parsed.
    #[error("configuration file {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// What is wrong with it.
        source: config::ConfigError,
    },
    /// A value of the wrong type, an unknown key, or a layer that cannot be read.
    #[error("invalid configuration: {0}")]
    Invalid(#[from] config::ConfigError),
    /// Values that were read but are not acceptable: every one, each naming its key.
    #[error("invalid configuration:\n  {}", .0.join("\n  "))]
    Rejected(Vec<String>),
}

/// Every setting of every service, one section each (config/default.toml).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Settings that several stages read.
    pub pipeline: PipelineSettings,
    /// Training distortions and the evaluation crop.
    pub augment: AugmentSettings,
    /// The NATS connection.
    pub nats: NatsSettings,
    /// The shared object store.
    pub store: StoreSettings,
    /// Which dataset the shards belong to.
    pub dataset: DatasetSettings,
    /// Building shards from images, once or continuously.
    pub ingest: IngestSettings,
    /// The shape of the Inception-v3 network.
    pub model: ModelSettings,
    /// The preprocess workers that turn shards into batches.
    pub preprocess: PreprocessSettings,
    /// The trainer.
    pub train: TrainSettings,
    /// The evaluator.
    pub eval: EvalSettings,
    /// The promotion gate (applied by the evaluator after each evaluation).
    pub promotion: PromotionSettings,
    /// The HTTP classification server (`inception-serve`).
    pub serve: ServeSettings,
    /// Data-parallel training over several processes (`[distributed]`).
    pub distributed: DistributedSettings,
    /// Deprecated keys found while loading, one line each (also logged).
    #[serde(skip)]
    pub deprecations: Vec<String>,
    /// `section.key` of every setting given by a file, the environment or a
    /// flag (not by the defaults alone); see [`Settings::is_explicit`].
    #[serde(skip)]
    pub explicit: std::collections::BTreeSet<String>,
}

/// Settings that several stages read (`[pipeline]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSettings {
    /// Images per training batch: preprocess builds them, the trainer's
    /// schedule counts them.
    pub batch_size: u32,
    /// Batches the queue between preprocess workers and the trainer holds.
    pub queue_capacity: u32,
    /// Largest image accepted, in pixels (ingest, preprocess, evaluator, classify).
    pub max_image_pixels: u64,
    /// Name of the training run: checkpoints/<run>/, whose checkpoints the evaluator follows.
    pub run: String,
    /// A service waiting this long without progress (no shards it can read,
    /// no batches, a queue that stays full) is not ready and sets
    /// `inception_stalled`; zero: never.
    #[serde(deserialize_with = "deserialize_duration")]
    pub stall_after: Duration,
}

/// A secret setting (password, token, key seed). Its `Debug` says whether
/// it is set, never what it is, so settings can be logged safely.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// A secret holding `value`; empty means not set.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself, to hand to the client that needs it; never for logs.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Whether a value was given (not empty).
    pub fn is_set(&self) -> bool {
        !self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_set() { "[redacted]" } else { "[not set]" })
    }
}

/// `[nats]`: how services reach NATS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSettings {
    /// NATS server URL(s) with JetStream enabled; comma-separated for a cluster.
    pub url: String,
    /// First delay between connection attempts while NATS is unreachable; doubles up to `connect_retry_max`.
    #[serde(deserialize_with = "deserialize_duration")]
    pub connect_retry: Duration,
    /// Longest delay between connection attempts (services retry until stopped).
    #[serde(deserialize_with = "deserialize_duration")]
    pub connect_retry_max: Duration,
    /// How long one-shot commands (one-shot ingest, announce-only) retry an
    /// unreachable NATS before they exit 1; long-running services never give up.
    #[serde(deserialize_with = "deserialize_duration")]
    pub one_shot_connect_timeout: Duration,
    /// Prefix of every subject and stream, so several pipelines can share a server.
    pub subject_prefix: String,
    /// Most messages each announcement stream (shards, checkpoints, evaluations) keeps; the oldest go first.
    pub stream_max_messages: u64,
    /// Most bytes each announcement stream keeps; the oldest messages go first.
    pub stream_max_bytes: u64,
    /// Oldest message an announcement stream keeps; zero: no age limit.
    #[serde(deserialize_with = "deserialize_duration")]
    pub stream_max_age: Duration,
    /// Largest message any of the pipeline's streams accepts, in bytes.
    pub max_message_bytes: u64,
    /// User name for password authentication (at most one kind of authentication); empty = none.
    pub user: String,
    /// Password of `user`; give it by environment, not in a shared file.
    pub password: Secret,
    /// Token authentication; empty = none.
    pub token: Secret,
    /// An nkey seed (`"SU..."`) whose public key the server knows; empty = none.
    pub nkey_seed: Secret,
    /// A `.creds` file (JWT + nkey seed) of decentralised NATS auth; empty = none.
    pub credentials_file: String,
    /// Require TLS even when the URL says `nats://` (`tls://` URLs always use it).
    pub tls_required: bool,
    /// PEM file of the CA that signed the server's certificate; empty = system roots.
    pub tls_ca_file: String,
    /// Client certificate (PEM) for servers that verify clients (mutual TLS); empty = none.
    pub tls_cert_file: String,
    /// Key of `tls_cert_file`; empty = none.
    pub tls_key_file: String,
}

/// One server URL as (scheme `…://` or empty, `user:password` / `token`
/// before an `@` if any, the rest).
fn split_userinfo(url: &str) -> (&str, Option<&str>, &str) {
    let start = url.find("://").map_or(0, |i| i + 3);
    match url[start..].rfind('@') {
        Some(at) => (&url[..start], Some(&url[start..start + at]), &url[start + at + 1..]),
        None => (&url[..start], None, &url[start..]),
    }
}

impl NatsSettings {
    /// The URLs without `user:password@` / `token@`, and the first such
    /// credentials found (user or token, password).
    pub fn split_url_credentials(&self) -> (String, Option<(String, Option<String>)>) {
        let mut found = None;
        let urls: Vec<String> = self
            .url
            .split(',')
            .map(|u| {
                let (scheme, userinfo, rest) = split_userinfo(u);
                if let (None, Some(info)) = (&found, userinfo) {
                    found = Some(match info.split_once(':') {
                        Some((user, password)) => (user.to_string(), Some(password.to_string())),
                        None => (info.to_string(), None),
                    });
                }
                format!("{scheme}{rest}")
            })
            .collect();
        (urls.join(","), found)
    }

    /// Each server URL of `url` (comma-separated), trimmed, credentials removed.
    pub fn server_urls(&self) -> Vec<String> {
        let (urls, _) = self.split_url_credentials();
        urls.split(',').map(|u| u.trim().to_string()).filter(|u| !u.is_empty()).collect()
    }

    /// The URL with any `user:password@` replaced, for logs and errors.
    pub fn url_for_logs(&self) -> String {
        self.url
            .split(',')
            .map(|u| match split_userinfo(u) {
                (scheme, Some(_), rest) => format!("{scheme}[redacted]@{rest}"),
                _ => u.to_string(),
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// `[store]`: the object store shared by all services.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// `file:///abs/path`, `memory:///` or `s3://bucket/prefix`.
    pub url: String,
    /// Endpoint URL of an S3-compatible server (MinIO, moto, s3s).
    pub s3_endpoint: String,
    /// Whether plain http is allowed to the S3 endpoint.
    pub s3_allow_http: bool,
    /// S3 region.
    pub s3_region: String,
    /// S3 access key id; empty = the `AWS_*` environment variables or the instance's role.
    pub s3_access_key_id: String,
    /// S3 secret access key; empty as for `s3_access_key_id`. Best given by environment.
    pub s3_secret_access_key: Secret,
}

/// `[dataset]`: which dataset the pipeline works on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSettings {
    /// Name of the dataset; shards are written under `datasets/<name>/`.
    pub name: String,
}

/// `[ingest]`: building TFRecord shards from image folders, once or continuously.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSettings {
    /// Folder of `<label>/<image>` training images (build_image_data.py: `--train_directory`).
    pub train_directory: String,
    /// The same for validation (`--validation_directory`); empty skips that split.
    pub validation_directory: String,
    /// One label per line, line i is label i, 0 the background (`--labels_file`); empty = the sorted subfolder names.
    pub labels_file: String,
    /// Largest image file ingest reads, in bytes; a larger one is skipped, unread.
    pub max_image_bytes: u64,
    /// Shards of the train split (`--train_shards`).
    pub train_shards: u32,
    /// Shards of the validation split (`--validation_shards`).
    pub validation_shards: u32,
    /// Threads writing shards (`--num_threads`); shard counts must be multiples of it.
    pub num_threads: u32,
    /// How an RGB JPEG kept byte for byte is checked: `markers` (structure only, fast) or `decode` (every pixel).
    pub jpeg_check: JpegCheckSetting,
    /// CSV of `file,xmin,ymin,xmax,ymax` boxes, relative 0..1 (build_imagenet_data.py: `--bounding_box_file`); empty = no boxes.
    pub bounding_box_file: String,
    /// Local path where one-shot runs also write their JSON report; empty = only the store's copy.
    pub report_file: String,
    /// Continuous mode: folder or store URL watched for new `<label>/<image>` objects; empty = one-shot ingest, then exit.
    pub incoming: String,
    /// The split that continuous ingest adds to.
    pub incoming_split: Split,
    /// A new shard is written once this many new images are waiting...
    pub shard_max_images: u32,
    /// ...or once the oldest waiting image has waited this long.
    #[serde(deserialize_with = "deserialize_duration")]
    pub shard_max_age: Duration,
    /// How often `incoming` is listed; a file is taken once two listings in a row agree on its size and time.
    #[serde(deserialize_with = "deserialize_duration")]
    pub poll_interval: Duration,
    /// Announce written shards on NATS; false: one-shot ingest needs only the store (`--no-announce`).
    pub announce: bool,
    /// Address of the Prometheus metrics and `/healthz` endpoint.
    pub metrics_addr: String,
}

/// `[model]`: the shape of the Inception-v3 network.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSettings {
    /// Square input side, in pixels (image_processing.py: `--image_size`).
    pub image_size: u32,
    /// Width multiplier on every layer's channel count (TF-slim); 1.0 is the published Inception-v3.
    pub depth_multiplier: f64,
    /// Fewest channels any layer gets (TF-slim `min_depth`).
    pub min_depth: u32,
    /// Dropout probability before the logits (the original keeps 0.8, i.e. drops 0.2).
    pub dropout: f64,
    /// Average pools count padded pixels (torchvision) instead of real pixels only (TensorFlow).
    pub avg_pool_count_include_pad: bool,
}

/// `[preprocess]`: the workers that turn shards into training batches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessSettings {
    /// Draw each batch's records class by class (a label uniformly, then one of its records), for skewed data.
    pub class_balanced: bool,
    /// The shuffle buffer keeps 1024 x this many records after each draw (image_processing.py: `--input_queue_memory_factor`).
    pub input_queue_memory_factor: f64,
    /// Hard cap on the shuffle buffer, in bytes, whatever the factor says.
    pub shuffle_buffer_max_bytes: u64,
    /// Largest shard a worker reads, in bytes; a larger one is given up on, unread.
    pub shard_max_bytes: u64,
    /// Failed reads in a row after which a shard is given up on (until the worker restarts).
    pub shard_read_attempts: u32,
    /// Batch objects this old that no queued message points at are deleted; 0 = never.
    #[serde(deserialize_with = "deserialize_duration")]
    pub orphan_batch_age: Duration,
    /// Seed of the random distortions; each worker mixes in its id.
    pub seed: u64,
    /// Identifier of this worker; empty = host name and process id.
    pub worker_id: String,
    /// Keep freed memory for reuse instead of returning it to the kernel (as `train.retain_freed_memory`).
    pub retain_freed_memory: bool,
    /// Address of the Prometheus metrics and `/healthz` endpoint.
    pub metrics_addr: String,
}

/// `[train]`: the trainer: schedule, optimizer, checkpoints, devices.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSettings {
    /// Steps to train (inception_train.py: `--max_steps`).
    pub max_steps: u64,
    /// The update rule: the original's TF RMSProp, SGD with momentum, or AdamW.
    pub optimizer: OptimizerSetting,
    /// Learning-rate schedule after the warm-up: the original's staircase decay, cosine decay, or constant.
    pub lr_schedule: ScheduleSetting,
    /// Steps of linear warm-up from `warmup_start_fraction` of the learning rate; 0 = none.
    pub warmup_steps: u64,
    /// Fraction of the learning rate the warm-up starts at.
    pub warmup_start_fraction: f64,
    /// Steps the cosine decay spans (after the warm-up); 0 = until `max_steps`.
    pub cosine_steps: u64,
    /// Fraction of the learning rate the cosine decay ends at.
    pub cosine_final_fraction: f64,
    /// Weight decay of conv and fully connected weights: an L2 term for RMSProp and SGD
    /// (the original's 4e-5), decoupled (`w -= lr * wd * w`) for AdamW.
    pub weight_decay: f64,
    /// Label smoothing of the cross-entropy (the original's 0.1).
    pub label_smoothing: f64,
    /// Weight of the auxiliary head's loss (the original's 0.4).
    pub aux_loss_weight: f64,
    /// SGD momentum.
    pub sgd_momentum: f64,
    /// Nesterov momentum for SGD.
    pub sgd_nesterov: bool,
    /// AdamW's first-moment decay.
    pub adamw_beta1: f64,
    /// AdamW's second-moment decay.
    pub adamw_beta2: f64,
    /// AdamW's epsilon (added to the square root).
    pub adamw_epsilon: f64,
    /// Stop after this many evaluations in a row without a higher precision@1; 0 = never.
    pub early_stopping_patience: u32,
    /// Decay of the batch-norm moving statistics (the original's 0.9997; about 1 / (1 - d) steps).
    pub batchnorm_decay: f64,
    /// Decay of the weights' moving averages that evaluation uses, once warmed up (the original's 0.9999).
    pub moving_average_decay: f64,
    /// Learning rate at step 0 (inception_train.py: `--initial_learning_rate`).
    pub initial_learning_rate: f64,
    /// Epochs between learning-rate decays (`--num_epochs_per_decay`).
    pub num_epochs_per_decay: f64,
    /// Factor applied to the learning rate at each decay (`--learning_rate_decay_factor`).
    pub learning_rate_decay_factor: f64,
    /// RMSProp decay of inception_train.py (TensorFlow semantics).
    pub rmsprop_decay: f64,
    /// RMSProp momentum of inception_train.py.
    pub rmsprop_momentum: f64,
    /// RMSProp epsilon of inception_train.py.
    pub rmsprop_epsilon: f64,
    /// Examples in one training epoch, for the schedule; 0 = count the records announced for the train split.
    pub examples_per_epoch: u64,
    /// Log a line every this many steps.
    pub log_every_steps: u64,
    /// Write a checkpoint every this many steps, and at the end.
    pub checkpoint_every_steps: u64,
    /// Checkpoints kept (tf.train.Saver `max_to_keep`).
    pub keep_checkpoints: usize,
    /// A batch not acknowledged within this time is delivered again; keep it well above the slowest step.
    #[serde(deserialize_with = "deserialize_duration")]
    pub batch_ack_wait: Duration,
    /// A batch delivered more often than this without a finished step is terminated; 0 = no bound.
    pub batch_max_deliveries: u32,
    /// libtorch's CPU threads; 0 = one per core.
    pub threads: u32,
    /// Device of the first tower: `auto` (CUDA when available), `cpu` or `cuda:N`.
    pub device: DeviceSetting,
    /// Arithmetic of the forward and backward passes: `auto`, `fp32`, `bf16` or `fp16` (CUDA).
    pub precision: PrecisionSetting,
    /// Towers each batch is split over, gradients averaged (`--num_gpus`); `pipeline.batch_size` must be a multiple.
    pub num_gpus: u32,
    /// Weights to start from when the run has no checkpoint yet (`--pretrained_model_checkpoint_path`); empty = none.
    pub pretrained_checkpoint: String,
    /// Re-initialise the logits layers instead of loading them, to train on other classes (`--fine_tune`).
    pub fine_tune: bool,
    /// Folder for TensorBoard event files; empty = none.
    pub tensorboard_dir: String,
    /// Seed for weight initialisation.
    pub seed: i64,
    /// Keep memory libtorch frees for the next step instead of returning it to the kernel (faster; resident memory stays at a step's peak).
    pub retain_freed_memory: bool,
    /// On CUDA, let cuDNN pick its fastest convolution algorithms on the first step; false for bit-reproducible steps.
    pub cudnn_benchmark: bool,
    /// Address of the Prometheus metrics and `/healthz` endpoint.
    pub metrics_addr: String,
}

/// `[augment]`: the training distortions (image_processing.py's
/// `distort_image`) and the evaluation crop. The defaults are the original's.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AugmentSettings {
    /// Smallest fraction of the image area a distorted crop covers.
    pub crop_area_min: f64,
    /// Largest fraction of the image area a distorted crop covers.
    pub crop_area_max: f64,
    /// Smallest width / height ratio of a distorted crop.
    pub aspect_ratio_min: f64,
    /// Largest width / height ratio of a distorted crop.
    pub aspect_ratio_max: f64,
    /// Fraction of an object box (or of the image) a crop must cover.
    pub min_object_covered: f64,
    /// Tries at a crop before the whole image is taken.
    pub crop_attempts: u32,
    /// Probability of a left-right flip; 0 for data whose left and right differ.
    pub flip_probability: f64,
    /// Distort colour (brightness, saturation, hue, contrast), in one of two orders.
    pub distort_color: bool,
    /// Scale of the colour distortion: 1 = the original's ranges, 0.5 = half as wide.
    pub color_strength: f64,
    /// The resize methods a training image's method is drawn from.
    #[serde(deserialize_with = "types::deserialize_resize_methods")]
    pub resize_methods: Vec<ResizeMethodSetting>,
    /// Fraction of each side the evaluation's central crop keeps.
    pub eval_central_fraction: f64,
}

/// `[eval]`: the evaluator.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSettings {
    /// How often the store is polled for checkpoints, as a fall-back to announcements (inception_eval.py: `--eval_interval_secs`).
    #[serde(deserialize_with = "deserialize_duration")]
    pub eval_interval: Duration,
    /// Validation examples per evaluation (`--num_examples`); 0 = every record, each once.
    pub num_examples: u64,
    /// Images per evaluation batch.
    pub batch_size: u32,
    /// Count as the original: `num_examples` rounded up to whole batches, wrapping around; false = each record once (exact).
    pub round_up_to_batches: bool,
    /// Evaluate once, then exit (`--run_once`).
    pub run_once: bool,
    /// libtorch's CPU threads; 0 = one per core.
    pub threads: u32,
    /// Where the model runs: `auto`, `cpu` or `cuda:N`.
    pub device: DeviceSetting,
    /// Arithmetic of the forward pass: `auto`, `fp32`, `bf16` or `fp16` (CUDA).
    pub precision: PrecisionSetting,
    /// Folder for TensorBoard event files (precision and recall by checkpoint step); empty = none.
    pub tensorboard_dir: String,
    /// As `train.retain_freed_memory`.
    pub retain_freed_memory: bool,
    /// As `train.cudnn_benchmark`.
    pub cudnn_benchmark: bool,
    /// Address of the Prometheus metrics and `/healthz` endpoint.
    pub metrics_addr: String,
}

/// Which checkpoint the server follows (`serve.checkpoint`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum ServedCheckpoint {
    /// The run's `promoted` pointer, written by the promotion gate.
    Promoted,
    /// The run's `best` pointer, written by the evaluator.
    Best,
    /// The run's `checkpoint` pointer: the trainer's latest.
    Latest,
}

impl TryFrom<String> for ServedCheckpoint {
    type Error = String;
    fn try_from(word: String) -> Result<Self, String> {
        match word.as_str() {
            "promoted" => Ok(Self::Promoted),
            "best" => Ok(Self::Best),
            "latest" => Ok(Self::Latest),
            other => Err(format!("{other:?}: use promoted, best or latest")),
        }
    }
}

/// `[serve]`: the HTTP classification server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeSettings {
    /// Address of `POST /v1/classify`, `/healthz` and `/readyz` (loopback by default).
    pub listen_addr: String,
    /// Address of the Prometheus metrics and `/healthz` endpoint.
    pub metrics_addr: String,
    /// Most images one forward pass takes (concurrent requests are batched).
    pub batch_size: u32,
    /// Longest a first image waits for others to fill its batch.
    #[serde(deserialize_with = "deserialize_duration")]
    pub max_wait: Duration,
    /// Largest request body, in bytes (413 above it).
    pub max_request_bytes: u64,
    /// Most images in one request.
    pub max_images_per_request: u32,
    /// Images waiting for a forward pass beyond which requests are refused (503).
    pub queue_images: u32,
    /// Labels returned per image unless the request asks for another `top_k`.
    pub top_k: u32,
    /// A bearer token `POST /v1/classify` requires; empty = none. Give it by environment.
    pub bearer_token: Secret,
    /// Where the model runs: `auto`, `cpu` or `cuda:N`.
    pub device: DeviceSetting,
    /// Arithmetic of the served forward pass: `auto`, `fp32`, `bf16` or `fp16` (CUDA); probabilities stay fp32.
    pub precision: PrecisionSetting,
    /// libtorch's CPU threads; 0 = one per core.
    pub threads: u32,
    /// As `train.retain_freed_memory`.
    pub retain_freed_memory: bool,
    /// Which checkpoint is served: `promoted`, `best` or `latest`.
    pub checkpoint: ServedCheckpoint,
    /// How often the store's pointer is read, besides the announcements.
    #[serde(deserialize_with = "deserialize_duration")]
    pub poll_interval: Duration,
}

/// `[promotion]`: when the evaluator moves the run's `promoted` pointer
/// (the checkpoint to serve) to a newly evaluated checkpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromotionSettings {
    /// Whether evaluations are judged at all; false: no decision, no pointer.
    pub enabled: bool,
    /// Precision@1 must be at least the promoted checkpoint's plus this.
    pub min_precision_gain: f64,
    /// No label's recall may fall by more than this below the promoted checkpoint's.
    pub max_recall_drop: f64,
    /// The fewest validation examples an evaluation must have counted.
    pub min_examples: u64,
}

/// `[distributed]`: data-parallel training on torch.distributed's c10d.
/// The launchers' variables (`WORLD_SIZE`, `RANK`, `LOCAL_RANK`,
/// `MASTER_ADDR`, `MASTER_PORT`), where set, override these.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistributedSettings {
    /// Trainer processes in the job; 1: no process group.
    pub world_size: u32,
    /// This process's place in the job, 0 ..= world_size - 1 (0 checkpoints).
    pub rank: u32,
    /// Its place among the job's processes on this machine (picks `cuda:N`).
    pub local_rank: u32,
    /// The host of rank 0's rendezvous store.
    pub master_addr: String,
    /// The port it listens on.
    pub master_port: u16,
    /// How long the rendezvous and each collective may take.
    #[serde(deserialize_with = "deserialize_duration")]
    pub timeout: Duration,
    /// Gloo or NCCL.
    pub backend: DistributedBackend,
    /// All-reduce the gradients during the backward pass (c10d's Reducer).
    pub overlap: bool,
}

impl Settings {
    /// Loads the layers. `file` wins over `INCEPTION_CONFIG`; `overrides` are
    /// `("section.key", "value")` pairs applied last.
    pub fn load(file: Option<&Path>, overrides: &[(String, String)]) -> Result<Self, SettingsError> {
        let env_file = std::env::var(CONFIG_FILE_ENV).ok().filter(|s| !s.is_empty());
        let file = file.map(|p| p.to_string_lossy().into_owned()).or(env_file);
        if let Some(path) = &file {
            // Parse the file alone first so a mistake in it is reported with its name.
            config::Config::builder()
                .add_source(config::File::new(path, config::FileFormat::Toml))
                .build()
                .map_err(|source| SettingsError::File { path: path.clone(), source })?;
        }
        let given = Self::layers(config::Config::builder(), file.as_deref(), overrides)?.build()?;
        let defaults =
            config::Config::builder().add_source(config::File::from_str(DEFAULT_TOML, config::FileFormat::Toml));
        let mut merged = Self::layers(defaults, file.as_deref(), overrides)?.build()?;
        let deprecations =
            renamed::apply(&mut merged.cache, &given.cache).map_err(|e| SettingsError::Rejected(vec![e]))?;
        for warning in &deprecations {
            tracing::warn!("{warning}");
        }
        for warning in env_names::near_misses(std::env::vars_os().filter_map(|(k, _)| k.into_string().ok())) {
            tracing::warn!("{warning}");
        }
        // Before the values are read into their types, which would round 8.5 to 9.
        let defaults_only =
            config::Config::builder().add_source(config::File::from_str(DEFAULT_TOML, config::FileFormat::Toml));
        let not_whole = integers::problems(&merged.cache, &defaults_only.build()?.cache);
        let mut settings: Settings = match merged.try_deserialize() {
            Ok(settings) => settings,
            Err(_) if !not_whole.is_empty() => return Err(SettingsError::Rejected(not_whole)),
            Err(e) => return Err(e.into()),
        };
        settings.deprecations = deprecations;
        settings.explicit = explicit_keys(&given.cache);
        let problems: Vec<String> = not_whole.into_iter().chain(settings.problems()).collect();
        if !problems.is_empty() {
            return Err(SettingsError::Rejected(problems));
        }
        Ok(settings)
    }

    /// The layers over the defaults: the file, the environment, the overrides.
    fn layers(
        mut builder: config::ConfigBuilder<config::builder::DefaultState>,
        file: Option<&str>,
        overrides: &[(String, String)],
    ) -> Result<config::ConfigBuilder<config::builder::DefaultState>, SettingsError> {
        if let Some(path) = file {
            builder = builder.add_source(config::File::new(path, config::FileFormat::Toml));
        }
        // Values stay text, as flags give them, and are read by each key's
        // type: a string setting keeps "007" or "1e3" verbatim (parsing them
        // as numbers first would store "7" and "1000").
        builder =
            builder.add_source(config::Environment::with_prefix(ENV_PREFIX).prefix_separator("__").separator("__"));
        for (key, value) in overrides {
            builder = builder.set_override(key.as_str(), value.as_str())?;
        }
        Ok(builder)
    }

    /// Whether `key` (`section.key`) was given by a file, the environment or
    /// a flag, rather than left at its default: one-shot commands serve
    /// metrics only when their address was asked for.
    pub fn is_explicit(&self, key: &str) -> bool {
        self.explicit.contains(key)
    }

    /// The defaults alone (no file, no environment): for tests.
    pub fn defaults() -> Result<Self, SettingsError> {
        let settings: Settings = config::Config::builder()
            .add_source(config::File::from_str(DEFAULT_TOML, config::FileFormat::Toml))
            .build()?
            .try_deserialize()?;
        Ok(settings)
    }

    /// Records the shuffle buffer keeps after each draw: the original's
    /// `min_queue_examples = 1024 * input_queue_memory_factor`.
    pub fn shuffle_buffer_records(&self) -> usize {
        (1024.0 * self.preprocess.input_queue_memory_factor).round() as usize
    }
}

/// `section.key` of every value in the layers above the defaults.
fn explicit_keys(given: &config::Value) -> std::collections::BTreeSet<String> {
    let mut keys = std::collections::BTreeSet::new();
    if let config::ValueKind::Table(sections) = &given.kind {
        for (section, value) in sections {
            if let config::ValueKind::Table(entries) = &value.kind {
                keys.extend(entries.keys().map(|key| format!("{section}.{key}")));
            }
        }
    }
    keys
}

/// A name usable both as an object-path segment and as a NATS subject token.
pub fn is_safe_token(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod nats_url_tests {
    use super::*;

    #[test]
    fn credentials_in_urls_are_split_off_and_redacted() {
        let mut n = Settings::defaults().unwrap().nats;
        n.url = "nats://svc:p@ss@10.0.0.1:4222,nats://10.0.0.2:4222".into();
        assert_eq!(n.url_for_logs(), "nats://[redacted]@10.0.0.1:4222,nats://10.0.0.2:4222");
        let (urls, creds) = n.split_url_credentials();
        assert_eq!(urls, "nats://10.0.0.1:4222,nats://10.0.0.2:4222");
        assert_eq!(creds, Some(("svc".into(), Some("p@ss".into()))));
        n.url = "tok3n@127.0.0.1:4222".into();
        assert_eq!(n.url_for_logs(), "[redacted]@127.0.0.1:4222");
        assert_eq!(n.split_url_credentials(), ("127.0.0.1:4222".into(), Some(("tok3n".into(), None))));
        n.url = "nats://127.0.0.1:4222".into();
        assert_eq!(n.split_url_credentials(), ("nats://127.0.0.1:4222".into(), None));
        assert_eq!(format!("{:?}", Secret::new("x")), "[redacted]");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_original() {
        let s = Settings::defaults().unwrap();
        assert_eq!(s.model.image_size, 299);
        assert_eq!(s.pipeline.batch_size, 32);
        assert_eq!(s.train.initial_learning_rate, 0.1);
        assert_eq!(s.train.learning_rate_decay_factor, 0.16);
        assert_eq!(s.ingest.train_shards, 2);
        assert_eq!(s.eval.eval_interval, Duration::from_secs(300));
        assert_eq!(s.preprocess.orphan_batch_age, Duration::from_secs(900));
        assert_eq!(s.ingest.jpeg_check, JpegCheckSetting::Markers);
        assert_eq!(s.ingest.incoming_split, Split::Train);
        assert_eq!(s.train.device, DeviceSetting::Auto);
    }

    #[test]
    fn file_then_overrides_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("my.toml");
        std::fs::write(&path, "[train]\nmax_steps = 7\n[model]\nimage_size = 96\n").unwrap();
        let s = Settings::load(Some(&path), &[("model.image_size".into(), "128".into())]).unwrap();
        assert_eq!(s.train.max_steps, 7);
        assert_eq!(s.model.image_size, 128);
    }

    #[test]
    fn explicit_settings_are_told_from_defaults() {
        let overrides = [("ingest.metrics_addr".to_string(), "127.0.0.1:0".to_string())];
        let s = Settings::load(None, &overrides).unwrap();
        assert!(s.is_explicit("ingest.metrics_addr"));
        assert!(!s.is_explicit("eval.metrics_addr"), "{:?}", s.explicit);
    }

    #[test]
    fn malformed_nats_and_store_urls_name_the_setting() {
        let load = |key: &str, value: &str| Settings::load(None, &[(key.to_string(), value.to_string())]);
        let err = load("nats.url", "htp://foo").unwrap_err().to_string();
        assert!(err.contains("nats.url") && err.contains("htp"), "{err}");
        let err = load("nats.url", "nats://svc:secret@127.0.0.1:4222,htp://b").unwrap_err().to_string();
        assert!(err.contains("nats.url") && !err.contains("secret"), "{err}");
        let err = load("store.url", "ftp://bucket/x").unwrap_err().to_string();
        assert!(err.contains("store.url") && err.contains("ftp"), "{err}");
        let s = load("nats.url", "nats://a:4222, tls://b:4222,127.0.0.1:4223").unwrap();
        assert_eq!(s.nats.server_urls(), ["nats://a:4222", "tls://b:4222", "127.0.0.1:4223"]);
    }

    #[test]
    fn a_bad_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.toml");
        std::fs::write(&path, "[train\nmax_steps = ").unwrap();
        let err = Settings::load(Some(&path), &[]).unwrap_err().to_string();
        assert!(err.contains("broken.toml"), "{err}");
    }

    #[test]
    fn old_keys_are_moved_to_the_new_ones_with_a_warning() {
        let old = [
            ("preprocess.batch_size", "64"),
            ("train.run", "older"),
            ("ingest.max_image_pixels", "1000"),
            ("eval.eval_interval_secs", "30"),
            ("nats.connect_retry_secs", "0.25"),
        ];
        let overrides: Vec<(String, String)> = old.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let s = Settings::load(None, &overrides).unwrap();
        assert_eq!(s.pipeline.batch_size, 64);
        assert_eq!(s.pipeline.run, "older");
        assert_eq!(s.pipeline.max_image_pixels, 1000);
        assert_eq!(s.eval.eval_interval, Duration::from_secs(30));
        assert_eq!(s.nats.connect_retry, Duration::from_millis(250));
        assert_eq!(s.deprecations.len(), 5, "{:?}", s.deprecations);
        assert!(s
            .deprecations
            .iter()
            .any(|w| w.contains("preprocess.batch_size is deprecated: use pipeline.batch_size")));
    }

    #[test]
    fn a_new_key_wins_over_its_old_name() {
        let overrides = [("pipeline.run".to_string(), "new".to_string()), ("train.run".into(), "old".into())];
        let s = Settings::load(None, &overrides).unwrap();
        assert_eq!(s.pipeline.run, "new");
        assert_eq!(s.deprecations, ["train.run is deprecated and ignored: pipeline.run is set too"]);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let overrides = [
            ("pipeline.batch_size".to_string(), "0".to_string()),
            ("model.image_size".into(), "10".into()),
            ("dataset.name".into(), "../x".into()),
        ];
        let err = Settings::load(None, &overrides).unwrap_err().to_string();
        for key in ["pipeline.batch_size", "model.image_size", "dataset.name"] {
            assert!(err.contains(key), "{key} missing from: {err}");
        }
    }

    #[test]
    fn typed_values_are_refused_with_their_key() {
        let load = |key: &str, value: &str| Settings::load(None, &[(key.to_string(), value.to_string())]);
        let err = load("eval.eval_interval", "300").unwrap_err().to_string();
        assert!(err.contains("no unit") && err.contains("eval.eval_interval"), "{err}");
        let err = load("ingest.jpeg_check", "quick").unwrap_err().to_string();
        assert!(err.contains("ingest.jpeg_check"), "{err}");
        let err = load("train.device", "gpu").unwrap_err().to_string();
        assert!(err.contains("use auto, cpu or cuda:N") && err.contains("train.device"), "{err}");
        assert_eq!(load("train.device", "cuda:1").unwrap().train.device, DeviceSetting::Cuda(1));
        let err = load("preprocess.orphan_batch_age_secs", "soon").unwrap_err().to_string();
        assert!(err.contains("preprocess.orphan_batch_age_secs"), "{err}");
    }

    #[test]
    fn augmentation_and_optimizer_settings_are_checked() {
        let load = |pairs: &[(&str, &str)]| {
            let overrides: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            Settings::load(None, &overrides)
        };
        let s = load(&[("augment.resize_methods", "area,bilinear"), ("train.optimizer", "adamw")]).unwrap();
        assert_eq!(s.augment.resize_methods, [ResizeMethodSetting::Area, ResizeMethodSetting::Bilinear]);
        assert_eq!(s.train.optimizer, OptimizerSetting::AdamW);
        let err = load(&[
            ("augment.crop_area_min", "0.8"),
            ("augment.crop_area_max", "0.5"),
            ("augment.flip_probability", "1.5"),
            ("augment.eval_central_fraction", "0"),
            ("train.initial_learning_rate", "nan"),
            ("train.label_smoothing", "1"),
        ])
        .unwrap_err()
        .to_string();
        for key in [
            "augment.crop_area_min (0.8) and augment.crop_area_max (0.5)",
            "augment.flip_probability = 1.5",
            "augment.eval_central_fraction = 0",
            "train.initial_learning_rate = NaN",
            "train.label_smoothing = 1",
        ] {
            assert!(err.contains(key), "{key} missing from: {err}");
        }
        let err = load(&[("augment.resize_methods", "area,lanczos")]).unwrap_err().to_string();
        assert!(err.contains("lanczos") && err.contains("augment.resize_methods"), "{err}");
        let err = load(&[("train.lr_schedule", "linear")]).unwrap_err().to_string();
        assert!(err.contains("train.lr_schedule"), "{err}");
        let moved = load(&[("preprocess.distort_color", "false")]).unwrap();
        assert!(!moved.augment.distort_color, "the old key still works");
    }

    #[test]
    fn invalid_values_are_refused() {
        let err = Settings::load(None, &[("ingest.train_shards".into(), "3".into())]).unwrap_err().to_string();
        assert!(err.contains("multiples of ingest.num_threads"), "{err}");
        let err = Settings::load(None, &[("dataset.name".into(), "../etc".into())]).unwrap_err().to_string();
        assert!(err.contains("dataset.name"), "{err}");
    }
}
