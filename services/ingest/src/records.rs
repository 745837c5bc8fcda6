//! The records tool behind `inception records verify|stats|inspect`:
//! counts records, checks every CRC (reporting the byte offset of bad
//! framing), histograms labels, and prints one example's features.

use inception_core::tfrecord::{self, TfRecordError};
use inception_proto::tensorflow::feature;
use std::collections::BTreeMap;

/// What a pass over a TFRecord file found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RecordStats {
    pub records: usize,
    /// Records that are not tf.Examples with a label (record index, reason).
    pub unreadable: Vec<(usize, String)>,
    /// label -> (text, count)
    pub labels: BTreeMap<i64, (String, usize)>,
    /// The framing error that ended the pass, if any.
    pub framing: Option<TfRecordError>,
}

pub fn stats(bytes: &[u8]) -> RecordStats {
    let mut out = RecordStats::default();
    for (i, record) in tfrecord::records(bytes).enumerate() {
        match record {
            Ok(data) => {
                out.records += 1;
                match inception_core::example::parse_image_example(data) {
                    Ok(p) => {
                        let entry = out.labels.entry(p.label).or_insert_with(|| (p.text.clone(), 0));
                        entry.1 += 1;
                    }
                    Err(e) => out.unreadable.push((i, e.to_string())),
                }
            }
            Err(e) => out.framing = Some(e),
        }
    }
    out
}

/// One record's features as `key: type = value` lines (bytes summarised).
pub fn inspect(bytes: &[u8], index: usize) -> Result<Vec<String>, String> {
    let data =
        tfrecord::records(bytes).nth(index).ok_or_else(|| format!("no record {index}"))?.map_err(|e| e.to_string())?;
    let example = inception_core::example::decode_example(data)
        .map_err(|e| format!("record {index} is not a usable tf.Example: {e}"))?;
    let features = example.features.map(|f| f.feature).unwrap_or_default();
    Ok(features
        .into_iter()
        .map(|(key, f)| match f.kind {
            Some(feature::Kind::BytesList(l)) => {
                let shown: Vec<String> = l.value.iter().map(|b| describe_bytes(b)).collect();
                format!("{key}: bytes = {}", shown.join(", "))
            }
            Some(feature::Kind::Int64List(l)) => format!("{key}: int64 = {:?}", l.value),
            Some(feature::Kind::FloatList(l)) => format!("{key}: float = {:?}", l.value),
            None => format!("{key}: empty"),
        })
        .collect())
}

fn describe_bytes(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) if b.len() <= 200 && !s.chars().any(char::is_control) => format!("{s:?}"),
        _ => format!("<{} bytes>", b.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use inception_core::example::ImageExample;

    fn file() -> Vec<u8> {
        let mut out = Vec::new();
        for (label, text) in [(1, "daisy"), (2, "roses"), (2, "roses")] {
            let ex = ImageExample {
                encoded: vec![0xff; 300],
                height: 2,
                width: 3,
                label,
                text: text.into(),
                filename: "f.jpg".into(),
            };
            tfrecord::write_record(&mut out, &ex.to_bytes());
        }
        tfrecord::write_record(&mut out, b"not an example");
        out
    }

    #[test]
    fn stats_count_labels_and_report_framing_offsets() {
        let bytes = file();
        let s = stats(&bytes);
        assert_eq!(s.records, 4);
        assert_eq!(s.labels[&2], ("roses".to_string(), 2));
        assert_eq!(s.unreadable.len(), 1);
        assert_eq!(s.framing, None);
        let mut bad = bytes;
        let last = bad.len() - 2;
        bad[last] ^= 0xff;
        let s = stats(&bad);
        assert_eq!(s.records, 3);
        assert!(matches!(s.framing, Some(TfRecordError::DataCrc { offset }) if offset > 0));
    }

    #[test]
    fn inspect_prints_every_feature() {
        let lines = inspect(&file(), 1).unwrap();
        assert!(lines.contains(&r#"image/class/text: bytes = "roses""#.to_string()), "{lines:?}");
        assert!(lines.contains(&"image/class/label: int64 = [2]".to_string()), "{lines:?}");
        assert!(lines.contains(&"image/encoded: bytes = <300 bytes>".to_string()), "{lines:?}");
        assert!(inspect(&file(), 9).is_err());
    }
}
