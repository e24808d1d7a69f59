//! seggpu: Segger cell segmentation for imaging spatial transcriptomics on
//! any GPU through wgpu, or on the CPU.
//!
//! Stages follow the data flow of `SPEC.md`: [`graph`] → [`model`] →
//! scoring, through a [`backend::Backend`] whose kernels live in [`kernels`].

pub mod backend;
pub mod cli;
pub mod demo;
pub mod fragments;
pub mod graph;
pub mod io;
pub mod kernels;
pub mod model;
pub mod output;
pub mod pipeline;
pub mod score;
pub mod simulate;
pub mod synthetic;
pub mod tensorfile;
pub mod tiles;
