//! The run's training history in the store, so that `inception report` can
//! draw it after the trainer is gone: every logged step (loss, learning
//! rate, throughput, wall-clock time) and the settings the trainer read.
//!
//! Object stores cannot append, so the steps logged since the previous
//! checkpoint are written as one JSON-lines object
//! ([`keys::train_log`]) right after each checkpoint: a trainer that dies
//! loses the lines of the steps it also loses, and one that resumes from a
//! checkpoint writes after the lines of that checkpoint, never over them.
//! Nothing here can stop training: a failed write is logged, and its lines
//! go with the next one.

use bytes::Bytes;
use inception_core::{keys, Settings, Store};
use serde::{Deserialize, Deserializer, Serialize};

/// One logged step (a line of a [`keys::train_log`] object).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Global step after the update.
    pub step: u64,
    /// When the step ended, seconds since the Unix epoch.
    pub unix_seconds: f64,
    /// The total loss as logged: data loss plus the L2 term (NaN if not finite).
    #[serde(deserialize_with = "null_is_nan")]
    pub loss: f64,
    /// The learning rate of the step.
    #[serde(deserialize_with = "null_is_nan")]
    pub learning_rate: f64,
    /// Examples per second of the step.
    #[serde(deserialize_with = "null_is_nan")]
    pub examples_per_sec: f64,
}

/// JSON has no NaN or infinity: serde_json writes them as null.
fn null_is_nan<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// The settings the trainer read (`checkpoints/<run>/settings.json`),
/// written at each start: each section as its `Debug` text, which names
/// secrets as set or not, never their value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettingsRecord {
    /// When the trainer started, seconds since the Unix epoch.
    pub written_unix: i64,
    /// `(section, text)`, in the order of config/default.toml.
    pub sections: Vec<(String, String)>,
}

impl SettingsRecord {
    /// The sections that shape training.
    pub fn of(settings: &Settings) -> Self {
        let sections = vec![
            ("pipeline".to_string(), format!("{:#?}", settings.pipeline)),
            ("dataset".to_string(), format!("{:#?}", settings.dataset)),
            ("model".to_string(), format!("{:#?}", settings.model)),
            ("augment".to_string(), format!("{:#?}", settings.augment)),
            ("train".to_string(), format!("{:#?}", settings.train)),
        ];
        Self { written_unix: chrono::Utc::now().timestamp(), sections }
    }
}

/// Writes [`SettingsRecord::of`] `settings`; a failure is only logged.
pub async fn save_settings(store: &Store, settings: &Settings) {
    let key = keys::train_settings(&settings.pipeline.run);
    let json = serde_json::to_vec_pretty(&SettingsRecord::of(settings)).unwrap_or_default();
    if let Err(e) = store.put(&key, Bytes::from(json)).await {
        tracing::warn!("the run's settings are not recorded for its report: {e}");
    }
}

/// The steps logged since the last [`History::save`].
#[derive(Debug, Default)]
pub struct History {
    pending: Vec<StepRecord>,
}

impl History {
    /// Keeps `record` for the next save.
    pub fn push(&mut self, record: StepRecord) {
        self.pending.push(record);
    }

    /// Writes the pending lines as [`keys::train_log`] of their last step;
    /// on failure they are kept for the next save.
    pub async fn save(&mut self, store: &Store, run: &str) {
        let Some(last) = self.pending.last().map(|r| r.step) else { return };
        let key = keys::train_log(run, last);
        match store.put(&key, Bytes::from(to_json_lines(&self.pending))).await {
            Ok(()) => self.pending.clear(),
            Err(e) => tracing::warn!("training log lines not recorded yet (tried again at the next checkpoint): {e}"),
        }
    }
}

/// One JSON object per line.
pub fn to_json_lines(records: &[StepRecord]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        // Plain numbers always serialise.
        out.extend(serde_json::to_vec(r).unwrap_or_default());
        out.push(b'\n');
    }
    out
}

/// The records of a JSON-lines object, and how many lines were not one.
pub fn parse_json_lines(bytes: &[u8]) -> (Vec<StepRecord>, usize) {
    let mut bad = 0;
    let records = bytes
        .split(|&b| b == b'\n')
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
        .filter_map(|line| serde_json::from_slice(line).map_err(|_| bad += 1).ok())
        .collect();
    (records, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_non_finite_values_come_back_as_nan() {
        let records = vec![
            StepRecord { step: 1, unix_seconds: 10.5, loss: 2.5, learning_rate: 0.1, examples_per_sec: 30.0 },
            StepRecord { step: 10, unix_seconds: 12.0, loss: f64::NAN, learning_rate: 0.1, examples_per_sec: 1.0 },
        ];
        let mut bytes = to_json_lines(&records);
        bytes.extend(b"not json\n\n");
        let (back, bad) = parse_json_lines(&bytes);
        assert_eq!(bad, 1);
        assert_eq!(back[0], records[0]);
        assert!(back[1].loss.is_nan() && back[1].step == 10);
    }
}
