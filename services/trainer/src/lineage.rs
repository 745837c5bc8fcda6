//! Lineage: which shards, and how many examples of each, every checkpoint
//! was trained on since its parent (from the `shards` of each batch
//! message), and the running totals of its line. Written into the
//! checkpoint's metadata ([`Lineage`]); `inception lineage` reads it back.

use inception_core::keys;
use inception_core::limits::{MAX_LINEAGE_ANCESTORS, MAX_LINEAGE_SHARDS, MAX_LINEAGE_SHARD_KEY};
use inception_model::checkpoint::{Ancestor, CheckpointMeta, Lineage, ShardCount};
use inception_proto::pipeline::ShardExamples;
use std::collections::HashMap;

/// Examples by shard since the last checkpoint, and what came before it.
#[derive(Debug, Clone)]
pub struct Tally {
    dataset_dir: String,
    /// The parent's step and metadata key.
    parent: Option<(u64, String)>,
    /// The parent's lineage: its totals and ancestors.
    base: Lineage,
    since: Vec<ShardCount>,
    index: HashMap<String, usize>,
    examples: u64,
    unattributed: u64,
    /// Batch messages whose shard counts could not be used, for one warning.
    inconsistent: u64,
}

impl Tally {
    /// A tally for a line with no checkpoint yet, of `dataset`'s shards.
    pub fn new(dataset: &str) -> Self {
        Self {
            dataset_dir: keys::dataset_dir(dataset),
            parent: None,
            base: Lineage::default(),
            since: Vec::new(),
            index: HashMap::new(),
            examples: 0,
            unattributed: 0,
            inconsistent: 0,
        }
    }

    /// Continues from the checkpoint `meta` (metadata at `key`). One written
    /// before lineage existed counts its `examples_seen` as unattributed.
    pub fn resumed_from(&mut self, key: &str, meta: &CheckpointMeta) {
        self.parent = Some((meta.step, key.to_string()));
        self.base = meta.lineage.clone();
        if meta.lineage == Lineage::default() && meta.examples_seen > 0 {
            self.base.examples = meta.examples_seen;
            self.base.unattributed_examples = meta.examples_seen;
            self.base.total_examples = meta.examples_seen;
            self.base.total_unattributed_examples = meta.examples_seen;
        }
    }

    /// Counts a trained batch of `images` images whose message named
    /// `shards`. Counts that do not add up to the batch, or name a shard
    /// outside the dataset's train shards, are not trusted: the whole batch
    /// is counted unattributed.
    pub fn add(&mut self, shards: &[ShardExamples], images: u64) {
        self.examples = self.examples.saturating_add(images);
        let sum = shards.iter().fold(0u64, |s, e| s.saturating_add(e.examples));
        if sum != images || !shards.iter().all(|e| self.is_train_shard(&e.shard)) {
            if !shards.is_empty() {
                self.inconsistent += 1;
                if self.inconsistent == 1 {
                    tracing::warn!(
                        "a batch message's shard counts do not fit its {images} images (or name a shard outside \
                         {}/train-…): its examples are counted without their shards",
                        self.dataset_dir
                    );
                }
            }
            self.unattributed = self.unattributed.saturating_add(images);
            return;
        }
        for entry in shards.iter().filter(|e| e.examples > 0) {
            match self.index.get(&entry.shard) {
                Some(&i) => self.since[i].examples = self.since[i].examples.saturating_add(entry.examples),
                None if self.since.len() < MAX_LINEAGE_SHARDS => {
                    self.index.insert(entry.shard.clone(), self.since.len());
                    self.since.push(ShardCount { shard: entry.shard.clone(), examples: entry.examples });
                }
                None => self.unattributed = self.unattributed.saturating_add(entry.examples),
            }
        }
    }

    /// What this tally counted since its parent: by shard, and the
    /// examples without a shard (a data-parallel rank hands them to rank 0).
    pub fn since_parent(&self) -> (Vec<ShardCount>, u64) {
        (self.since.clone(), self.unattributed)
    }

