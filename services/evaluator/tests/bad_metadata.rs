//! Checkpoint metadata out of bounds (`num_classes = 1e9`, 100000 px images,
//! a depth multiplier of a million, a label count that is not the model's)
//! is refused, naming the field, before any weight is read or any model is
//! built: `inception classify` reports it and the evaluator marks the
//! checkpoint bad (no retry) instead of allocating the model and aborting,
//! which crash-looped it.

use bytes::Bytes;
use inception_core::settings::StoreSettings;
use inception_core::{keys, Settings, Store};
use inception_evaluator::{classify::Classifier, EvalError, Evaluator};
use inception_model::checkpoint::{self, CheckpointMeta};
use inception_model::ModelConfig;

/// Metadata of a checkpoint at `step` with `model`; its weights object is
/// never written, so only the metadata can be the reason for an error.
async fn put_metadata(store: &Store, step: u64, model: ModelConfig, labels: usize) -> String {
    let meta = CheckpointMeta {
        format_version: checkpoint::FORMAT_VERSION,
        run: "default".into(),
        step,
        labels: (0..labels).map(|i| format!("label{i}")).collect(),
        model,
        bn_updates: 0,
        examples_seen: 0,
        weights: keys::checkpoint_weights("default", step),
        created_unix: 0,
        lineage: Default::default(),
    };
    let key = keys::checkpoint_metadata("default", step);
    store.put(&key, Bytes::from(serde_json::to_vec(&meta).expect("json"))).await.expect("metadata written");
    key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_bounds_metadata_is_refused_before_a_model_is_built() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = Settings::defaults().expect("defaults");
    settings.store =
        StoreSettings { url: format!("file://{}", dir.path().join("store").display()), ..settings.store.clone() };
    let store = Store::open(&settings.store).expect("store");
    let tiny = ModelConfig::tiny(6);
    let cases = [
        (ModelConfig { num_classes: 1_000_000_000, ..tiny.clone() }, 5, "num_classes = 1000000000"),
        (ModelConfig { image_size: 100_000, ..tiny.clone() }, 5, "image_size = 100000"),
        (ModelConfig { depth_multiplier: 1e6, ..tiny.clone() }, 5, "depth_multiplier = 1000000"),
        (ModelConfig { min_depth: 1_000_000_000, ..tiny.clone() }, 5, "min_depth = 1000000000"),
        (tiny.clone(), 99, "99 labels"),
    ];
    let mut evaluator = Evaluator::new(settings.clone(), store.clone()).expect("evaluator");
    for (i, (model, labels, wanted)) in cases.into_iter().enumerate() {
        let key = put_metadata(&store, 10 * (i as u64 + 1), model, labels).await;
        let err = Classifier::load(&store, "default", &key, tch::Device::Cpu).await.err().expect("refused");
        assert!(err.contains(&key) && err.contains(wanted), "{wanted:?} missing from: {err}");
        match evaluator.evaluate(&key).await {
            Err(e @ EvalError::Checkpoint { .. }) => assert!(e.to_string().contains(wanted), "{e}"),
            Err(e) => panic!("not a checkpoint error (it would be retried): {e}"),
            Ok(_) => panic!("{key} evaluated"),
        }
    }
}
