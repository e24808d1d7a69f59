//! CPU twins of the WGSL kernels in `shaders/`. Each function here computes
//! what one shader invocation computes, in the same reduction order, so the
//! CPU backend and the GPU backend can be compared value by value.

// Index loops on purpose: the twins read line for line like the shaders.
#![allow(clippy::needless_range_loop)]

pub mod components;
pub mod edge_similarity;
pub mod embed;
pub mod gatv2;
pub mod linear;
pub mod score;

/// Test hook: set (to any number) in a run of a `testing` build, the dense
/// kernels leave out their AVX-512 copies, so that the suite can compare them
/// with the AVX2 ones on a CPU that has both.
pub const NO_AVX512_ENV: &str = "SEGGPU_TEST_NO_AVX512";

/// Whether the dense kernels use their AVX-512F copies (twice the lanes of
/// the AVX2 ones: the same fused sum per entry, so the same bits): where the
/// CPU has AVX-512F, unless [`NO_AVX512_ENV`] says not to.
pub(crate) fn avx512_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static ALLOWED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ALLOWED.get_or_init(|| crate::test_hooks::value::<u32>(NO_AVX512_ENV).is_none())
            && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Rows handed to one rayon task: large enough to amortise scheduling.
pub(crate) const ROWS_PER_TASK: usize = 256;
