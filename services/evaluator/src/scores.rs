//! What an evaluation tells a practitioner beyond precision@1: the
//! confusion matrix of the top-1 predictions, precision and recall by label,
//! and the validation loss.
//!
//! Computed on the CPU from each batch's logits ([`Tally::add`]), in `f64`.
//! The top-1 prediction of an example is its highest logit, the lowest
//! index on a tie (so the same logits give the same matrix on every
//! device). This differs from `in_top_k`, which counts a tie for first
//! place as a hit: precision@1 can exceed the matrix's diagonal share only
//! when logits tie exactly.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Most labels whose confusion matrix is written out whole (a million
/// cells); above it, only the cells that are not zero (`cells`).
pub const MAX_DENSE_LABELS: usize = 1000;

/// Why a batch's logits cannot be scored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScoreError {
    /// Some logits are NaN or infinite: the weights are broken (a diverged
    /// run), and `in_top_k` would count every such example as a hit.
    #[error("the logits of {bad} of the {examples} examples in a batch are NaN or infinite")]
    NonFinite {
        /// Examples with at least one non-finite logit.
        bad: usize,
        /// Examples in the batch.
        examples: usize,
    },
    /// A label the model has no output for.
    #[error("label {label} is outside the model's {classes} classes")]
    LabelOutOfRange {
        /// The label of the record.
        label: i64,
        /// The model's classes (background included).
        classes: usize,
    },
    /// The logits do not have one row of `classes` per label.
    #[error("{logits} logits for {examples} examples of {classes} classes")]
    Shape {
        /// Logits received.
        logits: usize,
        /// Labels received.
        examples: usize,
        /// The model's classes.
        classes: usize,
    },
}

/// The scores of one label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassScore {
    /// The label's name (`background` for index 0).
    pub label: String,
    /// The model's output index (label i of the dataset is index i).
    pub index: i64,
    /// Validation examples of this label.
    pub examples: u64,
    /// Examples whose top-1 prediction is this label.
    pub predicted: u64,
    /// Examples of this label predicted as it.
    pub correct: u64,
    /// `correct / predicted`; `None` (null) when nothing was predicted as it.
    pub precision: Option<f64>,
    /// `correct / examples`; `None` (null) when it has no examples.
    pub recall: Option<f64>,
}

/// Counts of (true label, top-1 prediction): `counts[i][j]` examples of
/// `labels[i]` were predicted as `labels[j]`. Of more than
/// [`MAX_DENSE_LABELS`] labels, `counts` is empty and `cells` lists the
/// counts that are not zero, so that its size grows with the examples, not
/// with the square of the labels.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfusionMatrix {
    /// Names of the rows (true labels) and columns (predictions), in index order.
    pub labels: Vec<String>,
    /// The model's output index of each row and column.
    pub indices: Vec<i64>,
    /// Rows: true label; columns: predicted label (up to [`MAX_DENSE_LABELS`] labels).
    pub counts: Vec<Vec<u64>>,
    /// `[true index, predicted index, count]` of every non-zero cell, when
    /// there are too many labels for `counts`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cells: Vec<[u64; 3]>,
}

/// The name of output `index` given a checkpoint's label names (label i+1
/// is `names[i]`; 0 is the background class).
pub fn label_name(names: &[String], index: i64) -> String {
    match index {
        0 => "background".to_string(),
        i => names.get(i as usize - 1).cloned().unwrap_or_else(|| format!("class {i}")),
    }
}

/// Accumulates the confusion counts and the cross-entropy over batches.
/// Memory grows with the examples and the classes, never with the square
/// of the classes (a checkpoint may have 100,000).
#[derive(Debug, Clone)]
pub struct Tally {
    classes: usize,
    /// Non-zero counts by (true label, prediction).
    cells: BTreeMap<(usize, usize), u64>,
    /// Examples of each true label, and predictions of each label.
    row_sums: Vec<u64>,
    column_sums: Vec<u64>,
    loss_sum: f64,
    examples: u64,
}

