//! The promotion gate with a real nats-server: a first checkpoint with
//! enough validation examples is promoted (pointer, announcement, decision
//! object); one whose recall of a label falls is rejected, naming the label,
//! and the pointer stays; a `--run-once` evaluation decides without NATS.

use bytes::Bytes;
use inception_core::local_nats::LocalNats;
use inception_core::nats::{self, Streams};
use inception_core::settings::StoreSettings;
use inception_core::shutdown::CancellationToken;
use inception_core::{keys, Settings, Store};
use inception_evaluator::promotion::{Decision, Verdict};
use inception_evaluator::Evaluator;
use inception_model::checkpoint::{self, CheckpointMeta};
use inception_model::{InceptionV3, ModelConfig};
use inception_proto::pipeline::CheckpointPromoted;
use inception_proto::Message;
use tch::nn::VarStore;
use tch::Tensor;

const CLASSES: i64 = 6;
const RUN: &str = "default";

fn labels() -> Vec<String> {
    inception_demo_data::DEMO_LABELS.iter().map(|s| s.to_string()).collect()
}

/// A tiny checkpoint whose logits are `bias` for every image (the final
/// layer's weights are zero): it predicts one label for all of them.
async fn put_constant_checkpoint(store: &Store, step: u64, bias: [f32; CLASSES as usize]) -> String {
    let vs = VarStore::new(tch::Device::Cpu);
    let _ = InceptionV3::new(&vs.root(), &ModelConfig::tiny(CLASSES));
    tch::no_grad(|| {
        let vars = vs.variables();
        let _ = vars["fc.weight"].shallow_clone().zero_();
        vars["fc.bias"].shallow_clone().copy_(&Tensor::from_slice(&bias));
    });
    let bytes = checkpoint::tensors_to_bytes(&vs.variables().into_iter().collect::<Vec<_>>()).unwrap();
    let meta = CheckpointMeta {
        format_version: checkpoint::FORMAT_VERSION,
        run: RUN.into(),
        step,
        labels: labels(),
        model: ModelConfig::tiny(CLASSES),
        bn_updates: 0,
        examples_seen: 0,
        weights: keys::checkpoint_weights(RUN, step),
        created_unix: 0,
        lineage: Default::default(),
    };
    store.put(&meta.weights, Bytes::from(bytes)).await.unwrap();
    let key = keys::checkpoint_metadata(RUN, step);
    store.put(&key, Bytes::from(serde_json::to_vec(&meta).unwrap())).await.unwrap();
    key
}

/// Logits that make label `label` (1-based) the prediction for every image.
fn predicting(label: usize) -> [f32; CLASSES as usize] {
    let mut bias = [0.0; CLASSES as usize];
    bias[label] = 1.0;
    bias
}

async fn decision(store: &Store, step: u64) -> Decision {
    serde_json::from_slice(&store.get(&keys::promotion_decision(RUN, step)).await.unwrap()).unwrap()
}

