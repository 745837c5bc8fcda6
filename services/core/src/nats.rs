//! NATS and JetStream: connecting with retries, the pipeline's streams and
//! subjects, and publishing that waits for the server's acknowledgement.
//!
//! Streams (names upper-case the subject prefix):
//! * `<P>_SHARDS`      `<p>.shards.<dataset>.<split>`  limits retention: history for late joiners
//! * `<P>_BATCHES`     `<p>.batches.<dataset>`         work queue, `max_messages` = queue
//!   capacity, `discard: new`: a full queue refuses publishes, which is the back-pressure
//! * `<P>_CHECKPOINTS` `<p>.checkpoints.<run>`         limits retention
//! * `<P>_EVALS`       `<p>.evals.<run>`               limits retention
//! * `<P>_PROMOTIONS`  `<p>.promotions.<run>`          limits retention
//!
//! Every stream is bounded ([`StreamBounds`], the `nats.stream_*` settings),
//! so that a flood of messages cannot grow one without limit: the limits
//! streams drop their oldest messages first, and a message larger than
//! `nats.max_message_bytes` is refused by the server. Bounds are applied to
//! streams that exist already, too.

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use std::time::Duration;

use crate::backoff::Backoff;
use crate::settings::NatsSettings;
use crate::shutdown::CancellationToken;

/// Why a NATS or JetStream operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// Shutdown was requested before NATS could be reached.
    #[error("stopped while waiting for NATS")]
    Cancelled,
    /// A stream could not be got or created.
    #[error("JetStream stream {stream}: {message}")]
    Stream {
        /// Name of the stream.
        stream: String,
        /// Why, as the client reports it.
        message: String,
    },
    /// A consumer could not be created or read from.
    #[error("JetStream consumer {consumer}: {message}")]
    Consumer {
        /// Which consumer: its name, or what it reads.
        consumer: String,
        /// Why, as the client reports it.
        message: String,
    },
    /// Any other failed request; the reason.
    #[error("NATS request failed: {0}")]
    Other(String),
    /// The NATS settings are unusable (credentials, TLS files); what and why.
    #[error("NATS settings: {0}")]
    Config(String),
    /// A one-shot command gave up on an unreachable NATS
    /// (`nats.one_shot_connect_timeout`).
    #[error(
        "NATS at {url} was not reachable for {waited:?} ({reason}); start one with `nats-server -js` \
         (or run `make demo`, which starts its own), point nats.url at a running one, or raise \
         nats.one_shot_connect_timeout"
    )]
    Unreachable {
        /// The URL, credentials removed.
        url: String,
        /// How long it was tried.
        waited: Duration,
        /// The last connection error.
        reason: String,
    },
}

impl NatsError {
    /// Whether the error is in the settings (exit status 2), not in the world.
    pub fn is_configuration(&self) -> bool {
        matches!(self, NatsError::Config(_))
    }
}

/// Subject and stream names of one pipeline (one `subject_prefix`).
#[derive(Debug, Clone)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    /// Names under `prefix` (the `nats.subject_prefix` setting).
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_string() }
    }
    /// `<p>.shards.<dataset>.<split>`: announcements of new shards.
    pub fn shards(&self, dataset: &str, split: &str) -> String {
        format!("{}.shards.{dataset}.{split}", self.prefix)
    }
    /// `<p>.batches.<dataset>`: claim checks of queued batches.
    pub fn batches(&self, dataset: &str) -> String {
        format!("{}.batches.{dataset}", self.prefix)
    }
    /// `<p>.checkpoints.<run>`: announcements of new checkpoints.
    pub fn checkpoints(&self, run: &str) -> String {
        format!("{}.checkpoints.{run}", self.prefix)
    }
    /// `<p>.evals.<run>`: evaluation results.
    pub fn evals(&self, run: &str) -> String {
        format!("{}.evals.{run}", self.prefix)
    }
    /// `<p>.promotions.<run>`: checkpoints promoted for serving.
    pub fn promotions(&self, run: &str) -> String {
        format!("{}.promotions.{run}", self.prefix)
    }
    /// `<P>_<kind>`: the prefix upper-cased, `-` as `_`.
    pub fn stream_name(&self, kind: &str) -> String {
        format!("{}_{}", self.prefix.to_uppercase().replace('-', "_"), kind)
    }
}

