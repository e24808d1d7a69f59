//! Files committed all or nothing: each is written under a temporary
//! sibling name and renamed onto its final name only when every file of the
//! set is complete. A set dropped before [`Staging::commit`] removes its
//! temporary files, so a failed run leaves nothing under the final names.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// A set of files being written.
#[derive(Debug, Default)]
pub struct Staging {
    /// (temporary path, final path) of every staged file.
    files: Vec<(PathBuf, PathBuf)>,
    committed: bool,
}

impl Staging {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The temporary path to write `path`'s content to (a hidden sibling
    /// tagged with the process id, so concurrent runs do not collide).
    pub fn stage(&mut self, path: &Path) -> Result<PathBuf> {
        let name = path
            .file_name()
            .with_context(|| format!("{} has no file name", path.display()))?;
        let tmp = path.with_file_name(format!(
            ".{}.seggpu-partial-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        self.files.push((tmp.clone(), path.to_path_buf()));
        Ok(tmp)
    }

    /// Renames every staged file onto its final name.
    pub fn commit(mut self) -> Result<()> {
        for (tmp, path) in &self.files {
            std::fs::rename(tmp, path).with_context(|| {
                format!("cannot move {} onto {}", tmp.display(), path.display())
            })?;
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            for (tmp, _) in &self.files {
                let _ = std::fs::remove_file(tmp);
            }
        }
    }
}

/// Writes `bytes` to `path` through a temporary sibling and a rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut staging = Staging::new();
    let tmp = staging.stage(path)?;
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    staging.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_lands_without_commit_and_everything_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.txt"), dir.path().join("b.txt"));
        {
            let mut staging = Staging::new();
            std::fs::write(staging.stage(&a).unwrap(), "a").unwrap();
            std::fs::write(staging.stage(&b).unwrap(), "b").unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let mut staging = Staging::new();
        std::fs::write(staging.stage(&a).unwrap(), "a").unwrap();
        std::fs::write(staging.stage(&b).unwrap(), "b").unwrap();
        staging.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "a");
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "b");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        write_atomically(&a, b"again").unwrap();
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "again");
        assert!(write_atomically(&dir.path().join("missing/c.txt"), b"c").is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
