//! The one check of a shard announcement (`ShardReady`) before anything is
//! taken from it. Preprocess workers read only the shards it accepts and the
//! trainer counts only their records toward an epoch, so an announcement
//! refused by one changes nothing in the other either.

use crate::keys;
use crate::limits::MAX_SHARD_RECORDS;
use inception_proto::pipeline::ShardReady;

/// Why a shard announcement is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardRefused {
    /// Its object is outside the dataset's folder, or its key contains `..`.
    #[error("{uri} is outside {dir}/")]
    Outside {
        /// The announced object key.
        uri: String,
        /// The dataset's folder.
        dir: String,
    },
    /// Inside the dataset's folder, but not a train shard (`train-…` directly in it).
    #[error("{uri} is not a train shard of {dataset}")]
    NotTrain {
        /// The announced object key.
        uri: String,
        /// The dataset.
        dataset: String,
    },
    /// It claims more records than a shard may hold ([`MAX_SHARD_RECORDS`]).
    #[error("{uri} claims {records} records, more than a shard may hold ({MAX_SHARD_RECORDS})")]
    TooManyRecords {
        /// The announced object key.
        uri: String,
        /// The records it claims.
        records: u64,
    },
}

/// Accepts an announced train shard of `dataset`: its key lies directly in
/// `datasets/<dataset>/` and starts with `train-` (so no message can point a
/// worker at an arbitrary object), and it claims at most
/// [`MAX_SHARD_RECORDS`] records (so no message can make an epoch of
/// 2^64 - 1 examples).
pub fn accept_train_shard(shard: &ShardReady, dataset: &str) -> Result<(), ShardRefused> {
    let dir = keys::dataset_dir(dataset);
    let uri = || shard.uri.clone();
    let name = keys::below(&shard.uri, &dir).ok_or_else(|| ShardRefused::Outside { uri: uri(), dir: dir.clone() })?;
    if name.contains('/') || !name.starts_with("train-") {
        return Err(ShardRefused::NotTrain { uri: uri(), dataset: dataset.to_string() });
    }
    if shard.records > MAX_SHARD_RECORDS {
        return Err(ShardRefused::TooManyRecords { uri: uri(), records: shard.records });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(uri: &str, records: u64) -> ShardReady {
        ShardReady { uri: uri.into(), records, ..Default::default() }
    }

    #[test]
    fn only_this_datasets_train_shards_of_a_sane_size_are_accepted() {
        assert_eq!(accept_train_shard(&shard("datasets/flowers/train-00000-of-00002", 3), "flowers"), Ok(()));
        assert_eq!(accept_train_shard(&shard("datasets/flowers/train-live-00000007", 0), "flowers"), Ok(()));
        let max = shard("datasets/flowers/train-00000-of-00002", MAX_SHARD_RECORDS);
        assert_eq!(accept_train_shard(&max, "flowers"), Ok(()));
        for (uri, why) in [
            ("datasets/flowers/validation-00000-of-00002", "is not a train shard of flowers"),
            ("datasets/flowers/ingest/train-00000-of-00002", "is not a train shard of flowers"),
            ("datasets/other/train-00000-of-00002", "is outside datasets/flowers/"),
            ("datasets/flowersx/train-00000-of-00002", "is outside datasets/flowers/"),
            ("datasets/flowers/../../etc/passwd", "is outside datasets/flowers/"),
        ] {
            let err = accept_train_shard(&shard(uri, 3), "flowers").unwrap_err().to_string();
            assert_eq!(err, format!("{uri} {why}"));
        }
        let huge = shard("datasets/flowers/train-00000-of-00002", u64::MAX);
        let err = accept_train_shard(&huge, "flowers").unwrap_err().to_string();
        assert!(err.contains("claims 18446744073709551615 records") && err.contains("1000000000"), "{err}");
    }
}