/// Tries of [`Streams::ensure`]: 0.2 + 0.4 + … + 5 s ≈ half a minute.
const ENSURE_ATTEMPTS: u32 = 9;

/// Largest control message (announcement, claim check) a service accepts.
/// Real ones are a few hundred bytes; NATS itself refuses more than its
/// `max_payload` (1 MiB by default).
pub const MAX_CONTROL_MESSAGE_BYTES: usize = 64 * 1024;

/// Why a control message was refused; its text is fit for a log line.
#[derive(Debug, thiserror::Error)]
pub enum ControlMessageError {
    /// Larger than [`MAX_CONTROL_MESSAGE_BYTES`]: not decoded at all.
    #[error("{bytes} bytes is more than a {kind} may have ({MAX_CONTROL_MESSAGE_BYTES})")]
    TooLarge {
        /// The message type.
        kind: &'static str,
        /// The payload's size.
        bytes: usize,
    },
    /// Not a valid protobuf of its type.
    #[error("malformed {kind}: {source}")]
    Malformed {
        /// The message type.
        kind: &'static str,
        /// What protobuf decoding said.
        source: inception_proto::prost::DecodeError,
    },
}

/// Decodes a control message, refusing oversized and malformed ones (the
/// caller counts and skips).
pub fn decode_control<M: inception_proto::Message + Default>(payload: &[u8]) -> Result<M, ControlMessageError> {
    let kind = std::any::type_name::<M>().rsplit("::").next().unwrap_or("message");
    if payload.len() > MAX_CONTROL_MESSAGE_BYTES {
        return Err(ControlMessageError::TooLarge { kind, bytes: payload.len() });
    }
    M::decode(payload).map_err(|source| ControlMessageError::Malformed { kind, source })
}

/// Client options from the settings: name, authentication, TLS, and a log
/// line for every connection event (disconnects, reconnects).
pub async fn connect_options(
    settings: &NatsSettings,
    client_name: &str,
) -> Result<async_nats::ConnectOptions, NatsError> {
    // Several crates bring rustls with different crypto back-ends; pick one
    // for the process (an error only means one is installed already).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut options = async_nats::ConnectOptions::new()
        .name(client_name)
        .connection_timeout(Duration::from_secs(5))
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("NATS connection (re-)established"),
                async_nats::Event::Disconnected => tracing::warn!("NATS connection lost; reconnecting"),
                async_nats::Event::Closed => tracing::info!("NATS connection closed"),
                other => tracing::warn!("NATS: {other}"),
            }
        });
    let (_, from_url) = settings.split_url_credentials();
    if !settings.user.is_empty() {
        options = options.user_and_password(settings.user.clone(), settings.password.expose().to_string());
    } else if let (Some(user), false) = (&from_url, settings.token.is_set() || settings.nkey_seed.is_set()) {
        // nats://user:password@host or nats://token@host, as NATS URLs allow.
        options = match &user.1 {
            Some(password) => options.user_and_password(user.0.clone(), password.clone()),
            None => options.token(user.0.clone()),
        };
    } else if settings.token.is_set() {
        options = options.token(settings.token.expose().to_string());
    } else if settings.nkey_seed.is_set() {
        if nkeys::KeyPair::from_seed(settings.nkey_seed.expose()).is_err() {
            return Err(NatsError::Config("nats.nkey_seed is not a valid nkey seed".into()));
        }
        options = options.nkey(settings.nkey_seed.expose().to_string());
    } else if !settings.credentials_file.is_empty() {
        options = options
            .credentials_file(&settings.credentials_file)
            .await
            .map_err(|e| NatsError::Config(format!("nats.credentials_file {}: {e}", settings.credentials_file)))?;
    }
    let readable = |what: &str, path: &str| match std::fs::metadata(path) {
        Ok(_) => Ok(std::path::PathBuf::from(path)),
        Err(e) => Err(NatsError::Config(format!("nats.{what} {path}: {e}"))),
    };
    if !settings.tls_ca_file.is_empty() {
        options = options.add_root_certificates(readable("tls_ca_file", &settings.tls_ca_file)?);
    }
    if !settings.tls_cert_file.is_empty() {
        options = options.add_client_certificate(
            readable("tls_cert_file", &settings.tls_cert_file)?,
            readable("tls_key_file", &settings.tls_key_file)?,
        );
    }
    if settings.tls_required {
        options = options.require_tls(true);
    }
    Ok(options)
}