async fn announced(streams: &Streams) -> Vec<CheckpointPromoted> {
    let stream = streams.promotions().await.unwrap();
    let history = streams.history(&stream, &streams.subjects.promotions(RUN)).await.unwrap();
    history.iter().map(|p| CheckpointPromoted::decode(p.as_ref()).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_better_checkpoint_is_promoted_and_announced_a_regressing_one_is_rejected_naming_the_labels() {
    let dir = tempfile::tempdir().unwrap();
    let nats_server = LocalNats::start(&dir.path().join("nats")).unwrap();
    let mut settings = Settings::defaults().unwrap();
    settings.nats.url = nats_server.url();
    settings.dataset.name = "shapes".into();
    // Exact scores and losses of hand-set logits: in full precision (bf16,
    // the default on CPUs with bf16 instructions, rounds 0.3 to 0.30078).
    settings.eval.precision = inception_core::settings::PrecisionSetting::Fp32;
    settings.eval.num_examples = 0;
    settings.promotion.min_examples = 10;
    settings.promotion.max_recall_drop = 0.05;
    settings.promotion.min_precision_gain = 0.0;
    settings.store =
        StoreSettings { url: format!("file://{}", dir.path().join("store").display()), ..settings.store.clone() };
    let store = Store::open(&settings.store).unwrap();
    // 10 validation images, 2 of each of the 5 labels.
    let images = dir.path().join("images");
    inception_demo_data::generate(&images, 0, 2, 1).unwrap();
    let (shard, written) = inception_demo_data::shard_of_folder(&images.join("validation"), &labels()).unwrap();
    assert_eq!(written, 10);
    store.put_new(&keys::shard("shapes", "validation", 0, 1), Bytes::from(shard)).await.unwrap();
    let client = nats::connect(&settings.nats, "test", &CancellationToken::new()).await.unwrap();
    let streams = Streams::new(client, &settings.nats.subject_prefix);
    streams.evals().await.unwrap(); // as the evaluator's watch makes it
    let mut evaluator = Evaluator::new(settings.clone(), store.clone()).unwrap();

    // The first: precision@1 0.2 (label 1 for all), 10 examples: promoted.
    let first = put_constant_checkpoint(&store, 10, predicting(1)).await;
    evaluator.evaluate_and_report(&streams, &first, false).await.unwrap().expect("evaluated");
    let promoted = checkpoint::read_promoted(&store, RUN).await.unwrap().expect("a promoted pointer");
    assert_eq!((promoted.step, promoted.metadata.as_str(), promoted.previous_step), (10, first.as_str(), None));
    assert_eq!(promoted.decision, keys::promotion_decision(RUN, 10));
    let d = decision(&store, 10).await;
    assert_eq!(d.decision, Verdict::Promoted, "{d:?}");
    assert!(d.announced && d.promoted.is_none());
    let messages = announced(&streams).await;
    assert_eq!(messages.len(), 1);
    assert_eq!((messages[0].step, messages[0].previous_step), (10, 0));
    assert_eq!(messages[0].metadata_uri, first);

    // As precise (0.2), but label 1's recall falls from 1 to 0: rejected, naming it.
    let second = put_constant_checkpoint(&store, 20, predicting(2)).await;
    evaluator.evaluate_and_report(&streams, &second, false).await.unwrap().expect("evaluated");
    let d = decision(&store, 20).await;
    assert_eq!(d.decision, Verdict::Rejected, "{d:?}");
    let named: Vec<&str> = d.regressed.iter().map(|r| r.label.as_str()).collect();
    assert_eq!(named, vec![labels()[0].as_str()]);
    assert!(d.reasons.iter().any(|r| r.contains(&labels()[0]) && r.contains("max_recall_drop")), "{:?}", d.reasons);
    assert!(!d.announced);
    assert_eq!(checkpoint::read_promoted(&store, RUN).await.unwrap().map(|p| p.step), Some(10), "unchanged");
    assert_eq!(announced(&streams).await.len(), 1, "a rejection is not announced");

    // With the recall rule relaxed, a --run-once evaluation (no NATS) promotes
    // the latest checkpoint but cannot announce it; the decision says so.
    let mut relaxed = settings.clone();
    relaxed.promotion.max_recall_drop = 1.0;
    store
        .put(
            &keys::checkpoint_pointer(RUN),
            Bytes::from(
                serde_json::to_vec(&checkpoint::CheckpointPointer {
                    step: 20,
                    metadata: second.clone(),
                    all: vec![first.clone(), second.clone()],
                })
                .unwrap(),
            ),
        )
        .await
        .unwrap();
    let mut once = Evaluator::new(relaxed, store.clone()).unwrap();
    once.run_once(None).await.unwrap().expect("evaluated");
    let d = decision(&store, 20).await;
    assert_eq!((d.decision, d.announced), (Verdict::Promoted, false), "{d:?}");
    let promoted = checkpoint::read_promoted(&store, RUN).await.unwrap().unwrap();
    assert_eq!((promoted.step, promoted.previous_step), (20, Some(10)));
    assert_eq!(announced(&streams).await.len(), 1, "--run-once cannot announce");

    // Evaluating the promoted checkpoint again decides nothing new.
    let again = evaluator.evaluate(&second).await.unwrap();
    assert!(evaluator.gate(Some(&streams), &again).await.unwrap().is_none());
    assert_eq!(announced(&streams).await.len(), 2, "announced again by the evaluator with NATS");
}
