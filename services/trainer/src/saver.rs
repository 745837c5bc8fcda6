//! Writing and finding checkpoints in the store.
//!
//! Order of writes: weights, then metadata, then the run's `checkpoint`
//! pointer, then the `CheckpointReady` announcement. A crash at any point
//! leaves the previous pointer valid, so a restart resumes from a complete
//! checkpoint. Only the last `keep` checkpoints are kept, and the ones the
//! evaluator's `best` and `promoted` pointers name, whatever their age.

use bytes::Bytes;
use inception_core::nats::{NatsError, Streams};
use inception_core::shutdown::CancellationToken;
use inception_core::store::StoreError;
use inception_core::{keys, Store};
use inception_model::checkpoint::{self, CheckpointError, CheckpointMeta, CheckpointPointer};
use inception_proto::pipeline::CheckpointReady;
use inception_proto::Message;
use tch::Tensor;

#[derive(Debug, thiserror::Error)]
pub enum SaverError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Nats(#[from] NatsError),
    #[error("checkpoint {key}: {message}")]
    Corrupt { key: String, message: String },
}

/// Saves, prunes to `keep`, and announces. `tensors` are the model's and the optimizer's.
pub async fn save(
    store: &Store,
    streams: &Streams,
    meta: &CheckpointMeta,
    tensors: &[(String, Tensor)],
    keep: usize,
    shutdown: &CancellationToken,
) -> Result<(), SaverError> {
    write(store, meta, tensors, keep).await?;
    announce(streams, &meta.run, meta.step, shutdown).await?;
    metrics::counter!("inception_trainer_checkpoints_total").increment(1);
    tracing::info!("checkpoint {} written and announced", meta.weights);
    Ok(())
}

/// Writes the checkpoint (weights, metadata, pointer) and deletes those
/// beyond the newest `keep`, except the ones the run's `best` and
/// `promoted` point at.
pub async fn write(
    store: &Store,
    meta: &CheckpointMeta,
    tensors: &[(String, Tensor)],
    keep: usize,
) -> Result<(), SaverError> {
    let run = &meta.run;
    let weights = checkpoint::tensors_to_bytes(tensors)?;
    store.put(&meta.weights, Bytes::from(weights)).await?;
    let metadata_key = keys::checkpoint_metadata(run, meta.step);
    let json = serde_json::to_vec_pretty(meta)
        .map_err(|e| SaverError::Corrupt { key: metadata_key.clone(), message: e.to_string() })?;
    store.put(&metadata_key, Bytes::from(json)).await?;

    let mut all = checkpoint::read_pointer(store, run).await?.map(|p| p.all).unwrap_or_default();
    all.retain(|k| k != &metadata_key);
    all.push(metadata_key.clone());
    let dropped = match protected(store, run).await? {
        Some(keep_too) => prune(&mut all, keep, |k| keep_too.iter().any(|step| checkpoint::step_of(k) == Some(*step))),
        // Which one is best or promoted is unknown: delete none rather than perhaps it.
        None => prune(&mut all, keep, |_| true),
    };
    let pointer = CheckpointPointer { step: meta.step, metadata: metadata_key.clone(), all };
    let json = serde_json::to_vec_pretty(&pointer)
        .map_err(|e| SaverError::Corrupt { key: metadata_key.clone(), message: e.to_string() })?;
    store.put(&keys::checkpoint_pointer(run), Bytes::from(json)).await?;
    for old in dropped {
        if let Some(step) = checkpoint::step_of(&old) {
            store.delete(&keys::checkpoint_weights(run, step)).await?;
        }
        store.delete(&old).await?;
    }
    Ok(())
}

