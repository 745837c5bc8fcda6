//! Continuous ingest's ledger (see [`crate::continuous`] for how entries are
//! committed): `datasets/<name>/ingest/ledger/NNNNNNNN.json`, one entry per
//! sequence number, `NNNNNNNN.done` once its shard is stored and announced.
//!
//! # Segments
//!
//! A long-running ingester makes an entry per group of new images, a shard
//! each: tens of thousands a year. Reading every entry at start (one GET
//! each) would make start-up grow with the dataset's age. So every complete,
//! aligned run of [`SEGMENT_ENTRIES`] entries also gets a segment,
//! `segment-FFFFFFFF-TTTTTTTT.json`: the source keys those entries took. At
//! start the ledger reads the segments and only the entries no segment
//! covers, plus any covered entry still without its `.done` (to finish it).
//! Entries stay the truth: they are never deleted, a segment is derived from
//! them (identical whoever writes it), and one that cannot be read is
//! ignored and written again from its entries.

use bytes::Bytes;
use futures::StreamExt;
use inception_core::{keys, Store};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

use crate::report::Outcome;
use crate::IngestError;

/// Entries per segment.
pub const SEGMENT_ENTRIES: u64 = 1024;

/// Ledger objects fetched at once when the ledger is loaded.
const LEDGER_LOAD_CONCURRENCY: usize = 16;

/// One image in a ledger entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerImage {
    /// `<label>/<name>` as the source lists it.
    pub key: String,
    pub result: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One sequence number of the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub sequence: u64,
    pub split: String,
    /// The shard's key; none when no image of the group was usable.
    pub shard: Option<String>,
    pub records: u64,
    pub images: Vec<LedgerImage>,
}

/// The source keys taken by entries `from..=through`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Segment {
    from: u64,
    through: u64,
    taken: Vec<String>,
}

/// What the ledger says so far.
#[derive(Debug)]
pub struct Ledger {
    /// Source keys already taken by some entry.
    pub taken: HashSet<String>,
    pub next_sequence: u64,
    /// Entries without their `.done` marker.
    pub unfinished: Vec<LedgerEntry>,
    /// The keys of each known entry that no segment covers yet.
    uncovered: BTreeMap<u64, Vec<String>>,
    segment_entries: u64,
}

/// A ledger object, by its file name.
#[derive(Debug, PartialEq, Eq)]
enum LedgerObject {
    Entry(u64),
    Done(u64),
    Segment { from: u64, through: u64 },
}

fn parse_name(name: &str) -> Option<LedgerObject> {
    let number = |s: &str| s.bytes().all(|b| b.is_ascii_digit()).then(|| s.parse().ok()).flatten();
    if let Some(range) = name.strip_prefix("segment-").and_then(|n| n.strip_suffix(".json")) {
        let (from, through) = range.split_once('-')?;
        return Some(LedgerObject::Segment { from: number(from)?, through: number(through)? });
    }
    if let Some(n) = name.strip_suffix(".json") {
        return number(n).map(LedgerObject::Entry);
    }
    name.strip_suffix(".done").and_then(number).map(LedgerObject::Done)
}

impl Ledger {
    fn empty(segment_entries: u64) -> Self {
        Self {
            taken: HashSet::new(),
            next_sequence: 0,
            unfinished: Vec::new(),
            uncovered: BTreeMap::new(),
            segment_entries: segment_entries.max(1),
        }
    }

    /// Reads the ledger of `dataset`, and writes the segments that complete
    /// runs of entries read one by one should have had.
    pub async fn load(store: &Store, dataset: &str) -> Result<Ledger, IngestError> {
        Self::load_with(store, dataset, SEGMENT_ENTRIES).await
    }