/// Connects, retrying with exponential back-off (logging each failure with the
/// URL, credentials removed, and reason) until connected or `shutdown`
/// fires. Never panics. Once connected, the client reconnects by itself.
pub async fn connect(
    settings: &NatsSettings,
    client_name: &str,
    shutdown: &CancellationToken,
) -> Result<async_nats::Client, NatsError> {
    connect_within(settings, client_name, shutdown, None).await
}

/// As [`connect`], but gives up after `limit` (when given) with
/// [`NatsError::Unreachable`], whose message says how to start a server:
/// for one-shot commands, which should not hang for ever. A malformed URL
/// or unusable credentials are [`NatsError::Config`] at once, never retried.
pub async fn connect_within(
    settings: &NatsSettings,
    client_name: &str,
    shutdown: &CancellationToken,
    limit: Option<Duration>,
) -> Result<async_nats::Client, NatsError> {
    let mut backoff = Backoff::new(
        settings.connect_retry.max(Duration::from_millis(50)),
        settings.connect_retry_max.max(Duration::from_millis(50)),
    );
    let url = settings.url_for_logs();
    let addrs = server_addrs(settings)?;
    let started = std::time::Instant::now();
    loop {
        let options = connect_options(settings, client_name).await?;
        let reason = match options.connect(addrs.as_slice()).await {
            Ok(client) => {
                tracing::info!(url = %url, "connected to NATS");
                return Ok(client);
            }
            Err(e) => e.to_string(),
        };
        let delay = backoff.delay();
        if let Some(limit) = limit {
            let waited = started.elapsed();
            if waited + delay > limit {
                return Err(NatsError::Unreachable { url, waited: round_to_tenths(waited), reason });
            }
            let left = limit.saturating_sub(waited).as_secs_f64();
            tracing::error!(
                "cannot reach NATS at {url}: {reason}; retrying in {:.1}s (giving up in {left:.0}s; \
                 start a server with `nats-server -js`)",
                delay.as_secs_f64()
            );
        } else {
            tracing::error!("cannot reach NATS at {url}: {reason}; retrying in {:.1}s", delay.as_secs_f64());
        }
        if !backoff.wait(shutdown).await {
            return Err(NatsError::Cancelled);
        }
    }
}

/// The server addresses of `nats.url`; a malformed one is a configuration
/// error naming the setting (never printed with its credentials).
fn server_addrs(settings: &NatsSettings) -> Result<Vec<async_nats::ServerAddr>, NatsError> {
    let urls = settings.server_urls();
    if urls.is_empty() {
        return Err(NatsError::Config("nats.url is empty".into()));
    }
    urls.iter()
        .map(|u| {
            u.parse::<async_nats::ServerAddr>()
                .map_err(|e| NatsError::Config(format!("nats.url = {:?}: {e}", settings.url_for_logs())))
        })
        .collect()
}

/// A duration shown to a tenth of a second, for messages.
fn round_to_tenths(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis().div_ceil(100) as u64 * 100)
}

/// The pipeline's streams, created if missing.
#[derive(Clone)]
pub struct Streams {
    /// Subject and stream names.
    pub subjects: Subjects,
    /// The client's JetStream context.
    pub context: jetstream::Context,
    /// What each stream may hold.
    bounds: StreamBounds,
}

/// Bounds of the pipeline's streams (the `nats.stream_*` settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamBounds {
    /// Most messages a limits stream holds (SHARDS, CHECKPOINTS, EVALS).
    pub max_messages: i64,
    /// Most bytes a limits stream holds.
    pub max_bytes: i64,
    /// Oldest message a limits stream keeps; zero: no age limit.
    pub max_age: Duration,
    /// Largest message any stream accepts.
    pub max_message_bytes: i32,
}

impl Default for StreamBounds {
    fn default() -> Self {
        Self { max_messages: 1_000_000, max_bytes: 128 << 20, max_age: Duration::ZERO, max_message_bytes: 1 << 20 }
    }
}

