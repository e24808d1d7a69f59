//! Diagnostics on stderr through the `log` facade: the library logs, the
//! binary decides what is shown. `-q` keeps errors only, the default adds
//! warnings and the one-line results, `-v` adds stage timings and details.

use log::{Level, LevelFilter, Log, Metadata, Record};

/// How much the command line asked to see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    /// `-q`: errors only (no warnings, no progress bars).
    Quiet,
    /// Warnings and results.
    Normal,
    /// `-v`: also timings and details.
    Verbose,
}

impl Verbosity {
    /// From the `-q` / `-v` flags (`-q` wins).
    pub fn from_flags(quiet: bool, verbose: bool) -> Self {
        match (quiet, verbose) {
            (true, _) => Verbosity::Quiet,
            (false, true) => Verbosity::Verbose,
            (false, false) => Verbosity::Normal,
        }
    }

    fn filter(self) -> LevelFilter {
        match self {
            Verbosity::Quiet => LevelFilter::Error,
            Verbosity::Normal => LevelFilter::Info,
            Verbosity::Verbose => LevelFilter::Debug,
        }
    }
}

/// Writes seggpu's records to stderr, prefixed by their level where it
/// matters to a reader (`warning:`, `error:`); other crates' records only
/// from warnings up, and only with `-v`.
struct StderrLogger {
    verbosity: Verbosity,
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        if metadata.target().starts_with("seggpu") {
            metadata.level() <= self.verbosity.filter()
        } else {
            self.verbosity == Verbosity::Verbose && metadata.level() <= Level::Warn
        }
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let prefix = match record.level() {
            Level::Error => "error: ",
            Level::Warn => "warning: ",
            _ => "",
        };
        let own = record.target().starts_with("seggpu");
        let origin = if own {
            String::new()
        } else {
            format!("[{}] ", record.target())
        };
        eprintln!("{prefix}{origin}{}", record.args());
    }

    fn flush(&self) {}
}

/// Installs the stderr logger. Only the first call of a process installs
/// one; later calls do nothing.
pub fn init(verbosity: Verbosity) {
    if log::set_boxed_logger(Box::new(StderrLogger { verbosity })).is_ok() {
        log::set_max_level(LevelFilter::Debug);
    }
}
