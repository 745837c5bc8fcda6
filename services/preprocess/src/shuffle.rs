//! The shuffle buffer, in the role of the original's `RandomShuffleQueue`:
//! serialized records from several shards wait here and batches draw from
//! them uniformly at random, so a batch mixes shards. It holds at least
//! `min_after_dequeue` records after each draw (more only while a shard is
//! being added), unless that would take more than `max_bytes`: memory is
//! bounded by `max_bytes` plus one shard.
//!
//! With class-balanced draws ([`ShuffleBuffer::take_balanced`]) each draw
//! first picks a label uniformly among those in the buffer, then a record
//! of that label: every class is seen about equally often however skewed
//! the data (minority classes are repeated, majority ones subsampled).
//!
//! Each record also keeps the number of the shard it came from (4 bytes,
//! the worker's own numbering), so that a batch can say which shards its
//! images were drawn from (lineage).

use rand::Rng;

/// The shard number of records added without one.
pub const NO_SHARD: u32 = u32::MAX;

/// Serialized records waiting to be drawn into batches.
pub struct ShuffleBuffer {
    records: Vec<Vec<u8>>,
    /// Each record's label, for class-balanced draws (None: unknown).
    labels: Vec<Option<i64>>,
    /// Each record's shard number ([`NO_SHARD`]: not known).
    shards: Vec<u32>,
    bytes: usize,
    min_after_dequeue: usize,
    max_bytes: usize,
}

impl ShuffleBuffer {
    pub fn new(min_after_dequeue: usize, max_bytes: usize) -> Self {
        Self { records: Vec::new(), labels: Vec::new(), shards: Vec::new(), bytes: 0, min_after_dequeue, max_bytes }
    }

    /// Bytes of the records held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Whether a draw of `n` would leave fewer than `min_after_dequeue`
    /// (while under `max_bytes`), or there are not even `n`.
    pub fn needs_more(&self, n: usize) -> bool {
        self.records.len() < n || (self.records.len() < self.min_after_dequeue + n && self.bytes < self.max_bytes)
    }

    /// Adds records whose labels are not known (uniform draws only).
    pub fn extend(&mut self, records: impl IntoIterator<Item = Vec<u8>>) {
        self.extend_labelled(records.into_iter().map(|r| (None, r)));
    }

    /// Adds records with their labels, for class-balanced draws.
    pub fn extend_labelled(&mut self, records: impl IntoIterator<Item = (Option<i64>, Vec<u8>)>) {
        self.extend_from_shard(NO_SHARD, records);
    }

    /// Adds records (with their labels, if known) of the shard numbered `shard`.
    pub fn extend_from_shard(&mut self, shard: u32, records: impl IntoIterator<Item = (Option<i64>, Vec<u8>)>) {
        for (label, r) in records {
            self.bytes += r.len();
            self.records.push(r);
            self.labels.push(label);
            self.shards.push(shard);
        }
    }

    /// Draws `n` records (fewer if it holds fewer) uniformly at random.
    pub fn take<R: Rng>(&mut self, n: usize, rng: &mut R) -> Vec<Vec<u8>> {
        self.take_with_shards(n, rng).into_iter().map(|(_, r)| r).collect()
    }

    /// As [`ShuffleBuffer::take`], each record with its shard number.
    pub fn take_with_shards<R: Rng>(&mut self, n: usize, rng: &mut R) -> Vec<(u32, Vec<u8>)> {
        (0..n.min(self.records.len())).map(|_| self.remove(rng.random_range(0..self.records.len()))).collect()
    }

    /// Draws `n` records (fewer if it holds fewer), each from a label drawn
    /// uniformly among the labels in the buffer (records of unknown label
    /// form one group of their own).
    pub fn take_balanced<R: Rng>(&mut self, n: usize, rng: &mut R) -> Vec<Vec<u8>> {
        self.take_balanced_with_shards(n, rng).into_iter().map(|(_, r)| r).collect()
    }

    /// As [`ShuffleBuffer::take_balanced`], each record with its shard number.
    pub fn take_balanced_with_shards<R: Rng>(&mut self, n: usize, rng: &mut R) -> Vec<(u32, Vec<u8>)> {
        (0..n.min(self.records.len()))
            .map(|_| {
                let mut present: Vec<Option<i64>> = self.labels.clone();
                present.sort_unstable();
                present.dedup();
                let label = present[rng.random_range(0..present.len())];
                let of_label = self.labels.iter().filter(|l| **l == label).count();
                let k = rng.random_range(0..of_label);
                let i = self.labels.iter().enumerate().filter(|(_, l)| **l == label).nth(k).map_or(0, |(i, _)| i);
                self.remove(i)
            })
            .collect()
    }

