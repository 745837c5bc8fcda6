//! The promotion gate: after each evaluation, whether the checkpoint
//! becomes the run's promoted one (the one to serve). A checkpoint is
//! promoted when its evaluation counted at least `min_examples` validation
//! examples and, if a checkpoint is promoted already, its precision@1 is at
//! least the promoted one's plus `min_precision_gain` and no label's recall
//! is more than `max_recall_drop` below the promoted one's (labels compared
//! by name; a label with no recall on either side, no examples, is not
//! compared). [`decide`] is the policy alone; the evaluator records every
//! [`Decision`] (`checkpoints/<run>/promotions/step-<N>.json`), moves the
//! `promoted` pointer and announces `CheckpointPromoted`.

use crate::scores::ClassScore;
use crate::Evaluation;
use inception_core::settings::PromotionSettings;
use inception_model::checkpoint::PromotedPointer;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Rounding slack of the comparisons: scores are ratios of counts, so a
/// checkpoint as good as the promoted one is not refused for 1e-17.
const SLACK: f64 = 1e-9;

/// The gate's thresholds (`[promotion]`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub min_precision_gain: f64,
    pub max_recall_drop: f64,
    pub min_examples: u64,
}

impl From<&PromotionSettings> for Policy {
    fn from(s: &PromotionSettings) -> Self {
        Self {
            min_precision_gain: s.min_precision_gain,
            max_recall_drop: s.max_recall_drop,
            min_examples: s.min_examples,
        }
    }
}

/// Promoted or rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Promoted,
    Rejected,
}

impl Verdict {
    /// The `decision` label of `inception_promotions_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Promoted => "promoted",
            Verdict::Rejected => "rejected",
        }
    }
}

/// The checkpoint promoted when the decision was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incumbent {
    pub step: u64,
    pub precision_at_1: f64,
    pub examples: u64,
}

/// A label whose recall fell by more than the policy allows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Regression {
    pub label: String,
    pub recall: f64,
    pub promoted_recall: f64,
    /// `promoted_recall - recall`.
    pub drop: f64,
}

/// One decision of the gate, as recorded in the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub run: String,
    pub step: u64,
    /// Key of the checkpoint's metadata.
    pub checkpoint: String,
    /// Key of the checkpoint's tensors.
    pub weights: String,
    pub decision: Verdict,
    /// Why, one sentence each: every criterion that failed (rejected), or
    /// what it passed (promoted).
    pub reasons: Vec<String>,
    pub precision_at_1: f64,
    pub validation_loss: f64,
    pub examples: u64,
    /// The promoted checkpoint it was compared with; none for the first.
    pub promoted: Option<Incumbent>,
    /// The labels whose recall fell too far (empty when none did).
    pub regressed: Vec<Regression>,
    pub policy: Policy,
    pub decided_unix: i64,
    /// Whether a promotion was announced on NATS (false for a rejection,
    /// and for `--run-once` evaluations, which have no NATS).
    #[serde(default)]
    pub announced: bool,
}

