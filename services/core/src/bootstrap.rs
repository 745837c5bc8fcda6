//! The start-up every service main shares: settings, logs, signals, the
//! metrics and health endpoints, the store and NATS. It tells a shutdown
//! requested while waiting for NATS (not an error: the process exits 0) from
//! a configuration error (exit status 2, with a message that names the
//! setting) and from other start-up errors (exit status 1): see [`exit`].
//!
//! One-shot commands ([`ServiceSpec::one_shot`]) differ from long-running
//! services in two ways: they give up on an unreachable NATS after
//! `nats.one_shot_connect_timeout` (a service retries without end), and they
//! serve metrics only when their `metrics_addr` was set explicitly, so that
//! two of them on one host do not fight over the port.

use std::process::ExitCode;

use crate::cli::{CommonArgs, LogArgs};
use crate::nats::{self, NatsError, StreamBounds, Streams};
use crate::settings::{Settings, SettingsError};
use crate::shutdown::{self, CancellationToken};
use crate::store::{Store, StoreError};
use crate::telemetry::{self, Readiness, TelemetryError};

/// Reads one setting (a section's field) from the settings.
pub type SettingOf<T> = for<'a> fn(&'a Settings) -> T;

/// What differs between the services' start-ups.
#[derive(Debug, Clone, Copy)]
pub struct ServiceSpec {
    /// `trainer`, `evaluator`, …: the metrics' service label; the NATS
    /// client is named `inception-<name>`.
    pub name: &'static str,
    /// Where its metrics and health endpoints listen (`<section>.metrics_addr`).
    pub metrics_addr: fn(&Settings) -> &str,
    /// The key of that setting (`ingest.metrics_addr`), for messages and to
    /// tell whether a one-shot run asked for it.
    pub metrics_addr_key: &'static str,
    /// Its `<section>.retain_freed_memory` setting and that setting's key,
    /// for the services whose steps free and reallocate large buffers.
    pub retain_freed_memory: Option<(SettingOf<bool>, &'static str)>,
    /// Whether this run is a one-shot command that exits when done (one-shot
    /// ingest, `--run-once`), given the settings.
    pub one_shot: fn(&Settings) -> bool,
}

/// A started service before NATS: settings, store, signals, endpoints.
pub struct Local {
    /// The loaded settings, overrides applied.
    pub settings: Settings,
    /// The opened object store.
    pub store: Store,
    /// Cancelled on SIGTERM or SIGINT.
    pub shutdown: CancellationToken,
    /// What `/readyz` reports; the service sets it once it can work.
    pub readiness: Readiness,
    /// Whether this run is one-shot ([`ServiceSpec::one_shot`]).
    pub one_shot: bool,
    /// The service's name (`inception-<name>` is its NATS client's).
    name: &'static str,
}

/// A started service's handles.
pub struct Running {
    /// The loaded settings, overrides applied.
    pub settings: Settings,
    /// The opened object store.
    pub store: Store,
    /// The connected NATS client (it reconnects by itself).
    pub client: async_nats::Client,
    /// The pipeline's JetStream streams under `nats.subject_prefix`.
    pub streams: Streams,
    /// Cancelled on SIGTERM or SIGINT.
    pub shutdown: CancellationToken,
    /// What `/readyz` reports; the service sets it once it can work.
    pub readiness: Readiness,
}

/// Why a service could not start.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// The settings did not load or are invalid.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The metrics and health endpoints could not start.
    #[error("{key}: {source}")]
    Telemetry {
        /// The setting of the address.
        key: &'static str,
        /// Why.
        source: TelemetryError,
    },
    /// The object store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The NATS settings are unusable, or a one-shot command gave up on an
    /// unreachable server (a service retries an unreachable one without end).
    #[error(transparent)]
    Nats(NatsError),
}

impl BootstrapError {
    /// Whether the error is in the configuration (exit status 2).
    pub fn is_configuration(&self) -> bool {
        match self {
            BootstrapError::Settings(_) => true,
            BootstrapError::Telemetry { source, .. } => source.is_configuration(),
            BootstrapError::Store(e) => matches!(e, StoreError::Url { .. }),
            BootstrapError::Nats(e) => e.is_configuration(),
        }
    }
}

/// The exit status of a configuration error: the same as a usage error of
/// the command line (clap's, and `inception`'s).
pub const EXIT_CONFIGURATION: u8 = 2;

