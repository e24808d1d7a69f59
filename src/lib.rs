//! seggpu: Segger cell segmentation for imaging spatial transcriptomics on
//! any GPU through wgpu, or on the CPU.
//!
//! Stages follow the data flow of `SPEC.md`: [`graph`] → [`model`] →
//! scoring, through a [`backend::Backend`] whose kernels live in [`kernels`].

pub mod backend;
pub mod cli;
pub mod graph;
pub mod kernels;
pub mod model;
pub mod synthetic;
pub mod tensorfile;
