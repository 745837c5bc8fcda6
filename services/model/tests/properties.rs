//! Property tests of checkpoint metadata, the outside bytes a model is
//! built from (issue 16: no single bad input stops a service). The
//! evaluator and a resuming trainer read `model.ckpt-<step>.json` and the
//! run's pointers from the store: whatever they hold, reading them never
//! panics, and a model shape out of bounds (`inception_core::limits`) is
//! refused before any weight is read or model built.

use inception_core::keys;
use inception_core::limits::{MAX_DEPTH_MULTIPLIER, MAX_IMAGE_SIZE, MAX_MIN_DEPTH, MAX_NUM_CLASSES};
use inception_model::checkpoint::{self, BestPointer, CheckpointMeta, CheckpointPointer};
use inception_model::config::MIN_IMAGE_SIZE;
use inception_model::ModelConfig;
use proptest::prelude::*;
use serde_json::{json, Value};

/// The seed of every property test's cases unless PROPTEST_RNG_SEED is set.
const PROPERTY_SEED: u64 = 0x1ce9_7107;

fn config(cases: u32) -> ProptestConfig {
    // A fixed seed keeps CI repeatable; PROPTEST_RNG_SEED=<n> explores others.
    let defaults = ProptestConfig::default();
    let rng_seed = match defaults.rng_seed {
        proptest::test_runner::RngSeed::Random => proptest::test_runner::RngSeed::Fixed(PROPERTY_SEED),
        chosen => chosen,
    };
    ProptestConfig { cases, failure_persistence: None, rng_seed, ..defaults }
}

/// `ModelConfig::validate`'s contract, written out independently.
fn within_bounds(c: &ModelConfig) -> bool {
    (MIN_IMAGE_SIZE..=i64::from(MAX_IMAGE_SIZE)).contains(&c.image_size)
        && (2..=i64::from(MAX_NUM_CLASSES)).contains(&c.num_classes)
        && c.depth_multiplier > 0.0
        && c.depth_multiplier <= MAX_DEPTH_MULTIPLIER
        && (1..=i64::from(MAX_MIN_DEPTH)).contains(&c.min_depth)
        && (0.0..1.0).contains(&c.dropout)
}

/// Integers around each bound, and any.
fn int_near(bounds: &'static [i64]) -> impl Strategy<Value = i64> {
    prop_oneof![
        3 => prop::sample::select(bounds).prop_flat_map(|b| b.saturating_sub(2)..=b.saturating_add(2)),
        1 => any::<i64>(),
        1 => Just(i64::MIN),
        1 => Just(i64::MAX),
    ]
}

/// Floats around each bound, the special values, and any.
fn float_near(bounds: &'static [f64]) -> impl Strategy<Value = f64> {
    prop_oneof![
        3 => prop::sample::select(bounds).prop_flat_map(|b| prop_oneof![
            Just(b),
            Just(f64::from_bits(b.to_bits().wrapping_add(1))),
            Just(f64::from_bits(b.to_bits().wrapping_sub(1))),
            (b - 0.5)..(b + 0.5),
        ]),
        1 => prop::sample::select(vec![f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.0, f64::MIN_POSITIVE, f64::MAX]),
        1 => any::<f64>(),
    ]
}

const SIZES: &[i64] = &[MIN_IMAGE_SIZE, 299, MAX_IMAGE_SIZE as i64, 0];
const CLASSES: &[i64] = &[2, 1001, MAX_NUM_CLASSES as i64, 0];
const MIN_DEPTHS: &[i64] = &[1, 16, MAX_MIN_DEPTH as i64];
const DEPTHS: &[f64] = &[0.0, 0.1, 1.0, MAX_DEPTH_MULTIPLIER];
const DROPOUTS: &[f64] = &[0.0, 0.2, 1.0];

fn model_configs() -> impl Strategy<Value = ModelConfig> {
    (
        int_near(CLASSES),
        int_near(SIZES),
        float_near(DEPTHS),
        int_near(MIN_DEPTHS),
        float_near(DROPOUTS),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(num_classes, image_size, depth_multiplier, min_depth, dropout, aux_logits, pad)| ModelConfig {
            num_classes,
            image_size,
            depth_multiplier,
            min_depth,
            dropout,
            aux_logits,
            avg_pool_count_include_pad: pad,
        })
}