impl Tally {
    /// An empty tally for a model with `classes` outputs (background included).
    pub fn new(classes: usize) -> Self {
        Self {
            classes,
            cells: BTreeMap::new(),
            row_sums: vec![0; classes],
            column_sums: vec![0; classes],
            loss_sum: 0.0,
            examples: 0,
        }
    }

    /// Adds a batch: `logits` row-major `[labels.len(), classes]`. A batch
    /// with any non-finite logit, a label out of range or the wrong shape is
    /// refused whole and adds nothing.
    pub fn add(&mut self, logits: &[f32], labels: &[i64]) -> Result<(), ScoreError> {
        let classes = self.classes;
        if classes == 0 || logits.len() != labels.len() * classes {
            return Err(ScoreError::Shape { logits: logits.len(), examples: labels.len(), classes });
        }
        let bad = logits.chunks_exact(classes).filter(|row| row.iter().any(|x| !x.is_finite())).count();
        if bad > 0 {
            return Err(ScoreError::NonFinite { bad, examples: labels.len() });
        }
        if let Some(&label) = labels.iter().find(|&&l| l < 0 || l as usize >= classes) {
            return Err(ScoreError::LabelOutOfRange { label, classes });
        }
        for (row, &label) in logits.chunks_exact(classes).zip(labels) {
            let (truth, predicted) = (label as usize, top1(row));
            *self.cells.entry((truth, predicted)).or_default() += 1;
            self.row_sums[truth] += 1;
            self.column_sums[predicted] += 1;
            self.loss_sum += cross_entropy(row, truth);
            self.examples += 1;
        }
        Ok(())
    }

    /// Examples added so far.
    pub fn examples(&self) -> u64 {
        self.examples
    }

    /// Mean cross-entropy of the logits (natural log, no label smoothing);
    /// NaN before any example.
    pub fn validation_loss(&self) -> f64 {
        self.loss_sum / self.examples as f64
    }

    /// Examples of true label `truth` predicted as `predicted`.
    pub fn count(&self, truth: usize, predicted: usize) -> u64 {
        self.cells.get(&(truth, predicted)).copied().unwrap_or(0)
    }

    /// The output indices reported: every label of the checkpoint
    /// (`1..=names.len()`), plus any other index (the background 0, outputs
    /// without a name) that is a true label or a prediction.
    fn reported(&self, names: &[String]) -> Vec<usize> {
        let named = 1..=names.len().min(self.classes.saturating_sub(1));
        let seen = self.cells.keys().flat_map(|&(i, j)| [i, j]);
        named.chain(seen).collect::<BTreeSet<usize>>().into_iter().collect()
    }

    /// Precision and recall of each reported label (see [`Tally::confusion`]
    /// for which), in index order.
    pub fn class_scores(&self, names: &[String]) -> Vec<ClassScore> {
        self.reported(names)
            .into_iter()
            .map(|i| {
                let (examples, predicted) = (self.row_sums[i], self.column_sums[i]);
                let correct = self.count(i, i);
                let ratio = |n: u64, d: u64| (d > 0).then(|| n as f64 / d as f64);
                ClassScore {
                    label: label_name(names, i as i64),
                    index: i as i64,
                    examples,
                    predicted,
                    correct,
                    precision: ratio(correct, predicted),
                    recall: ratio(correct, examples),
                }
            })
            .collect()
    }

    /// The confusion matrix over the checkpoint's labels, with the
    /// background (index 0) and unnamed outputs only where they occur.
    /// Counts in rows or columns left out are always zero.
    pub fn confusion(&self, names: &[String]) -> ConfusionMatrix {
        let shown = self.reported(names);
        let dense = shown.len() <= MAX_DENSE_LABELS;
        ConfusionMatrix {
            labels: shown.iter().map(|&i| label_name(names, i as i64)).collect(),
            indices: shown.iter().map(|&i| i as i64).collect(),
            counts: if dense {
                shown.iter().map(|&i| shown.iter().map(|&j| self.count(i, j)).collect()).collect()
            } else {
                Vec::new()
            },
            cells: if dense {
                Vec::new()
            } else {
                self.cells.iter().map(|(&(i, j), &n)| [i as u64, j as u64, n]).collect()
            },
        }
    }
}

