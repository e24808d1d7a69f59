//! The C allocator's heap: handing freed pages back to the system and
//! reading how much of the heap is live, for the bucketed path's memory
//! figures (docs/streaming.md). Both need glibc; elsewhere they do nothing.

/// Hands the allocator's free pages back to the system. The polygons are
/// hundreds of thousands of small allocations: freed, they stay in the
/// process's heap (its resident memory) until trimmed, and the large arrays
/// that follow (a bucket's records) do not reuse them.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn release_free_memory() {
    extern "C" {
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
    // SAFETY: glibc's malloc_trim only returns free memory of the
    // allocator's arenas to the system; it takes no pointer.
    unsafe {
        malloc_trim(0);
    }
}

/// Elsewhere the allocator keeps its own policy.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() {}

/// The allocator's heap now: (bytes in use, bytes free but kept by the
/// process), from glibc's `mallinfo2`; tells live data from freed-but-resident
/// heap in the run log's memory figures. `None` where the C library has no
/// `mallinfo2` (glibc before 2.33).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn heap_bytes() -> Option<(u64, u64)> {
    use std::sync::OnceLock;
    // glibc's `struct mallinfo2`: ten `size_t` fields.
    #[repr(C)]
    struct MallInfo2 {
        arena: usize,
        ordblks: usize,
        smblks: usize,
        hblks: usize,
        hblkhd: usize,
        usmblks: usize,
        fsmblks: usize,
        uordblks: usize,
        fordblks: usize,
        keepcost: usize,
    }
    type MallInfo2Fn = unsafe extern "C" fn() -> MallInfo2;
    extern "C" {
        fn dlsym(
            handle: *mut std::ffi::c_void,
            symbol: *const std::ffi::c_char,
        ) -> *mut std::ffi::c_void;
    }
    // Looked up when first needed, not linked: a binary that named the
    // symbol would not build or start on glibc before 2.33 (RHEL 8 and
    // other long-lived cluster systems), where the figures are just left out.
    static MALLINFO2: OnceLock<Option<MallInfo2Fn>> = OnceLock::new();
    let mallinfo2 = (*MALLINFO2.get_or_init(|| {
        // SAFETY: dlsym with RTLD_DEFAULT (a null handle in glibc) searches
        // the loaded libraries for a NUL-terminated name and returns null
        // when none has it; the symbol, when found, is glibc's mallinfo2,
        // whose type is `MallInfo2Fn`.
        unsafe {
            let symbol = dlsym(std::ptr::null_mut(), c"mallinfo2".as_ptr());
            (!symbol.is_null())
                .then(|| std::mem::transmute::<*mut std::ffi::c_void, MallInfo2Fn>(symbol))
        }
    }))?;
    // SAFETY: mallinfo2 only reads the allocator's counters and returns them
    // by value.
    let info = unsafe { mallinfo2() };
    // In use: chunks of the arenas plus mmapped blocks; free: the arenas'
    // free chunks.
    Some(((info.uordblks + info.hblkhd) as u64, info.fordblks as u64))
}

/// Elsewhere the allocator's counters are not read.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn heap_bytes() -> Option<(u64, u64)> {
    None
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    #[test]
    fn the_heap_in_use_counts_a_live_allocation() {
        // This machine's glibc is newer than 2.33, so the lookup must succeed.
        let (before, _) = super::heap_bytes().expect("mallinfo2 found at run time");
        // black_box: an allocation never read may be optimised away.
        let held = std::hint::black_box(vec![1u8; 64 << 20]);
        let (during, _) = super::heap_bytes().expect("mallinfo2");
        assert!(
            during >= before + (64 << 20),
            "64 MiB held: in use {during} bytes, {before} before"
        );
        drop(held);
    }
}
