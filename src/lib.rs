//! seggpu: Segger cell segmentation for imaging spatial transcriptomics on
//! any GPU through wgpu, or on the CPU.
//!
//! Modules follow the data flow of `docs/contract.md` §1: [`io`] → [`tiles`]
//! → [`graph`] → [`model`] → the stages of [`pipeline`] (score, assign,
//! fragments, report) → [`output`], computing through a
//! [`backend::Backend`] whose CPU kernels live in [`kernels`].

/// mimalloc for every allocation: its freed pages go back to the system,
/// so the bucketed path's memory does not grow with the slide
/// ([`io::heap`]).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod backend;
pub mod cli;
pub mod defaults;
pub mod demo;
pub mod graph;
pub mod io;
pub mod kernels;
pub mod logging;
pub mod model;
pub mod output;
pub mod pipeline;
pub mod simulate;
pub mod staging;
pub mod synthetic;
pub mod tensorfile;
mod test_hooks;
pub mod tiles;
pub mod train;
