//! spectra-core's error type. Every message says what was wrong and, where there is one, how to fix it.

use std::fmt;
use std::path::PathBuf;

/// A position in a config file, 1-based like an editor's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub col: usize,
}

/// A config file that could not be read, parsed or validated: where, what, and what to do about it.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// Absent for problems that belong to the file as a whole (it does not exist, a value is out of range).
    pub location: Option<Location>,
    pub message: String,
    /// A fix: the valid names, the closest spelling, or the rule that was broken.
    pub help: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(loc) = self.location {
            write!(f, ":{}:{}", loc.line, loc.col)?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),

    #[error("plugin name `{name}` is registered twice ({family}): by {first} and by {second}; rename one of them")]
    DuplicatePlugin {
        family: &'static str,
        name: &'static str,
        first: &'static str,
        second: &'static str,
    },

    #[error("device: {0}")]
    Device(String),

    #[error("`{name}`: {message}")]
    InvalidInput { name: String, message: String },

    #[error("`{name}` contains NaN or Inf ({what}); nothing was written")]
    NonFinite { name: String, what: String },

    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },

    #[error("tensor operation failed: {0}")]
    Tensor(candle_core::Error),

    #[error(transparent)]
    Plugin(Box<dyn std::error::Error + Send + Sync>),
}

impl From<candle_core::Error> for Error {
    /// Without the backtrace candle attaches when RUST_BACKTRACE is set: an error is a message for
    /// the user, and only a panic (a bug) prints a backtrace.
    fn from(e: candle_core::Error) -> Self {
        fn without_backtrace(e: candle_core::Error) -> candle_core::Error {
            match e {
                candle_core::Error::WithBacktrace { inner, .. } => without_backtrace(*inner),
                other => other,
            }
        }
        Error::Tensor(without_backtrace(e))
    }
}

impl From<Error> for candle_core::Error {
    /// For spectra's code inside candle's custom ops (a kernel that fails to compile or launch): a
    /// tensor error goes back as it was, anything else as its message.
    fn from(e: Error) -> Self {
        match e {
            Error::Tensor(inner) => inner,
            other => candle_core::Error::Msg(other.to_string()),
        }
    }
}

impl Error {
    pub fn invalid(name: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidInput {
            name: name.into(),
            message: message.into(),
        }
    }

    pub fn file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::File {
            path: path.into(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tensor_error_carries_no_backtrace() {
        let with = candle_core::Error::WithBacktrace {
            inner: Box::new(candle_core::Error::Msg("shapes differ".into())),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        assert!(
            with.to_string().lines().count() > 1,
            "the input has a backtrace"
        );
        let ours = Error::from(with).to_string();
        assert_eq!(ours, "tensor operation failed: shapes differ");
    }
}
