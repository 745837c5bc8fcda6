//! TensorBoard event files (`events.out.tfevents.<time>.<host>`): TFRecord
//! framing around `tensorflow.Event` protos, scalars as `simple_value`
//! summaries, as `tf.summary.FileWriter` writes them.

use inception_proto::tensorflow::{event, summary, Event, Summary};
use inception_proto::Message;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::tfrecord;

/// Appends events to one TensorBoard event file.
pub struct EventWriter {
    file: std::fs::File,
    path: PathBuf,
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

impl EventWriter {
    /// Creates a new event file in `dir` (created if missing).
    pub fn create(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "localhost".into());
        let name = format!("events.out.tfevents.{}.{}.{}", now() as u64, host.trim(), std::process::id());
        let path = dir.join(name);
        let file = std::fs::OpenOptions::new().create_new(true).append(true).open(&path)?;
        let mut writer = Self { file, path };
        writer.write(Event {
            wall_time: now(),
            step: 0,
            what: Some(event::What::FileVersion("brain.Event:2".into())),
        })?;
        Ok(writer)
    }

    /// The event file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&mut self, event: Event) -> std::io::Result<()> {
        let mut out = Vec::new();
        tfrecord::write_record(&mut out, &event.encode_to_vec());
        self.file.write_all(&out)?;
        self.file.flush()
    }

    /// Appends scalars (tag, value) at `step`.
    pub fn scalars(&mut self, step: u64, values: &[(&str, f64)]) -> std::io::Result<()> {
        let value = values
            .iter()
            .map(|(tag, v)| summary::Value {
                tag: (*tag).to_string(),
                node_name: String::new(),
                value: Some(summary::value::Value::SimpleValue(*v as f32)),
            })
            .collect();
        self.write(Event { wall_time: now(), step: step as i64, what: Some(event::What::Summary(Summary { value })) })
    }
}

/// An optional writer: scalars are dropped (with one warning) when the
/// directory is unset or unwritable, never stopping the service.
pub struct OptionalEvents(Option<EventWriter>);

impl OptionalEvents {
    /// A writer of an event file in `dir`; none when `dir` is empty, or
    /// (with a warning) when the file cannot be created there.
    pub fn open(dir: &str) -> Self {
        if dir.is_empty() {
            return Self(None);
        }
        match EventWriter::create(Path::new(dir)) {
            Ok(w) => {
                tracing::info!("TensorBoard events in {}", w.path().display());
                Self(Some(w))
            }
            Err(e) => {
                tracing::warn!("cannot write TensorBoard events in {dir}: {e}; continuing without");
                Self(None)
            }
        }
    }

    /// Appends scalars (tag, value) at `step`; after a failed write, warns
    /// once and writes no more.
    pub fn scalars(&mut self, step: u64, values: &[(&str, f64)]) {
        if let Some(w) = &mut self.0 {
            if let Err(e) = w.scalars(step, values) {
                tracing::warn!("TensorBoard events: {e}; no more will be written");
                self.0 = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_round_trip_through_the_event_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        w.scalars(10, &[("loss", 1.5), ("learning_rate", 0.1)]).unwrap();
        w.scalars(20, &[("loss", 0.75)]).unwrap();
        let name = w.path().file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("events.out.tfevents."), "{name}");
        let bytes = std::fs::read(w.path()).unwrap();
        let events: Vec<Event> = tfrecord::records(&bytes).map(|r| Event::decode(r.unwrap()).unwrap()).collect();
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].what, Some(event::What::FileVersion("brain.Event:2".into())));
        let Some(event::What::Summary(s)) = &events[2].what else { panic!("{:?}", events[2]) };
        assert_eq!(events[2].step, 20);
        assert_eq!(s.value[0].tag, "loss");
        assert_eq!(s.value[0].value, Some(summary::value::Value::SimpleValue(0.75)));
    }
}
