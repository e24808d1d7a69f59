//! Scratch folders under `--tmp-dir` for what the bucketed path spills
//! beside its buckets (the nuclei's polygons, the cell points, the report
//! rows): named after the output folder, removed when dropped.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// A folder `<tmp_dir>/<prefix><hash of OUT>/`. One run at a time writes into
/// an output folder, so a folder of that name is a killed run's and is
/// removed when a new one is created.
#[derive(Debug)]
pub struct ScratchDir {
    /// The folder.
    pub dir: PathBuf,
    tmp_dir: PathBuf,
}

impl ScratchDir {
    /// Creates `<tmp_dir>/<prefix><hash of out>/`, empty.
    pub fn create(prefix: &str, tmp_dir: &Path, out: &Path) -> Result<Self> {
        let out = std::path::absolute(out).unwrap_or_else(|_| out.to_path_buf());
        let digest = Sha256::digest(out.to_string_lossy().as_bytes());
        let name: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let dir = tmp_dir.join(format!("{prefix}{name}"));
        if dir.exists() {
            // Left by a killed run.
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot remove {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {} (--tmp-dir)", dir.display()))?;
        Ok(ScratchDir {
            dir,
            tmp_dir: tmp_dir.to_path_buf(),
        })
    }

    /// The error of a failed `what` ("create", "write", "read") on `path`,
    /// a file of this folder, naming `--tmp-dir`.
    pub fn error(&self, path: &Path, what: &str) -> String {
        format!(
            "cannot {what} spill file {} (--tmp-dir {}: is it full?)",
            path.display(),
            self.tmp_dir.display()
        )
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