/// Judges `evaluation` against the promoted checkpoint, if any, and its
/// per-label scores (`None`: they could not be read, so recall is not
/// compared, which the reasons say).
pub fn decide(
    policy: &Policy,
    evaluation: &Evaluation,
    promoted: Option<(&PromotedPointer, Option<&[ClassScore]>)>,
) -> Decision {
    let mut failed = Vec::new();
    let mut passed = Vec::new();
    if evaluation.examples < policy.min_examples {
        failed.push(format!(
            "its evaluation counted {} validation examples, fewer than promotion.min_examples = {}",
            evaluation.examples, policy.min_examples
        ));
    } else {
        passed.push(format!("{} validation examples (at least {})", evaluation.examples, policy.min_examples));
    }
    let mut regressed = Vec::new();
    match promoted {
        None => passed.push("no checkpoint was promoted before".into()),
        Some((current, classes)) => {
            let needed = current.precision_at_1 + policy.min_precision_gain;
            let p = evaluation.precision_at_1;
            if p + SLACK < needed {
                failed.push(format!(
                    "precision@1 {p:.4} is below the promoted step {}'s {:.4} + promotion.min_precision_gain {} = {needed:.4}",
                    current.step, current.precision_at_1, policy.min_precision_gain
                ));
            } else {
                passed.push(format!(
                    "precision@1 {p:.4} is at least the promoted step {}'s {:.4} + {}",
                    current.step, current.precision_at_1, policy.min_precision_gain
                ));
            }
            match classes {
                Some(classes) => {
                    regressed = regressions(policy.max_recall_drop, &evaluation.classes, classes);
                    if regressed.is_empty() {
                        passed.push(format!("no label's recall fell by more than {}", policy.max_recall_drop));
                    } else {
                        failed.push(regression_reason(policy.max_recall_drop, current.step, &regressed));
                    }
                }
                None => passed.push(format!(
                    "recall not compared: the evaluation of the promoted step {} is unreadable",
                    current.step
                )),
            }
        }
    }
    let decision = if failed.is_empty() { Verdict::Promoted } else { Verdict::Rejected };
    Decision {
        run: evaluation.run.clone(),
        step: evaluation.step,
        checkpoint: evaluation.checkpoint.clone(),
        weights: evaluation.weights.clone(),
        decision,
        reasons: if failed.is_empty() { passed } else { failed },
        precision_at_1: evaluation.precision_at_1,
        validation_loss: evaluation.validation_loss,
        examples: evaluation.examples,
        promoted: promoted.map(|(c, _)| Incumbent {
            step: c.step,
            precision_at_1: c.precision_at_1,
            examples: c.examples,
        }),
        regressed,
        policy: *policy,
        decided_unix: chrono::Utc::now().timestamp(),
        announced: false,
    }
}

/// The labels (by name) whose recall is more than `max_drop` below the
/// promoted checkpoint's, largest drop first.
fn regressions(max_drop: f64, now: &[ClassScore], promoted: &[ClassScore]) -> Vec<Regression> {
    let before: HashMap<&str, f64> = promoted.iter().filter_map(|c| c.recall.map(|r| (c.label.as_str(), r))).collect();
    let mut out: Vec<Regression> = now
        .iter()
        .filter_map(|c| {
            let (recall, promoted_recall) = (c.recall?, *before.get(c.label.as_str())?);
            let drop = promoted_recall - recall;
            (drop > max_drop + SLACK).then(|| Regression { label: c.label.clone(), recall, promoted_recall, drop })
        })
        .collect();
    out.sort_by(|a, b| b.drop.total_cmp(&a.drop).then_with(|| a.label.cmp(&b.label)));
    out
}

