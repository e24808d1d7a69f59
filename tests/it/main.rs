//! The integration tests, in one binary so that the crate is linked once.
//! Each module is one area; `common` holds the fixtures, data paths and the
//! one tolerance check they share. Run one area with
//! `cargo test --release --test it gpu_parity::`.
//!
//! The tests run in parallel threads of one process: each writes only under
//! its own `tempfile::tempdir()`, and none sets an environment variable of
//! this process; a variable a test needs goes to the child `seggpu` process
//! (`Command::env`).

mod common;

mod budget;
mod cli_forward;
mod fuzz;
mod gpu_cli;
mod gpu_f16;
mod gpu_fragments;
mod gpu_limits;
mod gpu_parity;
mod gpu_train;
mod io_errors;
mod io_features;
mod io_formats;
mod io_perf;
mod io_real_data;
mod outputs;
mod overlap;
mod parity_cpu;
mod pipeline_tiling;
mod reference_parity;
mod reliability;
mod report_html;
mod segment_cli;
mod simulate;
mod streaming;
mod train_cli;
mod train_grad;
mod weights_errors;
mod xenium_ranger;