/// Shapes within every bound (few classes, so that their labels stay small).
fn valid_configs() -> impl Strategy<Value = ModelConfig> {
    (
        2i64..64,
        MIN_IMAGE_SIZE..=i64::from(MAX_IMAGE_SIZE),
        prop_oneof![Just(MAX_DEPTH_MULTIPLIER), Just(f64::MIN_POSITIVE), 1e-6f64..=MAX_DEPTH_MULTIPLIER],
        1..=i64::from(MAX_MIN_DEPTH),
        prop_oneof![Just(0.0), 0.0f64..1.0],
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(num_classes, image_size, depth_multiplier, min_depth, dropout, aux_logits, pad)| ModelConfig {
            num_classes,
            image_size,
            depth_multiplier,
            min_depth,
            dropout,
            aux_logits,
            avg_pool_count_include_pad: pad,
        })
}

fn meta(model: ModelConfig, labels: Vec<String>, step: u64) -> CheckpointMeta {
    CheckpointMeta {
        format_version: checkpoint::FORMAT_VERSION,
        run: "run-1".into(),
        step,
        labels,
        model,
        bn_updates: step,
        examples_seen: step.saturating_mul(32),
        weights: keys::checkpoint_weights("run-1", step),
        created_unix: 1_700_000_000,
        lineage: Default::default(),
    }
}

/// Any JSON, with the metadata's own keys among the object keys so that
/// objects get near the real shape.
fn json_values() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter_map("JSON has no NaN or infinities", |f| serde_json::Number::from_f64(f).map(Value::Number)),
        ".{0,8}".prop_map(Value::String),
    ];
    let key = prop_oneof![
        3 => prop::sample::select(vec![
            "format_version", "run", "step", "labels", "model", "bn_updates", "examples_seen", "weights",
            "created_unix", "num_classes", "image_size", "depth_multiplier", "min_depth", "dropout", "aux_logits",
            "avg_pool_count_include_pad", "metadata", "all", "precision_at_1", "validation_loss",
        ])
        .prop_map(str::to_string),
        1 => "[a-z_]{0,12}",
    ];
    leaf.prop_recursive(4, 48, 10, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..10).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A JSON value for a model field: mostly of the field's type (`float`
