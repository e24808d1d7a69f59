//! For the GPU tests: open an adapter or decide to skip.
//!
//! With env `CI=true` a missing adapter fails the test; elsewhere the test
//! prints a loud `SKIPPED: no GPU adapter` and returns.

use std::io::Write as _;

use super::{GpuBackend, GpuError, GpuOptions};

/// Whether the environment says this is CI (`CI` set to anything but
/// empty, `0` or `false`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false" | "False" | "FALSE"))
}

/// A GPU backend for `test` with `options` (plus `SEGGPU_LIMITS` from the
/// environment), or `None` after printing the skip notice. Panics on CI
/// without an adapter, and on any other failure to open one.
pub fn backend_or_skip(test: &str, options: GpuOptions) -> Option<GpuBackend> {
    match GpuBackend::new(options.with_env()) {
        Ok(gpu) => {
            let a = gpu.adapter();
            println!(
                "{test}: adapter {} ({}, {}), precision {:?}, {}",
                a.name,
                a.backend,
                a.device_type,
                gpu.precision(),
                gpu.limits_summary()
            );
            Some(gpu)
        }
        Err(e @ GpuError::NoAdapter { .. }) => {
            if in_ci() {
                panic!("{test}: CI=true but no GPU adapter: {e}");
            }
            // Straight to the process's stderr: the test harness captures
            // `eprintln!` of passing tests, this notice must be seen.
            let notice = format!("\n*** {test}: SKIPPED: no GPU adapter ({e}) ***\n");
            let _ = std::io::stderr().write_all(notice.as_bytes());
            println!("SKIPPED: no GPU adapter");
            None
        }
        Err(e) => panic!("{test}: opening the GPU failed: {e}"),
    }
}
