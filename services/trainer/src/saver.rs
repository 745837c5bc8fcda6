//! Writing and finding checkpoints in the store.
//!
//! Order of writes: weights, then metadata, then the run's `checkpoint`
//! pointer, then the `CheckpointReady` announcement. A crash at any point
//! leaves the previous pointer valid, so a restart resumes from a complete
//! checkpoint. Only the last `keep` checkpoints are kept.

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
    let dropped: Vec<String> =
        if all.len() > keep.max(1) { all.drain(..all.len() - keep.max(1)).collect() } else { Vec::new() };
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

    announce(streams, run, meta.step, shutdown).await?;
    metrics::counter!("inception_trainer_checkpoints_total").increment(1);
    tracing::info!("checkpoint {} written and announced", meta.weights);
    Ok(())
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
