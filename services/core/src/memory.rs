//! glibc malloc tuning for the services whose every step or image frees and
//! reallocates large buffers (trainer, evaluator, preprocess workers).

/// Makes glibc keep freed memory for reuse instead of handing it back to the
/// kernel. libtorch allocates and frees activations of tens to hundreds of
/// MB in every step; by default glibc serves each of those with a fresh
/// `mmap` and unmaps it on free, so every step pays page faults and the
/// kernel zeroing new pages (`clear_page_erms`: 13 % of a CPU training step
/// at 149 px). With this, a step reuses the previous step's memory: +13 %
/// training and +30 % evaluation throughput on CPU (docs/benchmarks.md).
/// The cost: resident memory stays at the peak of a step instead of falling
/// between steps. Returns whether glibc accepted the settings (false on
/// other C libraries, where nothing changes).
pub fn retain_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; called at start-up.
        unsafe { libc::mallopt(libc::M_MMAP_MAX, 0) == 1 && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// [`retain_freed_memory`] when the service's `setting` (named `key` in
/// the log line) asks for it.
pub fn retain_freed_memory_if(setting: bool, key: &str) {
    if setting && retain_freed_memory() {
        tracing::info!("malloc keeps freed memory for reuse ({key})");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_accepts_the_settings_and_allocation_still_works() {
        assert_eq!(retain_freed_memory(), cfg!(all(target_os = "linux", target_env = "gnu")));
        // A block far above the default mmap threshold, now from the heap.
        let block = vec![7u8; 64 << 20];
        assert_eq!(block.iter().map(|&b| u64::from(b)).sum::<u64>(), 7 * (64 << 20));
    }
}
