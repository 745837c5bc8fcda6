//! Each checkpoint is evaluated once, also across restarts; an unreadable
//! checkpoint, or one whose logits are NaN, is reported, skipped, not
//! retried and never scored; the evaluator keeps going. The run's `best`
//! pointer follows the best evaluation.

use bytes::Bytes;
use inception_core::local_nats::LocalNats;
use inception_core::nats::{self, Streams};
use inception_core::settings::StoreSettings;
use inception_core::shutdown::CancellationToken;
use inception_core::{keys, Settings, Store};
use inception_evaluator::{classify, EvalError, Evaluation, Evaluator};
use inception_model::checkpoint::{self, BestPointer, CheckpointMeta};
use inception_model::{InceptionV3, ModelConfig};
use inception_proto::pipeline::EvalResult;
use inception_proto::Message;
use tch::nn::VarStore;
use tch::Tensor;

const CLASSES: i64 = 6;

async fn put_checkpoint(store: &Store, step: u64, weights: Option<Vec<u8>>) -> String {
    let model = ModelConfig::tiny(CLASSES);
    let bytes = weights.unwrap_or_else(|| model_bytes(|_| {}));
    let meta = CheckpointMeta {
        format_version: checkpoint::FORMAT_VERSION,
        run: "default".into(),
        step,
        labels: settings_labels(),
        model,
        bn_updates: 0,
        examples_seen: 0,
        weights: keys::checkpoint_weights("default", step),
        created_unix: 0,
        lineage: Default::default(),
    };
    store.put(&meta.weights, Bytes::from(bytes)).await.unwrap();
    let key = keys::checkpoint_metadata("default", step);
    store.put(&key, Bytes::from(serde_json::to_vec(&meta).unwrap())).await.unwrap();
    key
}

/// The safetensors of a fresh tiny model after `edit` changed its variables.
fn model_bytes(edit: impl Fn(&std::collections::HashMap<String, Tensor>)) -> Vec<u8> {
    let vs = VarStore::new(tch::Device::Cpu);
    let _ = InceptionV3::new(&vs.root(), &ModelConfig::tiny(CLASSES));
    tch::no_grad(|| edit(&vs.variables()));
    checkpoint::tensors_to_bytes(&vs.variables().into_iter().collect::<Vec<_>>()).unwrap()
}

/// A model whose logits are `bias` for every image: the final layer's
/// weights are zero, so its scores can be worked out by hand.
fn constant_logits(bias: [f32; CLASSES as usize]) -> Vec<u8> {
    model_bytes(|vars| {
        let _ = vars["fc.weight"].shallow_clone().zero_();
        vars["fc.bias"].shallow_clone().copy_(&Tensor::from_slice(&bias));
    })
}

/// The mean cross-entropy of constant logits `bias` over the validation
/// set of `setup` (2 images of each of labels 1..=5), by its definition.
fn expected_loss(bias: [f32; CLASSES as usize]) -> f64 {
    let log_sum: f64 = bias.iter().map(|&b| f64::from(b).exp()).sum::<f64>().ln();
    (1..CLASSES as usize).map(|label| 2.0 * (log_sum - f64::from(bias[label]))).sum::<f64>() / 10.0
}

struct Setup {
    _dir: tempfile::TempDir,
    _nats: LocalNats,
    settings: Settings,
    store: Store,
    streams: Streams,
}

/// NATS, a store with a validation shard of 10 images (2 per demo label).
async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let nats_server = LocalNats::start(&dir.path().join("nats")).unwrap();
    let mut settings = Settings::defaults().unwrap();
    settings.nats.url = nats_server.url();
    settings.dataset.name = "shapes".into();
    // Exact scores and losses of hand-set logits: in full precision (bf16,
    // the default on CPUs with bf16 instructions, rounds 0.3 to 0.30078).
    settings.eval.precision = inception_core::settings::PrecisionSetting::Fp32;
    settings.eval.num_examples = 0;
    settings.eval.tensorboard_dir = dir.path().join("tensorboard").display().to_string();
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
    Setup { _dir: dir, _nats: nats_server, settings, store, streams }
}

