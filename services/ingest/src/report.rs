//! What happened to each input image: one outcome per image, counted in
//! `inception_ingest_images_total{result=...}` and listed with its reason in
//! the JSON report.

use inception_vision::VisionError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The `result` label of `inception_ingest_images_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Converted and written to a shard.
    Written,
    /// A zero-byte file.
    SkippedEmpty,
    /// Not an image format we recognise (text named `.jpg`, …).
    SkippedNotImage,
    /// A recognised format that does not decode (truncated JPEG, bad PNG…).
    SkippedCorrupt,
    /// Over `pipeline.max_image_pixels` (a decompression bomb, or just huge).
    SkippedTooLarge,
    /// The file or object could not be read, or is not to be: a symbolic
    /// link that dangles, loops or leads outside the source folder, or
    /// something that is not a regular file (the reason says which).
    SkippedUnreadable,
    /// Under a label that is not in the label set (continuous mode).
    Quarantined,
}

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Outcome::Written,
        Outcome::SkippedEmpty,
        Outcome::SkippedNotImage,
        Outcome::SkippedCorrupt,
        Outcome::SkippedTooLarge,
        Outcome::SkippedUnreadable,
        Outcome::Quarantined,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Written => "written",
            Outcome::SkippedEmpty => "skipped_empty",
            Outcome::SkippedNotImage => "skipped_not_image",
            Outcome::SkippedCorrupt => "skipped_corrupt",
            Outcome::SkippedTooLarge => "skipped_too_large",
            Outcome::SkippedUnreadable => "skipped_unreadable",
            Outcome::Quarantined => "quarantined",
        }
    }

    /// The outcome of a conversion error.
    pub fn of(error: &VisionError) -> Outcome {
        match error {
            VisionError::Empty => Outcome::SkippedEmpty,
            VisionError::UnknownFormat => Outcome::SkippedNotImage,
            VisionError::TooLarge { .. } => Outcome::SkippedTooLarge,
            VisionError::Decode { .. } | VisionError::TruncatedJpeg | VisionError::Encode(_) => Outcome::SkippedCorrupt,
        }
    }

    /// Counts one image with this outcome.
    pub fn count(self) {
        metrics::counter!("inception_ingest_images_total", "result" => self.as_str()).increment(1);
    }
}

/// One image that did not make it into a shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub file: String,
    pub result: Outcome,
    pub reason: String,
}

/// What one split produced.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitReport {
    pub split: String,
    pub found: usize,
    pub written: usize,
    pub skipped: Vec<Skipped>,
    pub shards: Vec<String>,
}

/// The JSON report of a one-shot run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunReport {
    pub dataset: String,
    pub labels: Vec<String>,
    pub splits: Vec<SplitReport>,
    /// Images by outcome over all splits (the metric's values).
    pub counts: BTreeMap<Outcome, usize>,
}

impl RunReport {
    pub fn new(dataset: &str, labels: &[String], splits: Vec<SplitReport>) -> Self {
        let mut counts = BTreeMap::new();
        for s in &splits {
            if s.written > 0 {
                *counts.entry(Outcome::Written).or_insert(0) += s.written;
            }
            for k in &s.skipped {
                *counts.entry(k.result).or_insert(0) += 1;
            }
        }
        RunReport { dataset: dataset.to_string(), labels: labels.to_vec(), splits, counts }
    }

    pub fn to_json(&self) -> Vec<u8> {
        // A report of plain strings and numbers always serialises.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_have_distinct_metric_values_and_json_names() {
        let names: std::collections::HashSet<_> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(names.len(), Outcome::ALL.len());
        for o in Outcome::ALL {
            assert_eq!(serde_json::to_string(&o).unwrap(), format!("\"{}\"", o.as_str()));
        }
        assert_eq!(Outcome::of(&VisionError::Empty), Outcome::SkippedEmpty);
        assert_eq!(Outcome::of(&VisionError::TruncatedJpeg), Outcome::SkippedCorrupt);
        let report = RunReport::new(
            "d",
            &["a".into()],
            vec![SplitReport {
                split: "train".into(),
                found: 3,
                written: 2,
                skipped: vec![Skipped { file: "x".into(), result: Outcome::SkippedEmpty, reason: "empty file".into() }],
                shards: vec![],
            }],
        );
        let json: serde_json::Value = serde_json::from_slice(&report.to_json()).unwrap();
        assert_eq!(json["counts"]["written"], 2);
        assert_eq!(json["counts"]["skipped_empty"], 1);
        assert_eq!(json["splits"][0]["skipped"][0]["result"], "skipped_empty");
    }
}