/// or integer), in bounds or not; sometimes of another type.
fn field_values(ints: &'static [i64], floats: &'static [f64], float: bool) -> impl Strategy<Value = Value> {
    let number = |f: f64| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number);
    let (int_weight, float_weight) = if float { (2, 10) } else { (10, 1) };
    prop_oneof![
        int_weight => int_near(ints).prop_map(Value::from),
        float_weight => float_near(floats).prop_map(number),
        1 => any::<u64>().prop_map(Value::from),
        1 => prop::sample::select(vec![json!(null), json!(true), json!("299"), json!([]), json!({}), json!(1e300)]),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    /// The model's shape is accepted exactly within its bounds, and a
    /// refusal names the field (checked in order: image_size, num_classes,
    /// depth_multiplier, min_depth, dropout).
    #[test]
    fn model_config_is_accepted_exactly_within_its_bounds(c in model_configs()) {
        let got = c.validate();
        prop_assert_eq!(got.is_ok(), within_bounds(&c), "{:?}: {:?}", c, got);
        if let Err(e) = got {
            let first_bad = if !(MIN_IMAGE_SIZE..=i64::from(MAX_IMAGE_SIZE)).contains(&c.image_size) {
                "image_size"
            } else if !(2..=i64::from(MAX_NUM_CLASSES)).contains(&c.num_classes) {
                "num_classes"
            } else if !(c.depth_multiplier > 0.0 && c.depth_multiplier <= MAX_DEPTH_MULTIPLIER) {
                "depth_multiplier"
            } else if !(1..=i64::from(MAX_MIN_DEPTH)).contains(&c.min_depth) {
                "min_depth"
            } else {
                "dropout"
            };
            prop_assert!(e.starts_with(first_bad), "{} does not name {}", e, first_bad);
        }
    }

    /// Metadata is accepted exactly when its shape is in bounds and it has
    /// one label per output but the background; after a JSON round trip
    /// (what the store holds) the verdict is the same.
    #[test]
    fn checkpoint_metadata_is_accepted_exactly_when_in_bounds_with_matching_labels(
        c in prop_oneof![model_configs(), valid_configs()],
        labels in prop_oneof![
            Just(None),
            prop::collection::vec("[a-z]{1,6}", 0..70).prop_map(Some),
        ],
        step in any::<u64>(),
    ) {
        // Half the cases have the labels the shape needs, where that is few.
        let labels = labels.unwrap_or_else(|| {
            let n = usize::try_from(c.num_classes.saturating_sub(1)).unwrap_or(0).min(70);
            (0..n).map(|i| format!("label{i}")).collect()
        });
        let m = meta(c.clone(), labels, step);
        let expected = within_bounds(&c) && m.labels.len() as i64 + 1 == c.num_classes;
        prop_assert_eq!(m.validate().is_ok(), expected, "{:?}", m.validate());
        // JSON has no NaN or infinity: serde_json writes them as null, which
        // does not read back as a float, so such metadata cannot be stored.
        let text = serde_json::to_string(&m).unwrap();
        match serde_json::from_str::<CheckpointMeta>(&text) {
            Ok(back) => {
                prop_assert!(c.depth_multiplier.is_finite() && c.dropout.is_finite());
                // serde_json (without its float_roundtrip feature) may read a
                // float of 17 digits back one unit in the last place off.
                let close = |a: f64, b: f64| a == b || (a - b).abs() <= 4.0 * f64::EPSILON * a.abs().max(b.abs());
                prop_assert!(close(back.model.depth_multiplier, c.depth_multiplier));
                prop_assert!(close(back.model.dropout, c.dropout));
                let expected_back = within_bounds(&back.model) && back.labels.len() as i64 + 1 == c.num_classes;
                prop_assert_eq!(back.validate().is_ok(), expected_back);
                let mut same = back;
                same.model.depth_multiplier = c.depth_multiplier;
                same.model.dropout = c.dropout;
                prop_assert_eq!(&same, &m);
            }
            Err(_) => prop_assert!(!(c.depth_multiplier.is_finite() && c.dropout.is_finite())),
        }
    }

    /// Metadata shaped like the real thing, each model field any JSON
    /// value: reading never panics; whatever reads is validated exactly;
    /// and values of the right type always read.
    #[test]
    fn checkpoint_metadata_fields_of_any_json_value_are_read_or_refused(
        // Each field is half the time in its bounds, so that every verdict is reached.
        num_classes in prop_oneof![field_values(CLASSES, &[2.0, 1e6], false), (2i64..12).prop_map(Value::from)],
        image_size in prop_oneof![field_values(SIZES, &[299.0], false), (75i64..=2048).prop_map(Value::from)],
        depth_multiplier in prop_oneof![field_values(&[0, 1, 4, 5], DEPTHS, true), (1e-3f64..=4.0).prop_map(Value::from)],
        min_depth in prop_oneof![field_values(MIN_DEPTHS, &[16.0], false), (1i64..=512).prop_map(Value::from)],
        dropout in prop_oneof![field_values(&[0, 1], DROPOUTS, true), (0.0f64..1.0).prop_map(Value::from)],
        aux_logits in prop_oneof![8 => any::<bool>().prop_map(Value::Bool), 1 => Just(json!(1)), 1 => Just(Value::Null)],
        labels in prop_oneof![
            12 => Just(None),
            4 => prop::collection::vec("[a-z]{1,6}", 0..8).prop_map(|l| Some(json!(l))),
            1 => Just(Some(json!("a,b,c"))),
            1 => Just(Some(json!([1, 2]))),
            1 => Just(Some(Value::Null)),
        ],
    ) {
        // None: the labels the number of classes needs, where it is a small integer.
        let labels = labels.unwrap_or_else(|| {
            let n = num_classes.as_i64().filter(|n| (1..=64).contains(n)).unwrap_or(1) - 1;
            json!((0..n).map(|i| format!("l{i}")).collect::<Vec<_>>())
        });
        let doc = json!({
            "format_version": 1, "run": "r", "step": 10, "labels": labels,
            "model": {
                "num_classes": num_classes, "image_size": image_size,
                "depth_multiplier": depth_multiplier, "min_depth": min_depth,
                "dropout": dropout, "aux_logits": aux_logits,
            },
            "bn_updates": 10, "examples_seen": 320, "weights": "checkpoints/r/model.ckpt-10.safetensors",
            "created_unix": 0,
        });
        let bytes = serde_json::to_vec(&doc).unwrap();
        let read = serde_json::from_slice::<CheckpointMeta>(&bytes);
        let typed = [&num_classes, &image_size, &min_depth].iter().all(|v| v.as_i64().is_some())
            && [&depth_multiplier, &dropout].iter().all(|v| v.is_number())
            && aux_logits.is_boolean()
            && labels.as_array().is_some_and(|l| l.iter().all(Value::is_string));
        prop_assert_eq!(read.is_ok(), typed, "{:?} for {}", read.as_ref().err(), doc);
        if let Ok(m) = read {
            let expected = within_bounds(&m.model) && m.labels.len() as i64 + 1 == m.model.num_classes;
            prop_assert_eq!(m.validate().is_ok(), expected);
        }
    }

    /// Any JSON as metadata, a checkpoint pointer or a best pointer: read
    /// or refused, never a panic; metadata that reads is then validated
    /// without a panic.
    #[test]
    fn any_json_is_read_or_refused(doc in json_values()) {
        let bytes = serde_json::to_vec(&doc).unwrap();
        if let Ok(m) = serde_json::from_slice::<CheckpointMeta>(&bytes) {
            let _ = m.validate();
        }
        let _ = serde_json::from_slice::<CheckpointPointer>(&bytes);
        let _ = serde_json::from_slice::<BestPointer>(&bytes);
    }

    /// Real metadata with bytes changed, cut or added: read or refused,
    /// never a panic.
    #[test]
    fn damaged_metadata_is_read_or_refused(
        c in valid_configs(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let labels = (1..c.num_classes).map(|i| format!("l{i}")).collect();
        let mut bytes = serde_json::to_vec(&meta(c, labels, 5)).unwrap();
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        if let Ok(m) = serde_json::from_slice::<CheckpointMeta>(&bytes) {
            let expected = within_bounds(&m.model) && m.labels.len() as i64 + 1 == m.model.num_classes;
            prop_assert_eq!(m.validate().is_ok(), expected);
        }
    }

    /// Steps are read back from the keys they were written under, and any
    /// other key gives a step or none, never a panic.
    #[test]
    fn steps_come_back_from_their_keys(run in "[A-Za-z0-9_-]{1,24}", step in any::<u64>(), other in any::<String>()) {
        prop_assert_eq!(checkpoint::step_of(&keys::checkpoint_metadata(&run, step)), Some(step));
        prop_assert_eq!(checkpoint::step_of(&keys::checkpoint_weights(&run, step)), Some(step));
        let _ = checkpoint::step_of(&other);
    }
}

#[test]
fn the_largest_shape_with_its_labels_is_accepted_and_one_more_class_is_not() {
    let c = ModelConfig {
        num_classes: i64::from(MAX_NUM_CLASSES),
        image_size: i64::from(MAX_IMAGE_SIZE),
        ..ModelConfig::tiny(2)
    };
    let labels: Vec<String> = (1..c.num_classes).map(|i| i.to_string()).collect();
    assert_eq!(meta(c.clone(), labels.clone(), 1).validate(), Ok(()));
    let more = ModelConfig { num_classes: c.num_classes + 1, ..c };
    let mut labels = labels;
    labels.push("one more".into());
    let err = meta(more, labels, 1).validate().unwrap_err();
    assert!(err.contains("num_classes = 100001"), "{err}");
}