/// The steps of the checkpoints the `best` and `promoted` pointers name;
/// None when either pointer is unreadable (then nothing may be deleted).
async fn protected(store: &Store, run: &str) -> Result<Option<Vec<u64>>, SaverError> {
    let unreadable = |e: CheckpointError| match e {
        CheckpointError::Store(e) => Err(SaverError::from(e)),
        e => {
            tracing::warn!("{e}; no checkpoint is deleted until it is readable again");
            Ok(None)
        }
    };
    let best = match checkpoint::read_best(store, run).await {
        Ok(best) => best.map(|b| b.step),
        Err(e) => return unreadable(e),
    };
    let promoted = match checkpoint::read_promoted(store, run).await {
        Ok(promoted) => promoted.map(|p| p.step),
        Err(e) => return unreadable(e),
    };
    Ok(Some(best.into_iter().chain(promoted).collect()))
}

/// Splits off `all` (metadata keys, oldest first) the checkpoints to delete:
/// all but the newest `keep` (at least 1), except those `protected` names.
/// A protected one stays listed in `all`, so it is deleted by the first
/// save after it stops being protected (the best moved on).
fn prune(all: &mut Vec<String>, keep: usize, protected: impl Fn(&str) -> bool) -> Vec<String> {
    let excess = all.len().saturating_sub(keep.max(1));
    let newest = all.split_off(excess);
    let (kept, dropped): (Vec<String>, Vec<String>) = all.drain(..).partition(|k| protected(k));
    *all = kept.into_iter().chain(newest).collect();
    dropped
}

