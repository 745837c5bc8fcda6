//! Each checkpoint is evaluated once, also across restarts; an unreadable
//! checkpoint is reported, skipped and not retried; the evaluator keeps going.

use bytes::Bytes;
use inception_core::local_nats::LocalNats;
use inception_core::nats::{self, Streams};
use inception_core::settings::StoreSettings;
use inception_core::shutdown::CancellationToken;
use inception_core::{keys, Settings, Store};
use inception_evaluator::{EvalError, Evaluator};
use inception_model::checkpoint::{self, CheckpointMeta};
use inception_model::{InceptionV3, ModelConfig};
use tch::nn::VarStore;

async fn put_checkpoint(store: &Store, step: u64, weights: Option<Vec<u8>>) -> String {
    let model = ModelConfig::tiny(6);
    let bytes = weights.unwrap_or_else(|| {
        let vs = VarStore::new(tch::Device::Cpu);
        let _ = InceptionV3::new(&vs.root(), &model);
        checkpoint::tensors_to_bytes(&vs.variables().into_iter().collect::<Vec<_>>()).unwrap()
    });
    let meta = CheckpointMeta {
        format_version: checkpoint::FORMAT_VERSION,
        run: "default".into(),
        step,
        labels: inception_demo_data::DEMO_LABELS.iter().map(|s| s.to_string()).collect(),
        model,
        bn_updates: 0,
        examples_seen: 0,
        weights: keys::checkpoint_weights("default", step),
        created_unix: 0,
    };
    store.put(&meta.weights, Bytes::from(bytes)).await.unwrap();
    let key = keys::checkpoint_metadata("default", step);
    store.put(&key, Bytes::from(serde_json::to_vec(&meta).unwrap())).await.unwrap();
    key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_per_checkpoint_and_bad_checkpoints_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let nats_server = LocalNats::start(&dir.path().join("nats")).unwrap();
    let mut settings = Settings::defaults().unwrap();
    settings.nats.url = nats_server.url();
    settings.dataset.name = "shapes".into();
    settings.eval.num_examples = 0;
    settings.store =
        StoreSettings { url: format!("file://{}", dir.path().join("store").display()), ..settings.store.clone() };
    let store = Store::open(&settings.store).unwrap();

    // Validation shards as ingest writes them.
    let images = dir.path().join("images");
    inception_demo_data::generate(&images, 0, 2, 1).unwrap();
    let (shard, written) =
        inception_demo_data::shard_of_folder(&images.join("validation"), &settings_labels()).unwrap();
    assert_eq!(written, 10);
    store.put_new(&keys::shard("shapes", "validation", 0, 1), Bytes::from(shard)).await.unwrap();

    let client = nats::connect(&settings.nats, "test", &CancellationToken::new()).await.unwrap();
    let streams = Streams::new(client, &settings.nats.subject_prefix);
    streams.evals().await.unwrap();

    let good = put_checkpoint(&store, 10, None).await;
    let mut evaluator = Evaluator::new(settings.clone(), store.clone()).unwrap();
    let first = evaluator.evaluate_and_report(&streams, &good, false).await.unwrap().expect("evaluated");
    assert_eq!((first.step, first.examples), (10, 10));
    assert!(store.exists(&keys::eval_result("default", 10)).await.unwrap());
    assert!(evaluator.evaluate_and_report(&streams, &good, false).await.unwrap().is_none(), "not twice");

    // A restarted evaluator remembers through the result object.
    let mut restarted = Evaluator::new(settings.clone(), store.clone()).unwrap();
    assert!(restarted.evaluate_and_report(&streams, &good, false).await.unwrap().is_none());

    // Unreadable weights: a clear error once, then skipped; the next good one is evaluated.
    let bad = put_checkpoint(&store, 20, Some(b"not safetensors".to_vec())).await;
    let err = restarted.evaluate_and_report(&streams, &bad, false).await.unwrap_err();
    assert!(matches!(err, EvalError::Checkpoint { .. }), "{err}");
    assert!(err.to_string().contains("model.ckpt-20"), "{err}");
    assert!(restarted.evaluate_and_report(&streams, &bad, false).await.unwrap().is_none(), "not retried");
    let next = put_checkpoint(&store, 30, None).await;
    assert_eq!(restarted.evaluate_and_report(&streams, &next, false).await.unwrap().map(|e| e.step), Some(30));
}

fn settings_labels() -> Vec<String> {
    inception_demo_data::DEMO_LABELS.iter().map(|s| s.to_string()).collect()
}