/// The index of the highest value, the lowest one on a tie.
fn top1(row: &[f32]) -> usize {
    row.iter().enumerate().fold(0, |best, (i, &x)| if x > row[best] { i } else { best })
}

/// `−log softmax(row)[truth]`, computed as `logsumexp(row) − row[truth]`
/// around the maximum so that large logits do not overflow.
fn cross_entropy(row: &[f32], truth: usize) -> f64 {
    let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(f64::from(x)));
    let sum: f64 = row.iter().map(|&x| (f64::from(x) - max).exp()).sum();
    max + sum.ln() - f64::from(row[truth])
}

/// The confusion matrix as a markdown table (rows: true label, columns:
/// predicted), for TensorBoard's text plugin. `|` in names is escaped.
pub fn confusion_markdown(matrix: &ConfusionMatrix) -> String {
    let cell = |s: &str| s.replace('|', "\\|");
    if matrix.counts.is_empty() && !matrix.cells.is_empty() {
        return largest_confusions_markdown(matrix);
    }
    let mut out = String::from("| true \\\\ predicted |");
    for label in &matrix.labels {
        out.push_str(&format!(" {} |", cell(label)));
    }
    out.push_str("\n|---|");
    out.push_str(&"---:|".repeat(matrix.labels.len()));
    for (label, row) in matrix.labels.iter().zip(&matrix.counts) {
        out.push_str(&format!("\n| **{}** |", cell(label)));
        for n in row {
            out.push_str(&format!(" {n} |"));
        }
    }
    out
}

/// Of a matrix too large to show: its 30 largest off-diagonal counts.
fn largest_confusions_markdown(matrix: &ConfusionMatrix) -> String {
    let name = |index: u64| {
        let at = matrix.indices.iter().position(|&i| i as u64 == index);
        at.and_then(|a| matrix.labels.get(a)).map_or_else(|| format!("class {index}"), |l| l.replace('|', "\\|"))
    };
    let mut off: Vec<&[u64; 3]> = matrix.cells.iter().filter(|c| c[0] != c[1]).collect();
    off.sort_by_key(|c| std::cmp::Reverse(c[2]));
    let mut out = format!(
        "{} labels: too many to show the matrix; the largest confusions:\n\n| true | predicted | examples |\n|---|---|---:|",
        matrix.labels.len()
    );
    for c in off.iter().take(30) {
        out.push_str(&format!("\n| {} | {} | {} |", name(c[0]), name(c[1]), c[2]));
    }
    out
}

