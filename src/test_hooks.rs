//! Test hooks: sizes that the test suite sets through environment variables
//! so that small samples cross batch, file and group boundaries. They are
//! read only in builds with the `testing` feature, which only the test suite
//! enables; other builds ignore the variables.

/// The value of environment variable `name` parsed as `T`, in builds with the
/// `testing` feature; `None` in other builds, or when unset or unparsable.
pub(crate) fn value<T: std::str::FromStr>(name: &str) -> Option<T> {
    if cfg!(feature = "testing") {
        std::env::var(name).ok()?.parse().ok()
    } else {
        None
    }
}
