//! Flags every service binary shares (the start-up they share is [`crate::bootstrap`]).

use std::path::PathBuf;

use crate::settings::{Settings, SettingsError};

/// Flags every service binary shares: the configuration file and overrides.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Configuration file layered over config/default.toml (also INCEPTION_CONFIG).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override one setting, e.g. `--set train.max_steps=100` (repeatable; wins over everything).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE", value_parser = parse_key_value)]
    pub set: Vec<(String, String)>,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?} is not SECTION.KEY=VALUE"))?;
    if !k.contains('.') {
        return Err(format!("{k:?} must name a section and a key, e.g. train.max_steps"));
    }
    Ok((k.trim().to_string(), v.trim().to_string()))
}

impl CommonArgs {
    /// Loads settings; `extra` are flag-specific overrides applied before `--set`.
    pub fn settings(&self, extra: Vec<(String, String)>) -> Result<Settings, SettingsError> {
        let mut overrides = extra;
        overrides.extend(self.set.iter().cloned());
        Settings::load(self.config.as_deref(), &overrides)
    }
}

/// Adds an override when a flag was given.
pub fn flag<T: ToString>(overrides: &mut Vec<(String, String)>, key: &str, value: &Option<T>) {
    if let Some(v) = value {
        overrides.push((key.to_string(), v.to_string()));
    }
}

/// How log lines are written ([`crate::telemetry::init_logging_as`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; coloured only when stderr is a terminal.
    #[default]
    Plain,
    /// One JSON object per line (timestamp, level, fields, message), for log collectors.
    Json,
}

impl LogFormat {
    /// `INCEPTION_LOG_FORMAT` (`plain` or `json`); plain when unset or unknown.
    pub fn from_env() -> Self {
        match std::env::var(LOG_FORMAT_ENV) {
            Ok(v) if v.trim().eq_ignore_ascii_case("json") => LogFormat::Json,
            _ => LogFormat::Plain,
        }
    }
}

/// Environment variable that chooses the log format (`plain` or `json`).
pub const LOG_FORMAT_ENV: &str = "INCEPTION_LOG_FORMAT";

/// The service binaries' logging flag (kept out of [`CommonArgs`], which
/// other commands build by hand).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LogArgs {
    /// Log format: plain or json (also INCEPTION_LOG_FORMAT).
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
}

impl LogArgs {
    /// The flag's format, else `INCEPTION_LOG_FORMAT`'s.
    pub fn format(&self) -> LogFormat {
        self.log_format.unwrap_or_else(LogFormat::from_env)
    }
}