/// The steps of every `EvalResult` announced for the run.
async fn announced_steps(streams: &Streams) -> Vec<u64> {
    let stream = streams.evals().await.unwrap();
    let history = streams.history(&stream, &streams.subjects.evals("default")).await.unwrap();
    history.iter().map(|p| EvalResult::decode(p.as_ref()).unwrap().step).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_per_checkpoint_and_bad_checkpoints_are_skipped() {
    let Setup { settings, store, streams, .. } = &setup().await;

    let good = put_checkpoint(store, 10, None).await;
    let mut evaluator = Evaluator::new(settings.clone(), store.clone()).unwrap();
    let first = evaluator.evaluate_and_report(streams, &good, false).await.unwrap().expect("evaluated");
    assert_eq!((first.step, first.examples), (10, 10));
    assert!(store.exists(&keys::eval_result("default", 10)).await.unwrap());
    assert!(evaluator.evaluate_and_report(streams, &good, false).await.unwrap().is_none(), "not twice");

    // A restarted evaluator remembers through the result object.
    let mut restarted = Evaluator::new(settings.clone(), store.clone()).unwrap();
    assert!(restarted.evaluate_and_report(streams, &good, false).await.unwrap().is_none());

    // Unreadable weights: a clear error once, then skipped; the next good one is evaluated.
    let bad = put_checkpoint(store, 20, Some(b"not safetensors".to_vec())).await;
    let err = restarted.evaluate_and_report(streams, &bad, false).await.unwrap_err();
    assert!(matches!(err, EvalError::Checkpoint { .. }), "{err}");
    assert!(err.to_string().contains("model.ckpt-20"), "{err}");
    assert!(restarted.evaluate_and_report(streams, &bad, false).await.unwrap().is_none(), "not retried");
    let next = put_checkpoint(store, 30, None).await;
    assert_eq!(restarted.evaluate_and_report(streams, &next, false).await.unwrap().map(|e| e.step), Some(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nan_weights_are_refused_and_never_scored() {
    let Setup { settings, store, streams, .. } = &setup().await;
    let mut evaluator = Evaluator::new(settings.clone(), store.clone()).unwrap();
    let good = put_checkpoint(store, 10, Some(constant_logits([0.0, 1.0, 0.0, 0.0, 0.0, 0.0]))).await;
    evaluator.evaluate_and_report(streams, &good, false).await.unwrap().expect("evaluated");
    let best_before = checkpoint::read_best(store, "default").await.unwrap().expect("a best pointer");

    // NaN in the last layer makes every logit NaN; in_top_k alone would
    // count each example as a hit and score precision@1 = 1.0.
    let nan = model_bytes(|vars| {
        let _ = vars["fc.weight"].shallow_clone().fill_(f64::NAN);
    });
    let diverged = put_checkpoint(store, 20, Some(nan)).await;
    let err = evaluator.evaluate_and_report(streams, &diverged, false).await.unwrap_err();
    assert!(matches!(err, EvalError::NonFinite { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("checkpoints/default/model.ckpt-20.json") && text.contains("NaN or infinite"), "{text}");
    assert!(!store.exists(&keys::eval_result("default", 20)).await.unwrap(), "no result object");
    assert_eq!(announced_steps(streams).await, vec![10], "no EvalResult for it");
    assert_eq!(checkpoint::read_best(store, "default").await.unwrap(), Some(best_before), "best untouched");
    assert!(evaluator.evaluate_and_report(streams, &diverged, false).await.unwrap().is_none(), "not retried");

    // Infinite weights too; and the evaluator goes on with the next good one.
    let infinite = model_bytes(|vars| {
        let _ = vars["fc.bias"].shallow_clone().fill_(f64::INFINITY);
    });
    let inf = put_checkpoint(store, 30, Some(infinite)).await;
    let err = evaluator.evaluate_and_report(streams, &inf, false).await.unwrap_err();
    assert!(matches!(err, EvalError::NonFinite { .. }), "{err:?}");
    let next = put_checkpoint(store, 40, None).await;
    let scored = evaluator.evaluate_and_report(streams, &next, false).await.unwrap().expect("evaluated");
    assert!(scored.validation_loss.is_finite());
    assert_eq!(announced_steps(streams).await, vec![10, 40]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_evaluation_has_scores_by_label_and_a_validation_loss() {
    let Setup { settings, store, streams, .. } = &setup().await;
    let mut evaluator = Evaluator::new(settings.clone(), store.clone()).unwrap();
    // Every image predicted as label 1 (daisy).
    let bias = [0.0, 1.0, 0.0, 0.0, 0.0, 0.0];
    let key = put_checkpoint(store, 10, Some(constant_logits(bias))).await;
    let e = evaluator.evaluate_and_report(streams, &key, false).await.unwrap().expect("evaluated");
    assert_eq!(e.precision_at_1, 0.2, "2 daisies of 10");
    assert!((e.validation_loss - expected_loss(bias)).abs() < 1e-5, "{} vs {}", e.validation_loss, expected_loss(bias));
    let labels = settings_labels();
    assert_eq!(e.confusion.labels, labels, "no background: nobody is predicted as it");
    let daisy_column: Vec<Vec<u64>> = (0..5).map(|_| vec![2, 0, 0, 0, 0]).collect();
    assert_eq!(e.confusion.counts, daisy_column);
    let daisy = &e.classes[0];
    assert_eq!((daisy.label.as_str(), daisy.examples, daisy.predicted), (labels[0].as_str(), 2, 10));
    assert_eq!((daisy.precision, daisy.recall), (Some(0.2), Some(1.0)));
    for other in &e.classes[1..] {
        assert_eq!((other.precision, other.recall, other.examples), (None, Some(0.0), 2), "{other:?}");
    }
    assert_eq!(e.weights, keys::checkpoint_weights("default", 10));

    // The result object carries it all; the announcement the loss.
    let stored: serde_json::Value =
        serde_json::from_slice(&store.get(&keys::eval_result("default", 10)).await.unwrap()).unwrap();
    assert_eq!(stored["classes"][0]["precision"], 0.2);
    assert!(stored["classes"][1]["precision"].is_null(), "{stored}");
    assert_eq!(stored["confusion"]["counts"][3][0], 2);
    let back: Evaluation = serde_json::from_value(stored).unwrap();
    assert_eq!((back.classes.len(), &back.confusion), (5, &e.confusion));
    let stream = streams.evals().await.unwrap();
    let history = streams.history(&stream, &streams.subjects.evals("default")).await.unwrap();
    let announced = EvalResult::decode(history[0].as_ref()).unwrap();
    assert_eq!(announced.validation_loss, e.validation_loss);

    // TensorBoard: the loss, scalars by label, the matrix as text.
    let events = std::fs::read_dir(&settings.eval.tensorboard_dir).unwrap().next().unwrap().unwrap().path();
    let bytes = std::fs::read(events).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    for tag in ["validation_loss", &format!("precision/{}", labels[0]), &format!("recall/{}", labels[1])] {
        assert!(text.contains(tag), "no {tag} in the event file");
    }
    assert!(!text.contains(&format!("precision/{}", labels[1])), "undefined precision is left out");
    assert!(text.contains("confusion_matrix") && text.contains(&format!("| **{}** | 2 |", labels[1])));
}

/// Evaluates a new checkpoint at `step` whose logits are `bias` for every image.
async fn evaluate_constant(
    evaluator: &mut Evaluator,
    store: &Store,
    streams: &Streams,
    step: u64,
    bias: [f32; CLASSES as usize],
) -> Evaluation {
    let key = put_checkpoint(store, step, Some(constant_logits(bias))).await;
    evaluator.evaluate_and_report(streams, &key, false).await.unwrap().expect("evaluated")
}

async fn best(store: &Store) -> BestPointer {
    checkpoint::read_best(store, "default").await.unwrap().expect("a best pointer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn best_follows_precision_then_the_lower_loss() {
    let Setup { settings, store, streams, .. } = &setup().await;
    let mut evaluator = Evaluator::new(settings.clone(), store.clone()).unwrap();
    let ev = &mut evaluator;
    assert!(checkpoint::read_best(store, "default").await.unwrap().is_none());
    let err = classify::metadata_key(store, "default", "best").await.unwrap_err();
    assert!(err.contains("checkpoints/default/best not found"), "{err}");

    // Everything predicted as background: precision@1 0, the first best.
    let e = evaluate_constant(ev, store, streams, 10, [5.0, 0.0, 0.0, 0.0, 0.0, 0.0]).await;
    assert_eq!(e.precision_at_1, 0.0);
    assert_eq!(
        best(store).await,
        BestPointer {
            step: 10,
            metadata: keys::checkpoint_metadata("default", 10),
            weights: keys::checkpoint_weights("default", 10),
            precision_at_1: 0.0,
            validation_loss: e.validation_loss,
        }
    );
    // Higher precision@1 (0.2) replaces it.
    let daisy = [0.0, 1.0, 0.0, 0.0, 0.0, 0.0];
    assert_eq!(evaluate_constant(ev, store, streams, 20, daisy).await.precision_at_1, 0.2);
    assert_eq!(best(store).await.step, 20);
    assert!((best(store).await.validation_loss - expected_loss(daisy)).abs() < 1e-5);
    // Lower precision@1 does not, even with a lower loss.
    let faint_background = [0.1, 0.0, 0.0, 0.0, 0.0, 0.0];
    assert!(expected_loss(faint_background) < expected_loss(daisy));
    assert_eq!(evaluate_constant(ev, store, streams, 30, faint_background).await.precision_at_1, 0.0);
    assert_eq!(best(store).await.step, 20);
    // A tie with a higher loss does not; a tie with a lower loss does.
    let sure_daisy = [0.0, 3.0, 0.0, 0.0, 0.0, 0.0];
    let gentle_daisy = [0.0, 0.3, 0.0, 0.0, 0.0, 0.0];
    assert!(expected_loss(sure_daisy) > expected_loss(daisy) && expected_loss(gentle_daisy) < expected_loss(daisy));
    assert_eq!(evaluate_constant(ev, store, streams, 40, sure_daisy).await.precision_at_1, 0.2);
    assert_eq!(best(store).await.step, 20);
    assert_eq!(evaluate_constant(ev, store, streams, 50, gentle_daisy).await.precision_at_1, 0.2);
    assert_eq!(best(store).await.step, 50);

    // A best whose checkpoint is gone (deleted by hand) is replaced by the next evaluation.
    store.delete(&keys::checkpoint_weights("default", 50)).await.unwrap();
    let e = evaluate_constant(ev, store, streams, 60, faint_background).await;
    assert_eq!(best(store).await.step, 60);
    // A checkpoint gone by the time it is scored is never pointed at, however good.
    let gone = Evaluation {
        step: 70,
        checkpoint: keys::checkpoint_metadata("default", 70),
        weights: keys::checkpoint_weights("default", 70),
        precision_at_1: 1.0,
        ..e
    };
    assert!(!ev.update_best(&gone).await.unwrap());
    assert_eq!(best(store).await.step, 60);

    // `inception classify --checkpoint best` follows it.
    assert_eq!(
        classify::metadata_key(store, "default", "best").await.unwrap(),
        keys::checkpoint_metadata("default", 60)
    );
    let classifier = classify::Classifier::load(store, "default", "best", tch::Device::Cpu).await.unwrap();
    assert_eq!(classifier.meta().step, 60);
    assert_eq!(
        classify::metadata_key(store, "default", "latest").await.unwrap_err(),
        format!("run \"default\" has no checkpoint ({} not found)", keys::checkpoint_pointer("default"))
    );
}

fn settings_labels() -> Vec<String> {
    inception_demo_data::DEMO_LABELS.iter().map(|s| s.to_string()).collect()
}
