//! Outputs committed all or nothing.
//!
//! A single file ([`write_atomically`], [`Staging`]) is written under a
//! hidden sibling name and renamed onto its final name. A set of outputs
//! ([`crate::output::OutputDir`]) is written into a staging folder
//! `OUT/.seggpu-partial-<pid>/` while the run holds an exclusive lock on
//! `OUT/.seggpu.lock`; see [`StagedSet`].
//!
//! What is left behind by a run that cannot clean up (killed with SIGKILL,
//! an abort) is removed by the next run into the same folder; SIGINT and
//! SIGTERM remove it at once ([`install_signal_cleanup`]).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};

/// Name of the lock file in an output folder.
pub const LOCK_FILE: &str = ".seggpu.lock";

/// Prefix of staging folders and files (`…seggpu-partial-<pid>`).
const PARTIAL_TAG: &str = ".seggpu-partial-";

/// Paths a signal handler removes before the process exits: staging
/// folders and files, then output folders the run created (when empty).
static CLEANUP: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn register(path: &Path) {
    if let Ok(mut paths) = CLEANUP.lock() {
        paths.push(path.to_path_buf());
    }
}

fn unregister(path: &Path) {
    if let Ok(mut paths) = CLEANUP.lock() {
        paths.retain(|p| p != path);
    }
}

/// Removes a staging file or folder (a missing one is fine).
fn remove_any(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            let _ = std::fs::remove_dir_all(path);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(path);
        }
        Err(_) => {}
    }
}

/// On SIGINT or SIGTERM (Ctrl-C and its Windows equivalents too), removes
/// this process's staging files and folders and the empty output folders
/// it created, then exits with status 130. Call once, early in `main`;
/// later calls do nothing.
pub fn install_signal_cleanup() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // A failure to install only loses the cleanup; the next run still
        // removes what a killed one left.
        let _ = ctrlc::set_handler(|| {
            if let Ok(paths) = CLEANUP.lock() {
                let (partial, created): (Vec<&PathBuf>, Vec<&PathBuf>) = paths
                    .iter()
                    .partition(|p| p.file_name().is_some_and(is_partial_name));
                // Staging first: it sits inside the folders below.
                for path in partial {
                    remove_any(path);
                }
                // An output folder the run created (deepest first), with
                // its lock file, only when nothing else is left in it.
                for path in created {
                    let _ = std::fs::remove_file(path.join(LOCK_FILE));
                    let _ = std::fs::remove_dir(path);
                }
            }
            eprintln!("seggpu: interrupted; partial outputs removed");
            std::process::exit(130);
        });
    });
}

fn is_partial_name(name: &std::ffi::OsStr) -> bool {
    partial_pid(name).is_some()
}

/// The process id in a staging name (`.seggpu-partial-<pid>` or
/// `.<file>.seggpu-partial-<pid>`).
fn partial_pid(name: &std::ffi::OsStr) -> Option<u32> {
    let name = name.to_str()?;
    let at = name.rfind(PARTIAL_TAG)?;
    if !name.starts_with('.') {
        return None;
    }
    name[at + PARTIAL_TAG.len()..].parse().ok()
}

/// Whether process `pid` is running. Without `/proc` it is taken as gone:
/// the caller holds the folder's lock, so no other seggpu run writes there.
fn process_alive(pid: u32) -> bool {
    pid == std::process::id() || Path::new("/proc").join(pid.to_string()).exists()
}

