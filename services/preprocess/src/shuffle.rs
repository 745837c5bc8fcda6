//! The shuffle buffer, in the role of the original's `RandomShuffleQueue`:
//! serialized records from several shards wait here and batches draw from
//! them uniformly at random, so a batch mixes shards. It holds at least
//! `min_after_dequeue` records after each draw (more only while a shard is
//! being added), which bounds its memory.

use rand::Rng;

pub struct ShuffleBuffer {
    records: Vec<Vec<u8>>,
    min_after_dequeue: usize,
}

impl ShuffleBuffer {
    pub fn new(min_after_dequeue: usize) -> Self {
        Self { records: Vec::new(), min_after_dequeue }
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Whether a draw of `n` would leave fewer than `min_after_dequeue`.
    pub fn needs_more(&self, n: usize) -> bool {
        self.records.len() < self.min_after_dequeue + n
    }

    pub fn extend(&mut self, records: impl IntoIterator<Item = Vec<u8>>) {
        self.records.extend(records);
    }

    /// Draws `n` records (fewer if it holds fewer) uniformly at random.
    pub fn take<R: Rng>(&mut self, n: usize, rng: &mut R) -> Vec<Vec<u8>> {
        (0..n.min(self.records.len()))
            .map(|_| {
                let i = rng.random_range(0..self.records.len());
                self.records.swap_remove(i)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn batches_mix_shards_and_the_buffer_stays_bounded() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut buffer = ShuffleBuffer::new(20);
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
        let mut small = ShuffleBuffer::new(0);
        small.extend(shard(0).take(3));
        assert_eq!(small.take(8, &mut rng).len(), 3);
        assert!(small.is_empty());
    }
}