/// Whether `error` (or any error it wraps) is a configuration error: an
/// invalid setting, a malformed NATS or store URL, an unusable credential
/// file, a metrics address that is not an address.
pub fn is_configuration_error(error: &anyhow::Error) -> bool {
    error.chain().any(|e| {
        if let Some(e) = e.downcast_ref::<BootstrapError>() {
            e.is_configuration()
        } else if let Some(e) = e.downcast_ref::<NatsError>() {
            e.is_configuration()
        } else {
            e.is::<SettingsError>()
        }
    })
}

/// What a service main returns: success, 2 for a configuration error, 1
/// for any other, each error printed with its causes (and logged).
pub fn exit(outcome: anyhow::Result<()>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if telemetry::logs_are_json() {
                tracing::error!("{e:#}");
            } else {
                eprintln!("Error: {e:?}");
            }
            if is_configuration_error(&e) {
                ExitCode::from(EXIT_CONFIGURATION)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Runs a service main's `future` on a new multi-threaded runtime.
pub fn block_on<T>(future: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    use anyhow::Context;
    tokio::runtime::Runtime::new().context("cannot start the async runtime")?.block_on(future)
}

/// Starts a service: logs, settings (flag `overrides` under `--set`), the
/// metrics endpoint, SIGTERM handling, the store, and a NATS connection
/// (retried until reachable, or for `nats.one_shot_connect_timeout` in a
/// one-shot run). `Ok(None)`: shutdown was requested before NATS could be
/// reached; the caller returns without error.
pub async fn start(
    spec: &ServiceSpec,
    common: &CommonArgs,
    logs: &LogArgs,
    overrides: Vec<(String, String)>,
) -> Result<Option<Running>, BootstrapError> {
    let local = start_local(spec, common, logs, overrides).await?;
    local.connect().await
}

/// The start-up without NATS: logs, settings, the metrics endpoint (in a
/// one-shot run only when its address was set explicitly), SIGTERM
/// handling and the store. [`Local::connect`] adds NATS.
pub async fn start_local(
    spec: &ServiceSpec,
    common: &CommonArgs,
    logs: &LogArgs,
    overrides: Vec<(String, String)>,
) -> Result<Local, BootstrapError> {
    telemetry::init_logging_as(logs.format());
    let settings = common.settings(overrides)?;
    if let Some((setting, key)) = spec.retain_freed_memory {
        crate::memory::retain_freed_memory_if(setting(&settings), key);
    }
    let shutdown = shutdown::on_signals();
    let readiness = Readiness::default();
    let one_shot = (spec.one_shot)(&settings);
    if one_shot && !settings.is_explicit(spec.metrics_addr_key) {
        tracing::debug!("one-shot run: no metrics endpoint ({} not set)", spec.metrics_addr_key);
    } else {
        telemetry::serve(spec.name, (spec.metrics_addr)(&settings), readiness.clone(), shutdown.clone())
            .await
            .map_err(|source| BootstrapError::Telemetry { key: spec.metrics_addr_key, source })?;
    }
    let store = Store::open(&settings.store)?;
    Ok(Local { settings, store, shutdown, readiness, one_shot, name: spec.name })
}

impl Local {
    /// Connects to NATS: retried until reachable, or until
    /// `nats.one_shot_connect_timeout` in a one-shot run. `Ok(None)`:
    /// shutdown was requested before NATS could be reached.
    pub async fn connect(self) -> Result<Option<Running>, BootstrapError> {
        let Local { settings, store, shutdown, readiness, one_shot, name } = self;
        let client_name = format!("inception-{name}");
        let limit = one_shot.then_some(settings.nats.one_shot_connect_timeout);
        let client = match nats::connect_within(&settings.nats, &client_name, &shutdown, limit).await {
            Ok(client) => client,
            Err(NatsError::Cancelled) => {
                tracing::info!("stopped before NATS was reachable");
                return Ok(None);
            }
            Err(e) => return Err(BootstrapError::Nats(e)),
        };
        let streams = Streams::new(client.clone(), &settings.nats.subject_prefix)
            .with_bounds(StreamBounds::from_settings(&settings.nats));
        Ok(Some(Running { settings, store, client, streams, shutdown, readiness }))
    }
}
