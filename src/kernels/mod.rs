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

/// Rows handed to one rayon task: large enough to amortise scheduling.
pub(crate) const ROWS_PER_TASK: usize = 256;