impl StreamBounds {
    /// The bounds the settings give (validated at start-up to fit).
    pub fn from_settings(settings: &NatsSettings) -> Self {
        Self {
            max_messages: i64::try_from(settings.stream_max_messages).unwrap_or(i64::MAX),
            max_bytes: i64::try_from(settings.stream_max_bytes).unwrap_or(i64::MAX),
            max_age: settings.stream_max_age,
            max_message_bytes: i32::try_from(settings.max_message_bytes).unwrap_or(i32::MAX),
        }
    }

    /// Whether `config` carries these bounds (for a limits stream).
    fn hold_for(&self, config: &stream::Config) -> bool {
        config.max_messages == self.max_messages
            && config.max_bytes == self.max_bytes
            && config.max_age == self.max_age
            && config.max_message_size == self.max_message_bytes
            && config.discard == stream::DiscardPolicy::Old
    }

    fn apply(&self, config: &mut stream::Config) {
        config.max_messages = self.max_messages;
        config.max_bytes = self.max_bytes;
        config.max_age = self.max_age;
        config.max_message_size = self.max_message_bytes;
        config.discard = stream::DiscardPolicy::Old;
        // JetStream refuses a duplicate window longer than the age limit.
        if !self.max_age.is_zero() && config.duplicate_window > self.max_age {
            config.duplicate_window = self.max_age;
        }
    }
}

/// Why [`Streams::ensure`] gave up.
enum EnsureError {
    /// The server has no room for the stream's storage reservation.
    NoRoom(String),
    /// Anything else, after the retries.
    Failed(String),
}

impl EnsureError {
    fn into_nats(self, stream: &str) -> NatsError {
        let (EnsureError::NoRoom(message) | EnsureError::Failed(message)) = self;
        NatsError::Stream { stream: stream.to_string(), message }
    }
}

/// Whether JetStream refused a stream for want of storage to reserve.
fn is_no_room(error: &jetstream::context::CreateStreamError) -> bool {
    use jetstream::context::CreateStreamErrorKind;
    use jetstream::ErrorCode;
    match error.kind() {
        CreateStreamErrorKind::JetStream(e) => matches!(
            e.error_code(),
            ErrorCode::STORAGE_RESOURCES_EXCEEDED
                | ErrorCode::INSUFFICIENT_RESOURCES
                | ErrorCode::ACCOUNT_RESOURCES_EXCEEDED
        ),
        _ => false,
    }
}

fn warn_no_room(stream: &str, max_bytes: i64, reason: &str) {
    tracing::warn!(
        "JetStream stream {stream}: the server cannot reserve nats.stream_max_bytes = {max_bytes} bytes for it \
         ({reason}); it goes without a byte bound, still bounded by nats.stream_max_messages and \
         nats.max_message_bytes (free disk space for JetStream, or lower nats.stream_max_bytes)"
    );
}

impl Streams {
    /// The streams of the pipeline under `prefix`, with the default bounds;
    /// none is created until it is asked for.
    pub fn new(client: async_nats::Client, prefix: &str) -> Self {
        Self { subjects: Subjects::new(prefix), context: jetstream::new(client), bounds: StreamBounds::default() }
    }

    /// The same streams with other bounds.
    pub fn with_bounds(mut self, bounds: StreamBounds) -> Self {
        self.bounds = bounds;
        self
    }

