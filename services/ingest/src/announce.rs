//! `inception-ingest --announce-only`: announces the shards already in the
//! store, each with the records it really holds, so that a dataset ingested
//! without NATS (`--no-announce`, `ingest.announce = false`) can join a
//! pipeline later. Announcing twice is harmless: a preprocess worker ignores
//! a shard it knows, and JetStream drops a repeat within its duplicate
//! window (the message id is the shard's key, as ingest's own).

use inception_core::{keys, Settings, Store};
use inception_proto::pipeline::ShardReady;

use crate::continuous::Announcer;
use crate::labels::{self, is_shard_name};
use crate::IngestError;

/// What [`announce_stored`] announced.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Announced {
    /// Shards announced, by key.
    pub shards: Vec<String>,
    /// Their records, summed.
    pub records: u64,
    /// Shards left out because they hold no record.
    pub empty: Vec<String>,
}

/// Announces every shard of the dataset in the store (split, index and
/// count from its name, records counted in it, labels from `labels.txt`).
/// A damaged shard is an error (what it holds cannot be told); a dataset
/// with no shard or no `labels.txt` is one too.
pub async fn announce_stored<A: Announcer>(
    settings: &Settings,
    store: &Store,
    announcer: &A,
) -> Result<Announced, IngestError> {
    let dataset = &settings.dataset.name;
    let labels_key = keys::labels(dataset);
    let labels = match store.get(&labels_key).await {
        Ok(bytes) => labels::parse(&String::from_utf8_lossy(&bytes), &labels_key)?,
        Err(e) => {
            return Err(IngestError::Input { path: labels_key, message: format!("{e}; ingest the dataset first") })
        }
    };
    let dir = format!("{}/", keys::dataset_dir(dataset));
    let shards: Vec<(String, ShardName)> = store
        .list(&dir)
        .await?
        .into_iter()
        .filter_map(|key| {
            let name = key.strip_prefix(&dir).filter(|n| is_shard_name(n)).and_then(ShardName::parse)?;
            Some((key, name))
        })
        .collect();
    if shards.is_empty() {
        return Err(IngestError::Input { path: dir, message: "no shard to announce; ingest the dataset first".into() });
    }
    let mut announced = Announced::default();
    for (key, name) in shards {
        let records = crate::records_in(&key, &store.get(&key).await?)? as u64;
        if records == 0 {
            tracing::warn!("{key} holds no record: not announced");
            announced.empty.push(key);
            continue;
        }
        let message = ShardReady {
            dataset: dataset.clone(),
            split: name.split,
            uri: key.clone(),
            records,
            labels: labels.clone(),
            shard_index: name.index,
            num_shards: name.total,
        };
        announcer.announce(&message).await?;
        tracing::info!("announced {key} ({records} records)");
        announced.records += records;
        announced.shards.push(key);
    }
    Ok(announced)
}

/// What a shard's name tells: `<split>-00003-of-00008` or `<split>-live-00000042`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ShardName {
    split: String,
    index: u32,
    /// 0 for a continuous ingest's shard (as continuous ingest announces it).
    total: u32,
}

impl ShardName {
    fn parse(name: &str) -> Option<Self> {
        let (rest, last) = name.rsplit_once('-')?;
        if let Some(split) = rest.strip_suffix("-live") {
            return Some(Self { split: split.to_string(), index: last.parse().ok()?, total: 0 });
        }
        let (split, index) = rest.strip_suffix("-of")?.rsplit_once('-')?;
        Some(Self { split: split.to_string(), index: index.parse().ok()?, total: last.parse().ok()? })
    }
}

#[cfg(test)]
mod tests {
    use super::ShardName;

    #[test]
    fn shard_names_give_split_index_and_count() {
        let n = ShardName::parse("train-00003-of-00008").unwrap();
        assert_eq!((n.split.as_str(), n.index, n.total), ("train", 3, 8));
        let n = ShardName::parse("validation-live-00000042").unwrap();
        assert_eq!((n.split.as_str(), n.index, n.total), ("validation", 42, 0));
        assert_eq!(ShardName::parse("labels.txt"), None);
    }
}