/// Announces the checkpoint of `step` (`CheckpointReady`), retried until
/// acknowledged. The message id is `<run>-<step>`, so announcing again (a
/// trainer that resumes from it, not knowing whether its predecessor got
/// that far) is harmless.
pub async fn announce(streams: &Streams, run: &str, step: u64, shutdown: &CancellationToken) -> Result<(), SaverError> {
    let message = CheckpointReady {
        run: run.to_string(),
        step,
        uri: keys::checkpoint_weights(run, step),
        metadata_uri: keys::checkpoint_metadata(run, step),
    };
    let id = format!("{run}-{step}");
    streams
        .publish_acked(&streams.subjects.checkpoints(run), Bytes::from(message.encode_to_vec()), &id, shutdown)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use inception_core::settings::StoreSettings;
    use inception_core::Settings;
    use inception_model::checkpoint::{BestPointer, PromotedPointer, FORMAT_VERSION};
    use inception_model::ModelConfig;

    fn keys_of(steps: &[u64]) -> Vec<String> {
        steps.iter().map(|&s| keys::checkpoint_metadata("r", s)).collect()
    }

    #[test]
    fn pruning_keeps_the_newest_and_the_protected() {
        let mut all = keys_of(&[1, 2, 3, 4]);
        assert_eq!(prune(&mut all, 2, |_| false), keys_of(&[1, 2]));
        assert_eq!(all, keys_of(&[3, 4]));

        let mut all = keys_of(&[1, 2, 3, 4]);
        let best = keys::checkpoint_metadata("r", 2);
        assert_eq!(prune(&mut all, 2, |k| k == best), keys_of(&[1]));
        assert_eq!(all, keys_of(&[2, 3, 4]), "the protected one stays listed, oldest first");
        // Once no longer protected, it goes at the next save.
        all.push(keys::checkpoint_metadata("r", 5));
        assert_eq!(prune(&mut all, 2, |_| false), keys_of(&[2, 3]));
        assert_eq!(all, keys_of(&[4, 5]));

        let mut few = keys_of(&[1]);
        assert!(prune(&mut few, 0, |_| false).is_empty(), "at least one is kept");
    }

    fn meta(step: u64) -> CheckpointMeta {
        CheckpointMeta {
            format_version: FORMAT_VERSION,
            run: "r".into(),
            step,
            labels: vec!["a".into()],
            model: ModelConfig::tiny(2),
            bn_updates: 0,
            examples_seen: 0,
            weights: keys::checkpoint_weights("r", step),
            created_unix: 0,
            lineage: Default::default(),
        }
    }

    async fn point_best_at(store: &Store, step: u64) {
        let best = BestPointer {
            step,
            metadata: keys::checkpoint_metadata("r", step),
            weights: keys::checkpoint_weights("r", step),
            precision_at_1: 0.9,
            validation_loss: 0.1,
        };
        store.put(&keys::checkpoint_best("r"), Bytes::from(serde_json::to_vec(&best).unwrap())).await.unwrap();
    }

    async fn stored_steps(store: &Store) -> Vec<u64> {
        let mut steps: Vec<u64> = store
            .list(&format!("{}/model.ckpt-", keys::checkpoint_dir("r")))
            .await
            .unwrap()
            .iter()
            .filter(|k| k.ends_with(".json"))
            .filter_map(|k| checkpoint::step_of(k))
            .collect();
        steps.sort_unstable();
        steps
    }

    #[tokio::test]
    async fn the_best_checkpoint_is_never_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let store = Store::open(&StoreSettings { url, ..Settings::defaults().unwrap().store }).unwrap();
        let tensors = vec![("w".to_string(), Tensor::from_slice(&[1.0f32, 2.0]))];
        for step in [10, 20] {
            write(&store, &meta(step), &tensors, 2).await.unwrap();
        }
        point_best_at(&store, 10).await;
        for step in [30, 40, 50] {
            write(&store, &meta(step), &tensors, 2).await.unwrap();
        }
        assert_eq!(stored_steps(&store).await, vec![10, 40, 50], "the best (10) and the newest 2");
        assert!(store.exists(&keys::checkpoint_weights("r", 10)).await.unwrap(), "its weights too");
        let pointer = checkpoint::read_pointer(&store, "r").await.unwrap().unwrap();
        assert_eq!(pointer.all, keys_of(&[10, 40, 50]));
        assert_eq!(pointer.metadata, keys::checkpoint_metadata("r", 50));

        // The best moves on: the old one goes at the next save.
        point_best_at(&store, 50).await;
        write(&store, &meta(60), &tensors, 2).await.unwrap();
        assert_eq!(stored_steps(&store).await, vec![50, 60]);
        assert!(!store.exists(&keys::checkpoint_weights("r", 10)).await.unwrap());

        // An unreadable best pointer: nothing is deleted.
        store.put(&keys::checkpoint_best("r"), Bytes::from_static(b"{ not json")).await.unwrap();
        write(&store, &meta(70), &tensors, 2).await.unwrap();
        write(&store, &meta(80), &tensors, 2).await.unwrap();
        assert_eq!(stored_steps(&store).await, vec![50, 60, 70, 80]);
    }

    #[tokio::test]
    async fn the_promoted_checkpoint_is_never_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let store = Store::open(&StoreSettings { url, ..Settings::defaults().unwrap().store }).unwrap();
        let tensors = vec![("w".to_string(), Tensor::from_slice(&[1.0f32, 2.0]))];
        let promoted = |step: u64| PromotedPointer {
            step,
            metadata: keys::checkpoint_metadata("r", step),
            weights: keys::checkpoint_weights("r", step),
            precision_at_1: 0.9,
            validation_loss: 0.1,
            examples: 100,
            promoted_unix: 0,
            previous_step: None,
            decision: keys::promotion_decision("r", step),
        };
        write(&store, &meta(10), &tensors, 1).await.unwrap();
        let json = serde_json::to_vec(&promoted(10)).unwrap();
        store.put(&keys::checkpoint_promoted("r"), Bytes::from(json)).await.unwrap();
        point_best_at(&store, 10).await;
        write(&store, &meta(20), &tensors, 1).await.unwrap();
        point_best_at(&store, 20).await;
        for step in [30, 40] {
            write(&store, &meta(step), &tensors, 1).await.unwrap();
        }
        assert_eq!(stored_steps(&store).await, vec![10, 20, 40], "the promoted (10), the best (20), the newest");
        store.put(&keys::checkpoint_promoted("r"), Bytes::from_static(b"[")).await.unwrap();
        write(&store, &meta(50), &tensors, 1).await.unwrap();
        assert_eq!(stored_steps(&store).await, vec![10, 20, 40, 50], "an unreadable pointer: nothing deleted");
    }
}