    /// Gets or creates a limits stream, and bounds it if it was made
    /// without these bounds (by an older version, or other settings). A
    /// stream whose bounds cannot be changed is used as it is, with a warning.
    ///
    /// JetStream reserves a stream's `max_bytes` from the server's storage
    /// (75 % of the free disk unless `max_file_store` says otherwise) and
    /// refuses a stream it cannot reserve for. A service must not stop over
    /// that: the stream is then made (or kept) without a byte bound, still
    /// bounded by `nats.stream_max_messages` and `nats.max_message_bytes`,
    /// with a warning naming the setting.
    async fn ensure_bounded(&self, config: stream::Config) -> Result<stream::Stream, NatsError> {
        let name = config.name.clone();
        let stream = match self.ensure(config.clone()).await {
            Err(EnsureError::NoRoom(reason)) if config.max_bytes > 0 => {
                warn_no_room(&name, config.max_bytes, &reason);
                let unreserved = stream::Config { max_bytes: -1, ..config };
                return self.ensure(unreserved).await.map_err(|e| e.into_nats(&name));
            }
            other => other.map_err(|e| e.into_nats(&name))?,
        };
        let current = stream.cached_info().config.clone();
        if self.bounds.hold_for(&current) {
            return Ok(stream);
        }
        let mut bounded = current.clone();
        self.bounds.apply(&mut bounded);
        let mut updated = self.context.update_stream(&bounded).await;
        if let Err(e) = &updated {
            if is_no_room(e) && bounded.max_bytes != current.max_bytes {
                warn_no_room(&name, bounded.max_bytes, &e.to_string());
                bounded.max_bytes = current.max_bytes;
                updated = self.context.update_stream(&bounded).await;
            }
        }
        match updated {
            Ok(_) => {
                tracing::info!("JetStream stream {name}: bounds set to {:?}", self.bounds);
                self.context
                    .get_stream(&name)
                    .await
                    .map_err(|e| NatsError::Stream { stream: name, message: e.to_string() })
            }
            Err(e) => {
                tracing::warn!("JetStream stream {name}: cannot set its bounds ({e}); using it as it is");
                Ok(stream)
            }
        }
    }

    /// Gets or creates a stream. JetStream may be briefly unavailable (a
    /// server restarting, its stream leader not elected yet): retried for
    /// about half a minute before the error is returned. A server without
    /// room for the stream's reservation is not retried.
    async fn ensure(&self, config: stream::Config) -> Result<stream::Stream, EnsureError> {
        let name = config.name.clone();
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut attempt = 1;
        loop {
            match self.context.get_or_create_stream(config.clone()).await {
                Ok(stream) => return Ok(stream),
                Err(e) if is_no_room(&e) => return Err(EnsureError::NoRoom(e.to_string())),
                Err(e) if attempt < ENSURE_ATTEMPTS => {
                    tracing::warn!(
                        "JetStream stream {name} not available ({e}); retrying in {:.1}s",
                        backoff.delay().as_secs_f64()
                    );
                    backoff.sleep().await;
                    attempt += 1;
                }
                Err(e) => return Err(EnsureError::Failed(e.to_string())),
            }
        }
    }

    fn limits(&self, kind: &str, what: &str) -> stream::Config {
        let mut config = stream::Config {
            name: self.subjects.stream_name(kind),
            subjects: vec![format!("{}.{what}.>", self.subjects.prefix)],
            retention: stream::RetentionPolicy::Limits,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        };
        self.bounds.apply(&mut config);
        config
    }

    /// Gets or creates the shard announcements (limits retention: history for late joiners).
    pub async fn shards(&self) -> Result<stream::Stream, NatsError> {
        self.ensure_bounded(self.limits("SHARDS", "shards")).await
    }

    /// Gets or creates the checkpoint announcements (limits retention).
    pub async fn checkpoints(&self) -> Result<stream::Stream, NatsError> {
        self.ensure_bounded(self.limits("CHECKPOINTS", "checkpoints")).await
    }

    /// Gets or creates the evaluation results (limits retention).
    pub async fn evals(&self) -> Result<stream::Stream, NatsError> {
        self.ensure_bounded(self.limits("EVALS", "evals")).await
    }

    /// Gets or creates the promotions (limits retention: a server started
    /// later reads the latest one).
    pub async fn promotions(&self) -> Result<stream::Stream, NatsError> {
        self.ensure_bounded(self.limits("PROMOTIONS", "promotions")).await
    }

