//! The heap: seggpu allocates through mimalloc (the global allocator, set in
//! `lib.rs`), which hands freed memory back to the system at once
//! ([`purge_freed_memory_at_once`]), so that the bucketed path's memory
//! does not grow with the slide (docs/streaming.md).
//!
//! Why not the C library's allocator: glibc's keeps freed memory in its
//! arenas. Hundreds of thousands of nuclei read and freed leave its heap
//! full of holes (0.35 GB at 670,000 nuclei, 1 GB at 2 million), and the
//! tiles' buffers, placed in those holes, stayed resident until trimmed:
//! the peak grew with the slide (1.18 / 1.32 / 1.44 GB at 10M / 100M / 300M
//! simulated transcripts, --max-memory 4G; the 300M run's first buckets).
//! mimalloc keeps each size of allocation in pages of its own and gives a
//! page back when it is empty: 1.195 / 1.260 / 1.393 GB (whole runs).

use libmimalloc_sys as mi;

/// mimalloc's `mi_option_purge_delay` (the milliseconds a freed page waits
/// before it goes back to the system), by its place in the C enum
/// `mi_option_e`, which the `libmimalloc-sys` bindings do not name.
const PURGE_DELAY_OPTION: mi::mi_option_t = 15;

/// Makes the allocator give freed pages back to the system when they are
/// freed rather than a second later (`segment` sets it): within a tile,
/// buffers are freed and others allocated in the same millisecond, and
/// with the delay both are resident at once (1.50 GB rather than 1.18 GB
/// at 10M transcripts, --max-memory 4G). The cost is system time (the
/// pages handed back and faulted in again): docs/streaming.md, "The
/// allocator and the bucket ahead".
pub fn purge_freed_memory_at_once() {
    // SAFETY: mi_option_set only stores an integer option of the allocator;
    // the option index is checked by the test below.
    unsafe { mi::mi_option_set(PURGE_DELAY_OPTION, 0) }
}

/// Hands the allocator's free memory (its threads' caches, empty pages)
/// back to the system: after a bucket or a tile, whose buffers were freed
/// among allocations that live on.
pub fn release_free_memory() {
    // SAFETY: mi_collect only frees memory the allocator holds unused; it
    // takes no pointer.
    unsafe { mi::mi_collect(true) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_purge_delay_option_index_names_the_purge_delay() {
        // The default purge delay of mimalloc 3 (the one these bindings
        // build) is 1000 ms, which no neighbouring option has: the index
        // names that option.
        let default = unsafe { libmimalloc_sys::mi_option_get(super::PURGE_DELAY_OPTION) };
        assert_eq!(
            default,
            1000,
            "option {} is not the purge delay (1000 ms by default)",
            super::PURGE_DELAY_OPTION
        );
    }
}
