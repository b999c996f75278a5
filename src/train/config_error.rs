//! Errors found after a config is parsed (routing, sizes, memory), placed at their line in the file
//! as `spectra check` places them.

use std::path::Path;

use spectra_core::config::Invalid;
use spectra_core::error::ConfigError;
use spectra_core::Error;

/// `e` at the line of its `near` text in `file`.
pub fn config_error(file: &Path, e: Invalid) -> Error {
    if let Ok(text) = std::fs::read_to_string(file) {
        return Error::Config(e.in_file(&text, file));
    }
    let near = e.near.map(|n| format!(" (near `{n}`)")).unwrap_or_default();
    Error::Config(ConfigError {
        file: file.to_path_buf(),
        location: None,
        message: format!("{}{near}", e.message),
        help: e.help,
    })
}

/// A model's refusal of one of its sizes (named `model.FIELD`) at that field's line in `file`;
/// other errors as they are.
pub fn model_error(file: &Path, e: Error) -> Error {
    match e {
        Error::InvalidInput { name, message } => match name.strip_prefix("model.") {
            Some(field) => config_error(file, Invalid::new(message).near(format!("{field}:"))),
            None => Error::InvalidInput { name, message },
        },
        other => other,
    }
}
