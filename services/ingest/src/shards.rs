//! How build_image_data.py spreads files over threads and shards: contiguous
//! ranges from `np.linspace(0, N, k + 1).astype(int)`, first per thread, then
//! per shard inside each thread's range.

use std::ops::Range;

/// `np.linspace(start, end, parts + 1).astype(int)` as consecutive ranges.
pub fn linspace_ranges(start: usize, end: usize, parts: usize) -> Vec<Range<usize>> {
    let span = (end - start) as f64;
    let edge = |i: usize| start + (span * i as f64 / parts as f64) as usize;
    (0..parts).map(|i| edge(i)..if i + 1 == parts { end } else { edge(i + 1) }).collect()
}

/// The file index range of every shard, in shard order.
pub fn shard_ranges(files: usize, shards: usize, threads: usize) -> Vec<Range<usize>> {
    linspace_ranges(0, files, threads)
        .into_iter()
        .flat_map(|t| linspace_ranges(t.start, t.end, shards / threads))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_numpy_linspace() {
        // np.linspace(0, 10, 4).astype(int) == [0, 3, 6, 10]
        assert_eq!(linspace_ranges(0, 10, 3), vec![0..3, 3..6, 6..10]);
        // 2 threads x 2 shards over 11 files: threads [0,5) [5,11);
        // np.linspace(0,5,3) = [0, 2.5, 5] -> [0,2,5]; np.linspace(5,11,3) -> [5,8,11].
        assert_eq!(shard_ranges(11, 4, 2), vec![0..2, 2..5, 5..8, 8..11]);
        let all: usize = shard_ranges(3170, 2, 2).iter().map(|r| r.len()).sum();
        assert_eq!(all, 3170);
        assert!(shard_ranges(1, 2, 2).iter().any(|r| r.is_empty()));
    }
}