    /// The bounded batch queue. `capacity` only applies when the stream is new.
    pub async fn batches(&self, capacity: u32) -> Result<stream::Stream, NatsError> {
        self.ensure(stream::Config {
            name: self.subjects.stream_name("BATCHES"),
            subjects: vec![format!("{}.batches.>", self.subjects.prefix)],
            retention: stream::RetentionPolicy::WorkQueue,
            max_messages: i64::from(capacity),
            max_message_size: self.bounds.max_message_bytes,
            discard: stream::DiscardPolicy::New,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(|e| e.into_nats(&self.subjects.stream_name("BATCHES")))
    }

    /// The trainer's durable pull consumer of `dataset`'s batches: explicit
    /// acknowledgement, so a batch whose consumer dies before acknowledging
    /// it is delivered again `ack_wait` after its delivery (at-least-once).
    pub async fn batch_consumer(
        &self,
        stream: &stream::Stream,
        dataset: &str,
        ack_wait: Duration,
    ) -> Result<jetstream::consumer::PullConsumer, NatsError> {
        use async_nats::jetstream::consumer::{pull, AckPolicy};
        stream
            .get_or_create_consumer(
                "trainer",
                pull::Config {
                    durable_name: Some("trainer".into()),
                    filter_subject: self.subjects.batches(dataset),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| NatsError::Consumer { consumer: "trainer".into(), message: e.to_string() })
    }

    /// Every message now in `stream` on `subject`, oldest first (an
    /// ephemeral consumer reads the history and goes away).
    pub async fn history(&self, stream: &stream::Stream, subject: &str) -> Result<Vec<Bytes>, NatsError> {
        use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
        use futures::StreamExt;
        let err = |e: String| NatsError::Consumer { consumer: format!("history of {subject}"), message: e };
        let consumer = stream
            .create_consumer(pull::Config {
                filter_subject: subject.to_string(),
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .map_err(|e| err(e.to_string()))?;
        let total = consumer.get_info().await.map_err(|e| err(e.to_string()))?.num_pending as usize;
        let mut out = Vec::with_capacity(total);
        while out.len() < total {
            let mut batch = consumer
                .fetch()
                .max_messages((total - out.len()).min(256))
                .expires(Duration::from_secs(2))
                .messages()
                .await
                .map_err(|e| err(e.to_string()))?;
            let before = out.len();
            while let Some(m) = batch.next().await {
                out.push(m.map_err(|e| err(e.to_string()))?.payload.clone());
            }
            if out.len() == before {
                break; // messages removed meanwhile (limits): what we have is the history
            }
        }
        Ok(out)
    }

    /// Publishes and waits for JetStream's acknowledgement, retrying (with
    /// back-off) while the stream is full or NATS is unavailable, until
    /// acknowledged or `shutdown` fires. `message_id` makes retries idempotent.
    /// Returns the number of times a full stream refused the message.
    pub async fn publish_acked(
        &self,
        subject: &str,
        payload: Bytes,
        message_id: &str,
        shutdown: &CancellationToken,
    ) -> Result<u64, NatsError> {
        let mut refusals = 0u64;
        let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
        loop {
            let publish = jetstream::message::PublishMessage::build().payload(payload.clone()).message_id(message_id);
            let outcome = match self.context.send_publish(subject.to_string(), publish).await {
                Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match outcome {
                Ok(()) => return Ok(refusals),
                Err(e) if is_full(&e) => {
                    refusals += 1;
                    tracing::debug!(subject, "queue full; waiting");
                }
                Err(e) => tracing::warn!("publish to {subject} not acknowledged ({e}); retrying"),
            }
            if !backoff.wait(shutdown).await {
                return Err(NatsError::Cancelled);
            }
        }
    }
}

/// JetStream's answer when a `discard: new` stream is at `max_messages` (10077).
fn is_full(error: &str) -> bool {
    error.contains("maximum messages") || error.contains("10077")
}

#[cfg(test)]
mod control_message_tests {
    use super::*;
    use inception_proto::pipeline::ShardReady;
    use inception_proto::Message;

    #[test]
    fn oversized_and_malformed_messages_are_refused_with_a_reason() {
        let good = ShardReady { uri: "datasets/flowers/train-00000-of-00002".into(), records: 3, ..Default::default() };
        assert_eq!(decode_control::<ShardReady>(&good.encode_to_vec()).unwrap(), good);
        let err = decode_control::<ShardReady>(&[0xff, 0xff, 0xff]).unwrap_err().to_string();
        assert!(err.starts_with("malformed ShardReady"), "{err}");
        let huge = ShardReady { labels: vec!["x".repeat(1000); 100], ..good };
        let err = decode_control::<ShardReady>(&huge.encode_to_vec()).unwrap_err().to_string();
        assert!(err.contains("is more than a ShardReady may have (65536)"), "{err}");
    }
}