    /// [`Ledger::load`] with segments of `segment_entries` entries.
    pub async fn load_with(store: &Store, dataset: &str, segment_entries: u64) -> Result<Ledger, IngestError> {
        let mut ledger = Ledger::empty(segment_entries);
        let dir = keys::ingest_ledger_dir(dataset);
        let listed = store.list(&dir).await?;
        let (mut entries, mut done, mut segments) = (BTreeMap::new(), HashSet::new(), Vec::new());
        for key in &listed {
            match key.strip_prefix(&dir).and_then(parse_name) {
                Some(LedgerObject::Entry(n)) => {
                    entries.insert(n, key);
                }
                Some(LedgerObject::Done(n)) => {
                    done.insert(n);
                }
                Some(LedgerObject::Segment { from, through }) => segments.push((from, through, key)),
                None => {}
            }
        }
        ledger.next_sequence = entries.keys().next_back().map_or(0, |n| n + 1);
        // Segments first: the entries they cover need no reading.
        let mut covered: HashSet<u64> = HashSet::new();
        let n = ledger.segment_entries;
        let aligned = |from: u64, through: u64| from.is_multiple_of(n) && through == from + n - 1;
        let mut read = futures::stream::iter(segments.iter().filter(|(from, through, _)| aligned(*from, *through)))
            .map(|(from, through, key)| async move { (*from, *through, key, store.get(key).await) })
            .buffered(LEDGER_LOAD_CONCURRENCY);
        while let Some((from, through, key, got)) = read.next().await {
            let segment = got
                .map_err(|e| e.to_string())
                .and_then(|bytes| serde_json::from_slice::<Segment>(&bytes).map_err(|e| e.to_string()))
                .and_then(|s| {
                    if (s.from, s.through) == (from, through) {
                        Ok(s)
                    } else {
                        Err("its range is not its name's".into())
                    }
                });
            match segment {
                Ok(s) => {
                    ledger.taken.extend(s.taken);
                    covered.insert(from);
                }
                // The entries are still there: read them instead.
                Err(e) => tracing::warn!("ignoring ledger segment {key} ({e}): reading its entries"),
            }
        }
        let is_covered = |s: u64| covered.contains(&(s - s % n));
        // Many entries after a long run, each a small object: fetched
        // concurrently (S3 round trips dominate), applied in listing order.
        let wanted = entries.iter().filter(|(s, _)| !is_covered(**s) || !done.contains(*s));
        let mut fetched = futures::stream::iter(wanted)
            .map(|(_, key)| async move { store.get(key).await.map(|bytes| (key, bytes)) })
            .buffered(LEDGER_LOAD_CONCURRENCY);
        while let Some(got) = fetched.next().await {
            let (key, bytes) = got?;
            let entry: LedgerEntry =
                serde_json::from_slice(&bytes).map_err(|e| IngestError::Ledger(format!("{key} is unreadable: {e}")))?;
            ledger.taken.extend(entry.images.iter().map(|i| i.key.clone()));
            if !is_covered(entry.sequence) {
                ledger.uncovered.insert(entry.sequence, entry.images.iter().map(|i| i.key.clone()).collect());
            }
            if !done.contains(&entry.sequence) {
                ledger.unfinished.push(entry);
            }
        }
        ledger.compact(store, dataset).await;
        Ok(ledger)
    }

    /// Takes note of an entry just committed.
    pub fn record(&mut self, entry: &LedgerEntry) {
        let keys: Vec<String> = entry.images.iter().map(|i| i.key.clone()).collect();
        self.taken.extend(keys.iter().cloned());
        self.next_sequence = self.next_sequence.max(entry.sequence + 1);
        self.uncovered.insert(entry.sequence, keys);
    }

    /// Adopts what a fresh load found (another ingester wrote entries),
    /// keeping the entries this one still has to finish.
    pub fn refresh(&mut self, fresh: Ledger) {
        self.taken = fresh.taken;
        self.next_sequence = fresh.next_sequence;
        self.uncovered = fresh.uncovered;
    }

