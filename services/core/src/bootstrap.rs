//! The start-up every service main shares: settings, logs, signals, the
//! metrics and health endpoints, the store and NATS. It tells a shutdown
//! requested while waiting for NATS (not an error: the process exits 0) from
//! a configuration or start-up error (the process exits non-zero with a
//! message that names the setting).

use crate::cli::CommonArgs;
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
    /// Its `<section>.retain_freed_memory` setting and that setting's key,
    /// for the services whose steps free and reallocate large buffers.
    pub retain_freed_memory: Option<(SettingOf<bool>, &'static str)>,
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
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    /// The object store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The NATS settings are unusable (an unreachable server is retried, not an error).
    #[error(transparent)]
    Nats(NatsError),
}

/// Starts a service: logs, settings (flag `overrides` under `--set`), the
/// metrics endpoint, SIGTERM handling, the store, and a NATS connection
/// (retried until reachable). `Ok(None)`: shutdown was requested before NATS
/// could be reached; the caller returns without error.
pub async fn start(
    spec: &ServiceSpec,
    common: &CommonArgs,
    overrides: Vec<(String, String)>,
) -> Result<Option<Running>, BootstrapError> {
    telemetry::init_logging();
    let settings = common.settings(overrides)?;
    if let Some((setting, key)) = spec.retain_freed_memory {
        crate::memory::retain_freed_memory_if(setting(&settings), key);
    }
    let shutdown = shutdown::on_signals();
    let readiness = Readiness::default();
    telemetry::serve(spec.name, (spec.metrics_addr)(&settings), readiness.clone(), shutdown.clone()).await?;
    let store = Store::open(&settings.store)?;
    let client_name = format!("inception-{}", spec.name);
    let client = match nats::connect(&settings.nats, &client_name, &shutdown).await {
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