    fn remove(&mut self, i: usize) -> (u32, Vec<u8>) {
        self.labels.swap_remove(i);
        let shard = self.shards.swap_remove(i);
        let r = self.records.swap_remove(i);
        self.bytes -= r.len();
        (shard, r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn batches_mix_shards_and_the_buffer_stays_bounded() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut buffer = ShuffleBuffer::new(20, usize::MAX);
        let shard = |tag: u8| (0..16u8).map(move |i| vec![tag, i]);
        let mut loads = 0;
        let mut mixed = 0;
        for _ in 0..50 {
            while buffer.needs_more(8) {
                buffer.extend(shard(loads % 3));
                loads += 1;
            }
            let batch = buffer.take(8, &mut rng);
            assert_eq!(batch.len(), 8);
            assert!(buffer.len() >= 20 && buffer.len() < 20 + 8 + 16, "{}", buffer.len());
            let tags: std::collections::HashSet<u8> = batch.iter().map(|r| r[0]).collect();
            mixed += usize::from(tags.len() > 1);
        }
        assert!(mixed >= 45, "most batches draw from several shards: {mixed} of 50");
        let mut small = ShuffleBuffer::new(0, usize::MAX);
        small.extend(shard(0).take(3));
        assert_eq!(small.take(8, &mut rng).len(), 3);
        assert!(small.is_empty());
    }

    #[test]
    fn balanced_draws_even_out_a_skewed_buffer() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let (mut uniform, mut balanced) = ([0usize; 3], [0usize; 3]);
        for _ in 0..200 {
            // 90 % label 1, 9 % label 2, 1 % label 3.
            let skewed = || {
                (0..100u8).map(|i| match i {
                    0 => (Some(3), vec![3]),
                    1..=9 => (Some(2), vec![2]),
                    _ => (Some(1), vec![1]),
                })
            };
            let mut a = ShuffleBuffer::new(0, usize::MAX);
            a.extend_labelled(skewed());
            for r in a.take(10, &mut rng) {
                uniform[usize::from(r[0] - 1)] += 1;
            }
            let mut b = ShuffleBuffer::new(0, usize::MAX);
            b.extend_labelled(skewed());
            for r in b.take_balanced(10, &mut rng) {
                balanced[usize::from(r[0] - 1)] += 1;
            }
            assert_eq!(b.len(), 90);
            assert_eq!(b.bytes(), 90);
        }
        assert!(uniform[0] > 1700 && uniform[2] < 60, "uniform draws follow the data: {uniform:?}");
        // The rare label has one record per buffer, so it is drawn at most once per batch;
        // the other two share the rest about equally.
        assert!(balanced[2] >= 150, "the rarest class is drawn in most batches: {balanced:?}");
        let ratio = balanced[0] as f64 / balanced[1] as f64;
        assert!((0.8..1.25).contains(&ratio), "labels 1 and 2 equally often: {balanced:?}");
    }

    #[test]
    fn records_keep_their_shard_through_draws() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let mut buffer = ShuffleBuffer::new(0, usize::MAX);
        for shard in 0..3u32 {
            buffer.extend_from_shard(shard, (0..10u8).map(|i| (Some(i64::from(i % 2)), vec![shard as u8, i])));
        }
        buffer.extend([vec![9, 9]]);
        let mut drawn = buffer.take_with_shards(20, &mut rng);
        drawn.extend(buffer.take_balanced_with_shards(11, &mut rng));
        assert_eq!(drawn.len(), 31);
        assert!(buffer.is_empty());
        for (shard, record) in drawn {
            let expected = if record == [9, 9] { NO_SHARD } else { u32::from(record[0]) };
            assert_eq!(shard, expected, "{record:?}");
        }
    }

    #[test]
    fn the_byte_cap_wins_over_the_record_count() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        // 1000 records wanted, but only 10 kB allowed: 100-byte records.
        let mut buffer = ShuffleBuffer::new(1000, 10_000);
        let shard = || (0..30).map(|_| vec![0u8; 100]);
        for _ in 0..20 {
            while buffer.needs_more(8) {
                buffer.extend(shard());
            }
            assert!(buffer.bytes() < 10_000 + 3_000, "at most one shard over the cap: {}", buffer.bytes());
            assert_eq!(buffer.bytes(), buffer.len() * 100);
            assert_eq!(buffer.take(8, &mut rng).len(), 8);
        }
        // Still enough for a batch however small the cap.
        let mut tiny = ShuffleBuffer::new(1000, 1);
        assert!(tiny.needs_more(8));
        tiny.extend(shard().take(5));
        assert!(tiny.needs_more(8), "5 records cannot make a batch of 8");
        tiny.extend(shard().take(5));
        assert!(!tiny.needs_more(8));
    }
}