/// Removes staging files and folders of processes that are no longer
/// running from `dir`; returns how many were removed.
pub fn remove_stale(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if let Some(pid) = partial_pid(&name) {
            if !process_alive(pid) {
                remove_any(&entry.path());
                removed += 1;
            }
        }
    }
    removed
}

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
            ".{}{PARTIAL_TAG}{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        register(&tmp);
        self.files.push((tmp.clone(), path.to_path_buf()));
        Ok(tmp)
    }

    /// Renames every staged file onto its final name.
    pub fn commit(mut self) -> Result<()> {
        for (tmp, path) in &self.files {
            std::fs::rename(tmp, path).with_context(|| {
                format!("cannot move {} onto {}", tmp.display(), path.display())
            })?;
            unregister(tmp);
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        for (tmp, _) in &self.files {
            if !self.committed {
                let _ = std::fs::remove_file(tmp);
            }
            unregister(tmp);
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

/// A set of outputs (files or folders) staged in `DIR/.seggpu-partial-<pid>/`
/// under an exclusive lock on `DIR/.seggpu.lock`.
///
/// - A second run into the same folder is refused while the lock is held
///   (the operating system releases it when a process ends, however it ends).
/// - [`StagedSet::commit`] first moves the previous outputs of the same
///   names aside, then moves the new ones in, in staging order (the run log
///   last, so a folder with a log holds a complete set); when a move fails,
///   the moves done are undone and the previous outputs put back.
/// - Dropped without commit (an error), the staging folder is removed, and
///   so is the output folder when the run created it and it is empty.
#[derive(Debug)]
pub struct StagedSet {
    dir: PathBuf,
    partial: PathBuf,
    /// Folders this run created (deepest first), removed when left empty.
    created: Vec<PathBuf>,
    names: Vec<String>,
    lock: Option<File>,
    committed: bool,
}

impl StagedSet {
    /// Creates `dir` when needed, takes its lock, removes stale staging of
    /// dead runs and creates this run's staging folder.
    pub fn create(dir: &Path) -> Result<Self> {
        let mut created = Vec::new();
        let mut missing = Some(dir);
        while let Some(d) = missing.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
            created.push(d.to_path_buf());
            missing = d.parent();
        }
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create output folder {}", dir.display()))?;
        for d in &created {
            register(d);
        }
        let mut set = StagedSet {
            dir: dir.to_path_buf(),
            partial: dir.join(format!("{PARTIAL_TAG}{}", std::process::id())),
            created,
            names: Vec::new(),
            lock: None,
            committed: false,
        };
        set.lock = Some(lock(dir)?);
        let stale = remove_stale(dir);
        if stale > 0 {
            log::info!(
                "{}: removed {stale} staging folder(s) or file(s) left by runs that did not finish",
                dir.display()
            );
        }
        register(&set.partial);
        std::fs::create_dir(&set.partial)
            .with_context(|| format!("output folder {} is not writable", dir.display()))?;
        Ok(set)
    }

    /// Where to write output `name` (a file, or a folder the writer
    /// creates) before the commit.
    pub fn staged(&mut self, name: &str) -> Result<PathBuf> {
        let valid = !name.is_empty()
            && Path::new(name).file_name() == Some(std::ffi::OsStr::new(name))
            && !name.starts_with(".seggpu");
        if !valid {
            bail!("output name `{name}` is not a plain file name");
        }
        if !self.names.iter().any(|n| n == name) {
            self.names.push(name.to_string());
        }
        Ok(self.partial.join(name))
    }

    /// Moves every staged output onto its final name (see the type's
    /// documentation), then removes the staging folder.
    pub fn commit(mut self) -> Result<()> {
        for name in &self.names {
            if !self.partial.join(name).exists() {
                bail!(
                    "output {} was staged but not written",
                    self.dir.join(name).display()
                );
            }
        }
        let replaced = self.partial.join(".replaced");
        let mut undo: Vec<(PathBuf, PathBuf)> = Vec::new();
        let result = self.swap_in(&replaced, &mut undo);
        if result.is_err() {
            for (from, to) in undo.iter().rev() {
                let _ = std::fs::rename(to, from);
            }
            return result;
        }
        self.committed = true;
        remove_any(&self.partial);
        unregister(&self.partial);
        Ok(())
    }

    /// The moves of a commit; every move done goes into `undo` as (from, to).
    fn swap_in(&self, replaced: &Path, undo: &mut Vec<(PathBuf, PathBuf)>) -> Result<()> {
        let mut step = |from: PathBuf, to: PathBuf| -> Result<()> {
            std::fs::rename(&from, &to)
                .with_context(|| format!("cannot move {} onto {}", from.display(), to.display()))?;
            undo.push((from, to));
            Ok(())
        };
        for name in &self.names {
            let old = self.dir.join(name);
            if std::fs::symlink_metadata(&old).is_ok() {
                if !replaced.exists() {
                    std::fs::create_dir(replaced)
                        .with_context(|| format!("cannot create {}", replaced.display()))?;
                }
                step(old, replaced.join(name))?;
            }
        }
        for name in &self.names {
            step(self.partial.join(name), self.dir.join(name))?;
        }
        Ok(())
    }
}

impl Drop for StagedSet {
    fn drop(&mut self) {
        if !self.committed {
            remove_any(&self.partial);
        }
        unregister(&self.partial);
        // The lock file goes before the folders it would keep non-empty.
        if let Some(lock) = self.lock.take() {
            drop(lock);
            if !self.committed && !self.created.is_empty() {
                let _ = std::fs::remove_file(self.dir.join(LOCK_FILE));
            }
        }
        for d in &self.created {
            if !self.committed {
                let _ = std::fs::remove_dir(d);
            }
            unregister(d);
        }
    }
}

/// Takes the exclusive lock of output folder `dir`, writing this process's
/// id into the lock file for the error message of a refused run.
fn lock(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("output folder {} is not writable", dir.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let holder = holder.trim();
            bail!(
                "output folder {} is in use by another seggpu run{}; wait for it to finish or \
                 choose another --out",
                dir.display(),
                if holder.is_empty() {
                    String::new()
                } else {
                    format!(" (process {holder})")
                }
            );
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()));
        }
    }
    file.set_len(0)
        .and_then(|()| write!(file, "{}", std::process::id()))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

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

    #[test]
    fn a_set_replaces_files_and_folders_together_and_a_dropped_one_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("new/out");
        {
            let mut set = StagedSet::create(&out).unwrap();
            std::fs::write(set.staged("a.parquet").unwrap(), "first").unwrap();
        }
        assert!(!tmp.path().join("new").exists(), "created folders stay");

        for round in ["one", "two"] {
            let mut set = StagedSet::create(&out).unwrap();
            std::fs::write(set.staged("a.parquet").unwrap(), round).unwrap();
            let store = set.staged("b.zarr").unwrap();
            std::fs::create_dir(&store).unwrap();
            std::fs::write(store.join(round), round).unwrap();
            set.commit().unwrap();
            assert_eq!(
                std::fs::read_to_string(out.join("a.parquet")).unwrap(),
                round
            );
            assert_eq!(names(&out.join("b.zarr")), vec![round.to_string()]);
            assert_eq!(names(&out), vec![LOCK_FILE, "a.parquet", "b.zarr"]);
        }
        // A failed run into an existing folder keeps the previous outputs.
        {
            let mut set = StagedSet::create(&out).unwrap();
            std::fs::write(set.staged("a.parquet").unwrap(), "three").unwrap();
        }
        assert_eq!(
            std::fs::read_to_string(out.join("a.parquet")).unwrap(),
            "two"
        );
        assert_eq!(names(&out), vec![LOCK_FILE, "a.parquet", "b.zarr"]);
    }

    #[test]
    fn a_failed_run_removes_its_staged_store_folders() {
        // A zarr store is a tree of folders: a run that fails after
        // writing part of one leaves none of it behind.
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        {
            let mut set = StagedSet::create(&out).unwrap();
            let store = set.staged("segmentation.zarr").unwrap();
            std::fs::create_dir_all(store.join("tables/table/X")).unwrap();
            std::fs::write(store.join("tables/table/X/zarr.json"), "{}").unwrap();
            std::fs::write(set.staged("cells.parquet").unwrap(), "x").unwrap();
        }
        assert!(!out.exists(), "{:?}", names(tmp.path()));
        std::fs::create_dir(&out).unwrap();
        {
            let mut set = StagedSet::create(&out).unwrap();
            let store = set.staged("cells.anndata.zarr").unwrap();
            std::fs::create_dir_all(store.join("obs/kind")).unwrap();
        }
        assert_eq!(names(&out), vec![LOCK_FILE]);
    }

    #[test]
    fn a_second_set_is_refused_while_the_first_holds_the_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let first = StagedSet::create(tmp.path()).unwrap();
        let e = StagedSet::create(tmp.path()).unwrap_err();
        let text = format!("{e:#}");
        assert!(text.contains("in use by another seggpu run"), "{text}");
        assert!(text.contains(&std::process::id().to_string()), "{text}");
        drop(first);
        StagedSet::create(tmp.path()).unwrap().commit().unwrap();
    }

    #[test]
    fn staging_of_dead_processes_is_removed_and_names_are_checked() {
        let tmp = tempfile::tempdir().unwrap();
        // Process ids above the kernel's limit (2^22) are never alive.
        let stale_dir = tmp.path().join(".seggpu-partial-999999999");
        std::fs::create_dir(&stale_dir).unwrap();
        std::fs::write(stale_dir.join("cells.parquet"), "x").unwrap();
        std::fs::write(
            tmp.path().join(".cells.parquet.seggpu-partial-999999998"),
            "x",
        )
        .unwrap();
        std::fs::write(tmp.path().join("keep.txt"), "mine").unwrap();
        let mut set = StagedSet::create(tmp.path()).unwrap();
        assert_eq!(names(tmp.path()).len(), 3, "{:?}", names(tmp.path()));
        for bad in ["", "../x", "a/b", ".seggpu.lock"] {
            assert!(set.staged(bad).is_err(), "{bad}");
        }
        set.staged("never_written").unwrap();
        let e = set.commit().unwrap_err();
        assert!(format!("{e}").contains("never_written"), "{e}");
        assert_eq!(names(tmp.path()), vec![LOCK_FILE, "keep.txt"]);
    }
}