/// The per-class table the evaluator prints under the precision line:
/// label, precision, recall, examples; `-` where a ratio is undefined.
pub fn class_table(scores: &[ClassScore]) -> String {
    let width = scores.iter().map(|s| s.label.chars().count()).chain([5]).max().unwrap_or(5);
    let ratio = |r: Option<f64>| r.map_or_else(|| "-".to_string(), |r| format!("{r:.4}"));
    let mut lines = vec![format!("{:<width$}  {:>9}  {:>9}  {:>8}", "label", "precision", "recall", "examples")];
    for s in scores {
        lines.push(format!(
            "{:<width$}  {:>9}  {:>9}  {:>8}",
            s.label,
            ratio(s.precision),
            ratio(s.recall),
            s.examples
        ));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        ["daisy", "rose", "tulip"].iter().map(|s| s.to_string()).collect()
    }

    /// A row of 4 logits (background, daisy, rose, tulip) whose maximum is at `at`.
    fn row(at: usize) -> [f32; 4] {
        let mut r = [0.0f32; 4];
        r[at] = 2.0;
        r
    }

    /// Ten examples, counted by hand:
    /// daisy (4): daisy, daisy, daisy, rose
    /// rose (3): rose, tulip, daisy
    /// tulip (3): tulip, tulip, background
    fn example() -> Tally {
        let cases: [(i64, usize); 10] =
            [(1, 1), (1, 1), (1, 1), (1, 2), (2, 2), (2, 3), (2, 1), (3, 3), (3, 3), (3, 0)];
        let logits: Vec<f32> = cases.iter().flat_map(|&(_, p)| row(p)).collect();
        let labels: Vec<i64> = cases.iter().map(|&(l, _)| l).collect();
        let mut tally = Tally::new(4);
        // In two batches: the counts add up across them.
        tally.add(&logits[..4 * 6], &labels[..6]).unwrap();
        tally.add(&logits[4 * 6..], &labels[6..]).unwrap();
        tally
    }

    #[test]
    fn precision_and_recall_by_label_match_a_hand_count() {
        let scores = example().class_scores(&names());
        let by = |label: &str| scores.iter().find(|s| s.label == label).unwrap().clone();
        // daisy: 3 of its 4 right; predicted 4 times (3 daisies + 1 rose).
        let daisy = by("daisy");
        assert_eq!((daisy.index, daisy.examples, daisy.predicted, daisy.correct), (1, 4, 4, 3));
        assert_eq!((daisy.precision, daisy.recall), (Some(0.75), Some(0.75)));
        // rose: 1 of 3 right; predicted twice (1 rose + 1 daisy).
        let rose = by("rose");
        assert_eq!((rose.examples, rose.predicted, rose.correct), (3, 2, 1));
        assert_eq!(rose.precision, Some(0.5));
        assert!((rose.recall.unwrap() - 1.0 / 3.0).abs() < 1e-12);
        // tulip: 2 of 3 right; predicted 3 times (2 tulips + 1 rose).
        let tulip = by("tulip");
        assert_eq!((tulip.examples, tulip.predicted, tulip.correct), (3, 3, 2));
        assert!((tulip.precision.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert!((tulip.recall.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        // background: predicted once, never right, no examples of its own.
        let background = by("background");
        assert_eq!((background.index, background.examples, background.predicted), (0, 0, 1));
        assert_eq!((background.precision, background.recall), (Some(0.0), None));
        assert_eq!(scores.iter().map(|s| s.index).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    }

    #[test]
    fn the_confusion_matrix_has_true_rows_and_predicted_columns() {
        let matrix = example().confusion(&names());
        assert_eq!(matrix.labels, vec!["background", "daisy", "rose", "tulip"]);
        assert_eq!(matrix.indices, vec![0, 1, 2, 3]);
        assert_eq!(matrix.counts, vec![vec![0, 0, 0, 0], vec![0, 3, 1, 0], vec![0, 1, 1, 1], vec![1, 0, 0, 2]]);
        let markdown = confusion_markdown(&matrix);
        let lines: Vec<&str> = markdown.lines().collect();
        assert_eq!(lines[0], "| true \\\\ predicted | background | daisy | rose | tulip |");
        assert_eq!(lines[1], "|---|---:|---:|---:|---:|");
        assert_eq!(lines[3], "| **daisy** | 0 | 3 | 1 | 0 |");
        assert_eq!(lines.len(), 6);
    }

    #[test]
    fn background_is_left_out_when_nobody_predicts_it_and_empty_classes_are_null() {
        let mut tally = Tally::new(4);
        // Two daisies, one predicted as rose; no tulip at all.
        tally.add(&[row(1), row(2)].concat(), &[1, 1]).unwrap();
        let matrix = tally.confusion(&names());
        assert_eq!(matrix.labels, vec!["daisy", "rose", "tulip"]);
        assert_eq!(matrix.counts, vec![vec![1, 1, 0], vec![0, 0, 0], vec![0, 0, 0]]);
        let scores = tally.class_scores(&names());
        let tulip = &scores[2];
        assert_eq!((tulip.label.as_str(), tulip.precision, tulip.recall), ("tulip", None, None));
        let rose = &scores[1];
        assert_eq!((rose.precision, rose.recall), (Some(0.0), None));
        let json = serde_json::to_value(tulip).unwrap();
        assert!(json["precision"].is_null() && json["recall"].is_null(), "{json}");
        let table = class_table(&scores);
        assert!(table.lines().nth(3).unwrap().starts_with("tulip"), "{table}");
        assert!(table.lines().nth(3).unwrap().contains("        -          -         0"), "{table}");
        assert!(table.lines().nth(1).unwrap().contains("1.0000     0.5000         2"), "{table}");
    }

    #[test]
    fn the_validation_loss_is_the_mean_cross_entropy() {
        let mut tally = Tally::new(3);
        // ln(3) for uniform logits; for [ln 1, ln 2, ln 7] and label 2:
        // −ln(7/10); for the same logits shifted by +1000 and label 0: −ln(1/10).
        let (a, b) = (2f32.ln(), 7f32.ln());
        tally.add(&[0.0, 0.0, 0.0, 0.0, a, b], &[1, 2]).unwrap();
        tally.add(&[1000.0, 1000.0 + a, 1000.0 + b], &[0]).unwrap();
        let expected = (3f64.ln() - (0.7f64).ln() - (0.1f64).ln()) / 3.0;
        assert!((tally.validation_loss() - expected).abs() < 1e-4, "{} vs {expected}", tally.validation_loss());
        assert_eq!(tally.examples(), 3);
        // A tie goes to the lowest index.
        assert_eq!(tally.count(1, 0), 1);
        assert_eq!(tally.count(0, 2), 1, "1000 + ln 7 is the top one");
    }

    #[test]
    fn non_finite_logits_and_bad_labels_are_refused_and_add_nothing() {
        let mut tally = Tally::new(3);
        let err = tally.add(&[0.0, f32::NAN, 1.0, 0.0, 1.0, 2.0], &[1, 2]).unwrap_err();
        assert_eq!(err, ScoreError::NonFinite { bad: 1, examples: 2 });
        assert!(err.to_string().contains("NaN or infinite"), "{err}");
        assert_eq!(tally.add(&[f32::INFINITY, 0.0, 0.0], &[1]), Err(ScoreError::NonFinite { bad: 1, examples: 1 }));
        assert_eq!(tally.add(&[0.0, 1.0, 2.0], &[3]), Err(ScoreError::LabelOutOfRange { label: 3, classes: 3 }));
        assert!(matches!(tally.add(&[0.0, 1.0], &[1]), Err(ScoreError::Shape { .. })));
        assert_eq!(tally.examples(), 0);
        assert!(tally.validation_loss().is_nan());
    }

    #[test]
    fn names_come_from_the_checkpoint_with_background_at_zero() {
        assert_eq!(label_name(&names(), 0), "background");
        assert_eq!(label_name(&names(), 2), "rose");
        assert_eq!(label_name(&names(), 7), "class 7");
        let mut extra = Tally::new(5);
        extra.add(&[0.0, 0.0, 0.0, 0.0, 1.0], &[4]).unwrap();
        assert_eq!(extra.confusion(&names()).labels, vec!["daisy", "rose", "tulip", "class 4"]);
    }

    /// The largest model a checkpoint may describe (100,000 outputs) used to
    /// allocate a dense 10^10-cell tally (80 GB) before the first example.
    #[test]
    fn a_hundred_thousand_classes_cost_memory_by_example_not_by_square() {
        let classes = 100_000;
        let mut tally = Tally::new(classes);
        let mut logits = vec![0.0f32; 2 * classes];
        logits[7] = 1.0; // example 0: label 5, predicted 7
        logits[classes + 9] = 1.0; // example 1: label 9, predicted 9
        tally.add(&logits, &[5, 9]).unwrap();
        let names: Vec<String> = (1..classes).map(|i| format!("c{i}")).collect();
        let matrix = tally.confusion(&names);
        assert_eq!(matrix.labels.len(), classes - 1);
        assert!(matrix.counts.is_empty(), "no dense matrix of 10^10 cells");
        assert_eq!(matrix.cells, vec![[5, 7, 1], [9, 9, 1]]);
        let scores = tally.class_scores(&names);
        let c9 = scores.iter().find(|s| s.index == 9).unwrap();
        assert_eq!((c9.examples, c9.predicted, c9.correct), (1, 1, 1));
        let markdown = confusion_markdown(&matrix);
        assert!(markdown.contains("| c5 | c7 | 1 |") && !markdown.contains("| c9 | c9 |"), "{markdown}");
    }
}