    /// Adds another rank's [`Tally::since_parent`] (checked as a batch's
    /// counts are).
    pub fn absorb(&mut self, shards: &[ShardCount], unattributed: u64) {
        let entries: Vec<ShardExamples> =
            shards.iter().map(|c| ShardExamples { shard: c.shard.clone(), examples: c.examples }).collect();
        let total = shards.iter().fold(0u64, |s, c| s.saturating_add(c.examples));
        self.add(&entries, total);
        self.add(&[], unattributed);
    }

    /// Starts counting afresh (a rank other than 0 after a checkpoint).
    pub fn restart(&mut self) {
        *self = Self::new_in(&self.dataset_dir);
    }

    fn is_train_shard(&self, key: &str) -> bool {
        key.len() <= MAX_LINEAGE_SHARD_KEY
            && keys::below(key, &self.dataset_dir).is_some_and(|name| !name.contains('/') && name.starts_with("train-"))
    }

    /// The lineage of a checkpoint written now.
    pub fn lineage(&self) -> Lineage {
        let (total_shards, overflow) = merged(&self.base.total_shards, &self.since);
        let mut ancestors = self.base.ancestors.clone();
        let mut left_out = self.base.ancestors_left_out;
        if let Some((step, metadata)) = &self.parent {
            ancestors.push(Ancestor { step: *step, metadata: metadata.clone(), examples: self.base.examples });
        }
        if ancestors.len() > MAX_LINEAGE_ANCESTORS {
            let drop = ancestors.len() - MAX_LINEAGE_ANCESTORS;
            ancestors.drain(..drop);
            left_out += drop as u64;
        }
        Lineage {
            parent: self.parent.as_ref().map(|(_, k)| k.clone()),
            parent_step: self.parent.as_ref().map(|(s, _)| *s),
            examples: self.examples,
            shards: self.since.clone(),
            unattributed_examples: self.unattributed,
            total_examples: self.base.total_examples.saturating_add(self.examples),
            total_shards,
            total_unattributed_examples: self
                .base
                .total_unattributed_examples
                .saturating_add(self.unattributed)
                .saturating_add(overflow),
            ancestors,
            ancestors_left_out: left_out,
        }
    }

    /// The checkpoint of `step` at `key`, with `lineage`, was written: it is
    /// the parent of the next one.
    pub fn saved(&mut self, key: &str, step: u64, lineage: Lineage) {
        *self = Self { parent: Some((step, key.to_string())), base: lineage, ..Self::new_in(&self.dataset_dir) };
    }

    fn new_in(dataset_dir: &str) -> Self {
        Self { dataset_dir: dataset_dir.to_string(), ..Self::new("") }
    }
}