    /// Writes a segment for every complete run of uncovered entries, then
    /// forgets them. A write that fails is retried at the next call.
    pub async fn compact(&mut self, store: &Store, dataset: &str) {
        let n = self.segment_entries;
        let starts: Vec<u64> = self.uncovered.keys().map(|s| s - s % n).collect::<HashSet<_>>().into_iter().collect();
        for from in starts {
            let through = from + n - 1;
            if self.uncovered.range(from..=through).count() as u64 != n {
                continue;
            }
            let mut taken: Vec<String> =
                self.uncovered.range(from..=through).flat_map(|(_, keys)| keys.iter().cloned()).collect();
            taken.sort();
            let segment = Segment { from, through, taken };
            let key = keys::ingest_ledger_segment(dataset, from, through);
            let written = match serde_json::to_vec(&segment) {
                Ok(json) => store.put(&key, Bytes::from(json)).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match written {
                Ok(()) => {
                    tracing::info!("wrote ledger segment {key}");
                    let covered: Vec<u64> = self.uncovered.range(from..=through).map(|(s, _)| *s).collect();
                    covered.iter().for_each(|s| {
                        self.uncovered.remove(s);
                    });
                }
                Err(e) => tracing::warn!("cannot write ledger segment {key}: {e}; trying again later"),
            }
        }
    }

    /// Entries no segment covers yet, in order.
    #[cfg(test)]
    fn uncovered_sequences(&self) -> Vec<u64> {
        self.uncovered.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(sequence: u64) -> LedgerEntry {
        LedgerEntry {
            sequence,
            split: "train".into(),
            shard: Some(keys::live_shard("flowers", "train", sequence)),
            records: 2,
            images: (0..2)
                .map(|i| LedgerImage {
                    key: format!("daisy/{sequence}-{i}.jpg"),
                    result: Outcome::Written,
                    reason: None,
                })
                .collect(),
        }
    }

    async fn commit(store: &Store, sequence: u64, done: bool) {
        store
            .put_new(
                &keys::ingest_ledger_entry("flowers", sequence),
                Bytes::from(serde_json::to_vec(&entry(sequence)).unwrap()),
            )
            .await
            .unwrap();
        if done {
            store.put(&keys::ingest_ledger_done("flowers", sequence), Bytes::new()).await.unwrap();
        }
    }

    fn store(dir: &std::path::Path) -> Store {
        let settings = inception_core::Settings::defaults().unwrap();
        let mut s = settings.store;
        s.url = format!("file://{}", dir.display());
        Store::open(&s).unwrap()
    }

    /// A store holding finished entries `0..count`.
    async fn with_entries(count: u64) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        for s in 0..count {
            commit(&store, s, true).await;
        }
        (dir, store)
    }

    fn all_keys(through: u64) -> HashSet<String> {
        (0..=through).flat_map(|s| entry(s).images.into_iter().map(|i| i.key)).collect()
    }

    #[test]
    fn names_are_parsed_strictly() {
        assert_eq!(parse_name("00000012.json"), Some(LedgerObject::Entry(12)));
        assert_eq!(parse_name("00000012.done"), Some(LedgerObject::Done(12)));
        assert_eq!(
            parse_name("segment-00000000-00001023.json"),
            Some(LedgerObject::Segment { from: 0, through: 1023 })
        );
        for other in ["00000012.json.tmp-1", "notes.json", "segment-1.json", "+5.json", "segment-00-x.json"] {
            assert_eq!(parse_name(other), None, "{other}");
        }
    }

    #[tokio::test]
    async fn segments_stand_in_for_their_entries() {
        let (_dir, store) = with_entries(10).await;
        // Entries read one by one; the complete runs 0-3 and 4-7 get segments.
        let first = Ledger::load_with(&store, "flowers", 4).await.unwrap();
        assert_eq!((first.taken.clone(), first.next_sequence), (all_keys(9), 10));
        assert!(first.unfinished.is_empty());
        assert_eq!(first.uncovered_sequences(), vec![8, 9]);
        for (from, through) in [(0, 3), (4, 7)] {
            assert!(store.exists(&keys::ingest_ledger_segment("flowers", from, through)).await.unwrap());
        }
        // Without the covered entries' objects, the segments alone give the same ledger.
        for s in 0..8 {
            store.delete(&keys::ingest_ledger_entry("flowers", s)).await.unwrap();
        }
        let second = Ledger::load_with(&store, "flowers", 4).await.unwrap();
        assert_eq!((second.taken, second.next_sequence), (all_keys(9), 10));
        // A covered entry without its `.done` is still read, to be finished.
        commit(&store, 5, false).await;
        store.delete(&keys::ingest_ledger_done("flowers", 5)).await.unwrap();
        let third = Ledger::load_with(&store, "flowers", 4).await.unwrap();
        assert_eq!(third.unfinished.iter().map(|e| e.sequence).collect::<Vec<_>>(), vec![5]);
    }

    #[tokio::test]
    async fn an_unreadable_segment_is_read_from_its_entries_and_written_again() {
        let (_dir, store) = with_entries(4).await;
        let key = keys::ingest_ledger_segment("flowers", 0, 3);
        store.put(&key, Bytes::from_static(b"{ not json")).await.unwrap();
        let ledger = Ledger::load_with(&store, "flowers", 4).await.unwrap();
        assert_eq!(ledger.taken, all_keys(3));
        let segment: Segment = serde_json::from_slice(&store.get(&key).await.unwrap()).unwrap();
        assert_eq!((segment.from, segment.through, segment.taken.len()), (0, 3, 8));
        assert!(ledger.uncovered_sequences().is_empty());
    }

    #[tokio::test]
    async fn committed_entries_are_compacted_as_runs_complete() {
        let (_dir, store) = with_entries(0).await;
        let mut ledger = Ledger::empty(2);
        for s in 0..3 {
            ledger.record(&entry(s));
            ledger.compact(&store, "flowers").await;
        }
        assert_eq!(ledger.next_sequence, 3);
        assert!(store.exists(&keys::ingest_ledger_segment("flowers", 0, 1)).await.unwrap());
        assert!(!store.exists(&keys::ingest_ledger_segment("flowers", 2, 3)).await.unwrap(), "2-3 is not complete");
        assert_eq!(ledger.uncovered_sequences(), vec![2]);
    }
}
