//! TensorBoard event files (`events.out.tfevents.<time>.<host>`): TFRecord
//! framing around `tensorflow.Event` protos, scalars as `simple_value`
//! summaries, as `tf.summary.FileWriter` writes them, and text (markdown) as
//! the text plugin's string tensors, as `tf.summary.text` writes them.

use inception_proto::tensorflow::{
    event, summary, summary_metadata, DataClass, DataType, Event, Summary, SummaryMetadata, TensorProto,
    TensorShapeProto,
};
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

    fn summary(&mut self, step: u64, value: Vec<summary::Value>) -> std::io::Result<()> {
        self.write(Event { wall_time: now(), step: step as i64, what: Some(event::What::Summary(Summary { value })) })
    }

    /// Appends scalars (tag, value) at `step`.
    pub fn scalars(&mut self, step: u64, values: &[(&str, f64)]) -> std::io::Result<()> {
        let value = values
            .iter()
            .map(|(tag, v)| summary::Value {
                tag: (*tag).to_string(),
                node_name: String::new(),
                metadata: None,
                value: Some(summary::value::Value::SimpleValue(*v as f32)),
            })
            .collect();
        self.summary(step, value)
    }

    /// Appends a text summary at `step`: `markdown` as a scalar string
    /// tensor for TensorBoard's text plugin (its Text tab renders markdown,
    /// tables included).
    pub fn text(&mut self, step: u64, tag: &str, markdown: &str) -> std::io::Result<()> {
        self.summary(step, vec![text_value(tag, markdown)])
    }
}

/// A text plugin value: metadata `plugin_name = "text"` (its content, an
/// empty `TextPluginData`, is version 0) and a rank-0 `DT_STRING` tensor.
fn text_value(tag: &str, markdown: &str) -> summary::Value {
    let metadata = SummaryMetadata {
        plugin_data: Some(summary_metadata::PluginData { plugin_name: "text".into(), content: Vec::new() }),
        display_name: tag.to_string(),
        summary_description: String::new(),
        data_class: DataClass::Tensor as i32,
    };
    let tensor = TensorProto {
        dtype: DataType::DtString as i32,
        tensor_shape: Some(TensorShapeProto { dim: Vec::new(), unknown_rank: false }),
        version_number: 0,
        tensor_content: Vec::new(),
        string_val: vec![markdown.as_bytes().to_vec()],
    };
    summary::Value {
        tag: tag.to_string(),
        node_name: String::new(),
        metadata: Some(metadata),
        value: Some(summary::value::Value::Tensor(tensor)),
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
        self.with(|w| w.scalars(step, values));
    }

    /// Appends a text (markdown) summary at `step`; after a failed write,
    /// warns once and writes no more.
    pub fn text(&mut self, step: u64, tag: &str, markdown: &str) {
        self.with(|w| w.text(step, tag, markdown));
    }

    fn with(&mut self, write: impl FnOnce(&mut EventWriter) -> std::io::Result<()>) {
        if let Some(w) = &mut self.0 {
            if let Err(e) = write(w) {
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

    #[test]
    fn text_is_a_string_tensor_for_the_text_plugin() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        w.text(7, "confusion_matrix", "| a | b |\n|---|---|\n| 1 | 2 |").unwrap();
        let bytes = std::fs::read(w.path()).unwrap();
        let events: Vec<Event> = tfrecord::records(&bytes).map(|r| Event::decode(r.unwrap()).unwrap()).collect();
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].step, 7);
        let Some(event::What::Summary(s)) = &events[1].what else { panic!("{:?}", events[1]) };
        let value = &s.value[0];
        assert_eq!(value.tag, "confusion_matrix");
        let plugin = value.metadata.as_ref().and_then(|m| m.plugin_data.as_ref()).expect("plugin data");
        assert_eq!(plugin.plugin_name, "text");
        let Some(summary::value::Value::Tensor(t)) = &value.value else { panic!("{value:?}") };
        assert_eq!(t.dtype, DataType::DtString as i32);
        assert_eq!(t.dtype, 7, "TensorFlow's DT_STRING");
        assert!(t.tensor_shape.as_ref().is_some_and(|s| s.dim.is_empty()), "a scalar");
        assert_eq!(t.string_val, vec![b"| a | b |\n|---|---|\n| 1 | 2 |".to_vec()]);
    }
}