/// "recall fell by more than …: roses 0.90 → 0.70, …" (the first 20 named).
fn regression_reason(max_drop: f64, step: u64, regressed: &[Regression]) -> String {
    const SHOWN: usize = 20;
    let mut named: Vec<String> = regressed
        .iter()
        .take(SHOWN)
        .map(|r| format!("{} {:.4} -> {:.4}", r.label, r.promoted_recall, r.recall))
        .collect();
    if regressed.len() > SHOWN {
        named.push(format!("and {} more", regressed.len() - SHOWN));
    }
    format!(
        "the recall of {} label(s) fell by more than promotion.max_recall_drop = {max_drop} from the promoted step {step}: {}",
        regressed.len(),
        named.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(label: &str, recall: Option<f64>) -> ClassScore {
        ClassScore {
            label: label.into(),
            index: 0,
            examples: u64::from(recall.is_some()) * 10,
            predicted: 0,
            correct: 0,
            precision: None,
            recall,
        }
    }

    fn evaluation(step: u64, precision_at_1: f64, examples: u64, classes: Vec<ClassScore>) -> Evaluation {
        Evaluation {
            run: "r".into(),
            step,
            checkpoint: format!("checkpoints/r/model.ckpt-{step}.json"),
            precision_at_1,
            recall_at_5: 1.0,
            examples,
            evaluated_at_unix: 0,
            weights: format!("checkpoints/r/model.ckpt-{step}.safetensors"),
            validation_loss: 1.0,
            classes,
            confusion: Default::default(),
        }
    }

    fn pointer(step: u64, precision_at_1: f64) -> PromotedPointer {
        PromotedPointer {
            step,
            metadata: format!("checkpoints/r/model.ckpt-{step}.json"),
            weights: format!("checkpoints/r/model.ckpt-{step}.safetensors"),
            precision_at_1,
            validation_loss: 1.0,
            examples: 200,
            promoted_unix: 0,
            previous_step: None,
            decision: String::new(),
        }
    }

    const POLICY: Policy = Policy { min_precision_gain: 0.01, max_recall_drop: 0.05, min_examples: 100 };

    #[test]
    fn the_first_checkpoint_needs_only_enough_examples() {
        let d = decide(&POLICY, &evaluation(10, 0.1, 100, vec![]), None);
        assert_eq!(d.decision, Verdict::Promoted, "{d:?}");
        assert!(d.promoted.is_none());
        let d = decide(&POLICY, &evaluation(10, 0.9, 99, vec![]), None);
        assert_eq!(d.decision, Verdict::Rejected);
        assert!(d.reasons[0].contains("99 validation examples") && d.reasons[0].contains("min_examples = 100"));
    }

    #[test]
    fn precision_must_beat_the_promoted_one_by_the_margin() {
        let current = pointer(10, 0.80);
        let classes = [class("roses", Some(0.8))];
        let judge =
            |p: f64| decide(&POLICY, &evaluation(20, p, 200, classes.to_vec()), Some((&current, Some(&classes))));
        assert_eq!(judge(0.81).decision, Verdict::Promoted, "exactly the margin: {:?}", judge(0.81).reasons);
        assert_eq!(judge(0.85).decision, Verdict::Promoted);
        let d = judge(0.805);
        assert_eq!(d.decision, Verdict::Rejected);
        assert!(d.reasons[0].contains("below the promoted step 10's 0.8000"), "{:?}", d.reasons);
        assert_eq!(d.promoted.as_ref().map(|i| i.step), Some(10));
        assert!(d.regressed.is_empty());
    }

    #[test]
    fn a_rejection_names_every_label_whose_recall_fell_too_far() {
        let current = pointer(10, 0.5);
        let before = [
            class("daisy", Some(0.9)),
            class("roses", Some(0.9)),
            class("tulips", Some(0.9)),
            class("sunflowers", None),
            class("gone", Some(0.9)),
        ];
        let now = vec![
            class("daisy", Some(0.86)),     // within 0.05
            class("roses", Some(0.5)),      // fell 0.4
            class("tulips", Some(0.8)),     // fell 0.1
            class("sunflowers", Some(0.0)), // no recall before: not compared
            class("new", Some(0.0)),        // not in the promoted one
        ];
        let d = decide(&POLICY, &evaluation(20, 0.9, 200, now), Some((&current, Some(&before))));
        assert_eq!(d.decision, Verdict::Rejected);
        let named: Vec<&str> = d.regressed.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(named, vec!["roses", "tulips"], "largest drop first");
        assert_eq!(d.reasons.len(), 1, "precision passed: {:?}", d.reasons);
        assert!(d.reasons[0].contains("roses 0.9000 -> 0.5000") && d.reasons[0].contains("tulips"), "{:?}", d.reasons);
        // Without the promoted one's scores recall is not compared, and it says so.
        let d = decide(&POLICY, &evaluation(20, 0.9, 200, vec![]), Some((&current, None)));
        assert_eq!(d.decision, Verdict::Promoted);
        assert!(d.reasons.iter().any(|r| r.contains("recall not compared")), "{:?}", d.reasons);
    }

    #[test]
    fn several_failures_are_all_given() {
        let current = pointer(10, 0.9);
        let before = [class("roses", Some(1.0))];
        let now = vec![class("roses", Some(0.0))];
        let d = decide(&POLICY, &evaluation(20, 0.5, 5, now), Some((&current, Some(&before))));
        assert_eq!(d.decision, Verdict::Rejected);
        assert_eq!(d.reasons.len(), 3, "{:?}", d.reasons);
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["decision"], "rejected");
        assert_eq!(json["regressed"][0]["label"], "roses");
    }
}