/// `totals` plus `more`, by shard, within [`MAX_LINEAGE_SHARDS`]; and the
/// examples of shards that did not fit.
fn merged(totals: &[ShardCount], more: &[ShardCount]) -> (Vec<ShardCount>, u64) {
    let mut out: Vec<ShardCount> = totals.to_vec();
    let mut index: HashMap<&str, usize> = totals.iter().enumerate().map(|(i, c)| (c.shard.as_str(), i)).collect();
    let mut overflow = 0u64;
    for c in more {
        match index.get(c.shard.as_str()) {
            Some(&i) => out[i].examples = out[i].examples.saturating_add(c.examples),
            None if out.len() < MAX_LINEAGE_SHARDS => {
                index.insert(&c.shard, out.len());
                out.push(c.clone());
            }
            None => overflow = overflow.saturating_add(c.examples),
        }
    }
    (out, overflow)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(shard: &str, examples: u64) -> ShardExamples {
        ShardExamples { shard: format!("datasets/flowers/{shard}"), examples }
    }

    fn count(lineage: &[ShardCount], shard: &str) -> Option<u64> {
        lineage.iter().find(|c| c.shard == format!("datasets/flowers/{shard}")).map(|c| c.examples)
    }

    #[test]
    fn counts_are_summed_between_checkpoints_and_carried_in_the_totals() {
        let mut tally = Tally::new("flowers");
        tally.add(&[from("train-00000-of-00002", 3), from("train-00001-of-00002", 1)], 4);
        tally.add(&[from("train-00000-of-00002", 4)], 4);
        let first = tally.lineage();
        assert_eq!((first.parent.clone(), first.examples, first.total_examples), (None, 8, 8));
        assert_eq!(count(&first.shards, "train-00000-of-00002"), Some(7));
        assert_eq!(count(&first.shards, "train-00001-of-00002"), Some(1));
        tally.saved("checkpoints/r/model.ckpt-2.json", 2, first);

        tally.add(&[from("train-00001-of-00002", 4)], 4);
        // Old workers name no shard; a lying message is not trusted.
        tally.add(&[], 4);
        tally.add(&[from("train-00001-of-00002", 9)], 4);
        tally.add(&[from("validation-00000-of-00001", 4)], 4);
        tally.add(&[ShardExamples { shard: "datasets/other/train-0".into(), examples: 4 }], 4);
        let second = tally.lineage();
        assert_eq!(second.parent.as_deref(), Some("checkpoints/r/model.ckpt-2.json"));
        assert_eq!(second.parent_step, Some(2));
        assert_eq!((second.examples, second.unattributed_examples), (20, 16));
        assert_eq!(count(&second.shards, "train-00001-of-00002"), Some(4));
        assert_eq!(count(&second.shards, "train-00000-of-00002"), None, "none since the parent");
        assert_eq!((second.total_examples, second.total_unattributed_examples), (28, 16));
        assert_eq!(count(&second.total_shards, "train-00000-of-00002"), Some(7));
        assert_eq!(count(&second.total_shards, "train-00001-of-00002"), Some(5));
        assert_eq!(
            second.ancestors,
            vec![Ancestor { step: 2, metadata: "checkpoints/r/model.ckpt-2.json".into(), examples: 8 }]
        );
    }

    #[test]
    fn the_lists_are_bounded() {
        let mut tally = Tally::new("flowers");
        for i in 0..MAX_LINEAGE_SHARDS + 3 {
            tally.add(&[from(&format!("train-live-{i:08}"), 1)], 1);
        }
        let l = tally.lineage();
        assert_eq!(l.shards.len(), MAX_LINEAGE_SHARDS);
        assert_eq!((l.examples, l.unattributed_examples), (MAX_LINEAGE_SHARDS as u64 + 3, 3));
        let long = format!("train-{}", "x".repeat(MAX_LINEAGE_SHARD_KEY));
        tally.add(&[from(&long, 1)], 1);
        assert_eq!(tally.lineage().unattributed_examples, 4, "an over-long key is not kept");
        for step in 0..MAX_LINEAGE_ANCESTORS as u64 + 5 {
            let lineage = tally.lineage();
            tally.saved(&format!("checkpoints/r/model.ckpt-{step}.json"), step, lineage);
        }
        let l = tally.lineage();
        assert_eq!(l.ancestors.len(), MAX_LINEAGE_ANCESTORS);
        assert_eq!(l.ancestors_left_out, 5);
        assert_eq!(l.ancestors.last().map(|a| a.step), Some(MAX_LINEAGE_ANCESTORS as u64 + 4));
    }

    #[test]
    fn a_parent_without_lineage_counts_what_it_saw_as_unattributed() {
        let meta: CheckpointMeta = serde_json::from_value(serde_json::json!({
            "format_version": 1, "run": "r", "step": 5, "labels": ["a"],
            "model": inception_model::ModelConfig::tiny(2), "bn_updates": 5, "examples_seen": 40,
            "weights": "checkpoints/r/model.ckpt-5.safetensors", "created_unix": 0,
        }))
        .unwrap();
        let mut tally = Tally::new("flowers");
        tally.resumed_from("checkpoints/r/model.ckpt-5.json", &meta);
        tally.add(&[from("train-00000-of-00001", 8)], 8);
        let l = tally.lineage();
        assert_eq!((l.total_examples, l.total_unattributed_examples, l.examples), (48, 40, 8));
        assert_eq!(l.ancestors[0].examples, 40);
    }
}
