//! Layered configuration: the embedded `config/default.toml`, then an optional
//! file, then `INCEPTION__SECTION__KEY` environment variables, then overrides
//! given by the caller (command-line flags).

use serde::Deserialize;
use std::path::Path;

/// The defaults, compiled in so that every binary runs with no file at all.
pub const DEFAULT_TOML: &str = include_str!("../../../config/default.toml");

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

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("configuration file {path}: {source}")]
    File { path: String, source: config::ConfigError },
    #[error("invalid configuration: {0}")]
    Invalid(#[from] config::ConfigError),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub nats: NatsSettings,
    pub store: StoreSettings,
    pub dataset: DatasetSettings,
    pub ingest: IngestSettings,
    pub model: ModelSettings,
    pub preprocess: PreprocessSettings,
    pub train: TrainSettings,
    pub eval: EvalSettings,
}

/// A secret setting (password, token, key seed). Its `Debug` says whether
/// it is set, never what it is, so settings can be logged safely.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_set(&self) -> bool {
        !self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_set() { "[redacted]" } else { "[not set]" })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSettings {
    pub url: String,
    pub connect_retry_secs: f64,
    pub connect_retry_max_secs: f64,
    pub subject_prefix: String,
    pub user: String,
    pub password: Secret,
    pub token: Secret,
    pub nkey_seed: Secret,
    pub credentials_file: String,
    pub tls_required: bool,
    pub tls_ca_file: String,
    pub tls_cert_file: String,
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    pub url: String,
    pub s3_endpoint: String,
    pub s3_allow_http: bool,
    pub s3_region: String,
    pub s3_access_key_id: String,
    pub s3_secret_access_key: Secret,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSettings {
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSettings {
    pub train_directory: String,
    pub validation_directory: String,
    pub labels_file: String,
    pub train_shards: u32,
    pub validation_shards: u32,
    pub num_threads: u32,
    pub max_image_pixels: u64,
    pub jpeg_check: String,
    pub bounding_box_file: String,
    pub report_file: String,
    pub incoming: String,
    pub incoming_split: String,
    pub shard_max_images: u32,
    pub shard_max_age_secs: f64,
    pub poll_interval_secs: f64,
    pub metrics_addr: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSettings {
    pub image_size: u32,
    pub depth_multiplier: f64,
    pub min_depth: u32,
    pub dropout: f64,
    pub avg_pool_count_include_pad: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessSettings {
    pub batch_size: u32,
    pub distort_color: bool,
    pub input_queue_memory_factor: f64,
    pub shuffle_buffer_max_bytes: u64,
    pub queue_capacity: u32,
    pub orphan_batch_age_secs: u64,
    pub seed: u64,
    pub worker_id: String,
    pub retain_freed_memory: bool,
    pub metrics_addr: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSettings {
    pub run: String,
    pub max_steps: u64,
    pub initial_learning_rate: f64,
    pub num_epochs_per_decay: f64,
    pub learning_rate_decay_factor: f64,
    pub rmsprop_decay: f64,
    pub rmsprop_momentum: f64,
    pub rmsprop_epsilon: f64,
    pub examples_per_epoch: u64,
    pub log_every_steps: u64,
    pub checkpoint_every_steps: u64,
    pub keep_checkpoints: usize,
    pub batch_ack_wait_secs: u64,
    pub device: String,
    pub num_gpus: u32,
    pub pretrained_checkpoint: String,
    pub fine_tune: bool,
    pub tensorboard_dir: String,
    pub seed: i64,
    pub retain_freed_memory: bool,
    pub cudnn_benchmark: bool,
    pub metrics_addr: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSettings {
    pub eval_interval_secs: u64,
    pub num_examples: u64,
    pub batch_size: u32,
    pub round_up_to_batches: bool,
    pub run_once: bool,
    pub device: String,
    pub tensorboard_dir: String,
    pub retain_freed_memory: bool,
    pub cudnn_benchmark: bool,
    pub metrics_addr: String,
}

impl Settings {
    /// Loads the layers. `file` wins over `INCEPTION_CONFIG`; `overrides` are
    /// `("section.key", "value")` pairs applied last.
    pub fn load(file: Option<&Path>, overrides: &[(String, String)]) -> Result<Self, SettingsError> {
        let mut builder =
            config::Config::builder().add_source(config::File::from_str(DEFAULT_TOML, config::FileFormat::Toml));
        let env_file = std::env::var(CONFIG_FILE_ENV).ok().filter(|s| !s.is_empty());
        let file = file.map(|p| p.to_string_lossy().into_owned()).or(env_file);
        if let Some(path) = &file {
            // Parse the file alone first so a mistake in it is reported with its name.
            config::Config::builder()
                .add_source(config::File::new(path, config::FileFormat::Toml))
                .build()
                .map_err(|source| SettingsError::File { path: path.clone(), source })?;
            builder = builder.add_source(config::File::new(path, config::FileFormat::Toml));
        }
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX).prefix_separator("__").separator("__").try_parsing(true),
        );
        for (key, value) in overrides {
            builder = builder.set_override(key.as_str(), value.as_str())?;
        }
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
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

    // `!(x > 0.0)` on purpose: unlike `x <= 0.0`, it also refuses NaN.
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    fn validate(&self) -> Result<(), config::ConfigError> {
        let fail = |m: String| Err(config::ConfigError::Message(m));
        if self.preprocess.batch_size == 0 {
            return fail("preprocess.batch_size must be at least 1".into());
        }
        if !(self.preprocess.input_queue_memory_factor >= 0.0) {
            return fail("preprocess.input_queue_memory_factor must not be negative".into());
        }
        if self.preprocess.queue_capacity == 0 {
            return fail("preprocess.queue_capacity must be at least 1".into());
        }
        if self.model.image_size < 75 {
            return fail(format!(
                "model.image_size = {} is too small: Inception-v3 needs at least 75 pixels",
                self.model.image_size
            ));
        }
        if !(self.model.depth_multiplier > 0.0) {
            return fail("model.depth_multiplier must be positive".into());
        }
        if !(0.0..1.0).contains(&self.model.dropout) {
            return fail("model.dropout must be in [0, 1)".into());
        }
        if self.ingest.num_threads == 0
            || !self.ingest.train_shards.is_multiple_of(self.ingest.num_threads)
            || !self.ingest.validation_shards.is_multiple_of(self.ingest.num_threads)
        {
            return fail(format!(
                "ingest.train_shards ({}) and ingest.validation_shards ({}) must be multiples of ingest.num_threads ({})",
                self.ingest.train_shards, self.ingest.validation_shards, self.ingest.num_threads
            ));
        }
        if self.ingest.shard_max_images == 0
            || !(self.ingest.poll_interval_secs > 0.0)
            || !(self.ingest.shard_max_age_secs >= 0.0)
        {
            return fail("ingest.shard_max_images must be at least 1, ingest.poll_interval_secs positive, ingest.shard_max_age_secs not negative".into());
        }
        if !["markers", "decode"].contains(&self.ingest.jpeg_check.as_str()) {
            return fail(format!("ingest.jpeg_check = {:?}: use \"markers\" or \"decode\"", self.ingest.jpeg_check));
        }
        if !["train", "validation"].contains(&self.ingest.incoming_split.as_str()) {
            return fail(format!(
                "ingest.incoming_split = {:?}: use \"train\" or \"validation\"",
                self.ingest.incoming_split
            ));
        }
        if self.train.num_gpus == 0 || !self.preprocess.batch_size.is_multiple_of(self.train.num_gpus) {
            return fail(format!(
                "preprocess.batch_size ({}) must be a multiple of train.num_gpus ({})",
                self.preprocess.batch_size, self.train.num_gpus
            ));
        }
        if self.eval.batch_size == 0 {
            return fail("eval.batch_size must be at least 1".into());
        }
        if self.train.checkpoint_every_steps == 0 || self.train.log_every_steps == 0 {
            return fail("train.checkpoint_every_steps and train.log_every_steps must be at least 1".into());
        }
        let n = &self.nats;
        let methods = [!n.user.is_empty(), n.token.is_set(), n.nkey_seed.is_set(), !n.credentials_file.is_empty()];
        if methods.iter().filter(|m| **m).count() > 1 {
            return fail("nats: set only one of user (with password), token, nkey_seed and credentials_file".into());
        }
        if n.password.is_set() && n.user.is_empty() {
            return fail("nats.password is set but nats.user is not".into());
        }
        if n.tls_cert_file.is_empty() != n.tls_key_file.is_empty() {
            return fail(
                "nats.tls_cert_file and nats.tls_key_file go together (client certificate and its key)".into(),
            );
        }
        if self.store.s3_secret_access_key.is_set() && self.store.s3_access_key_id.is_empty() {
            return fail("store.s3_secret_access_key is set but store.s3_access_key_id is not".into());
        }
        if self.nats.subject_prefix.is_empty()
            || !self.nats.subject_prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return fail("nats.subject_prefix must be non-empty and use only [A-Za-z0-9_-]".into());
        }
        if !self.preprocess.worker_id.is_empty() && !is_safe_token(&self.preprocess.worker_id) {
            return fail(format!(
                "preprocess.worker_id = {:?}: use only letters, digits, '_' and '-' (it becomes part of object keys)",
                self.preprocess.worker_id
            ));
        }
        for (what, name) in [("dataset.name", &self.dataset.name), ("train.run", &self.train.run)] {
            if !is_safe_token(name) {
                return fail(format!(
                    "{what} = {name:?}: use only letters, digits, '_' and '-' (it becomes a path and a subject)"
                ));
            }
        }
        Ok(())
    }
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
        assert_eq!(s.preprocess.batch_size, 32);
        assert_eq!(s.train.initial_learning_rate, 0.1);
        assert_eq!(s.train.learning_rate_decay_factor, 0.16);
        assert_eq!(s.ingest.train_shards, 2);
        assert_eq!(s.eval.eval_interval_secs, 300);
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
    fn a_bad_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.toml");
        std::fs::write(&path, "[train\nmax_steps = ").unwrap();
        let err = Settings::load(Some(&path), &[]).unwrap_err().to_string();
        assert!(err.contains("broken.toml"), "{err}");
    }

    #[test]
    fn invalid_values_are_refused() {
        let err = Settings::load(None, &[("ingest.train_shards".into(), "3".into())]).unwrap_err().to_string();
        assert!(err.contains("multiples of ingest.num_threads"), "{err}");
        let err = Settings::load(None, &[("dataset.name".into(), "../etc".into())]).unwrap_err().to_string();
        assert!(err.contains("dataset.name"), "{err}");
    }
}
