//! spectra's RON dialect, shared by the config reader and the registry's printer.

use ron::extensions::Extensions;
use ron::Options;

/// For reading and writing: `Some` may be omitted, and a variant holding a struct reads
/// `LipschitzGpt(d_model: 256)` rather than `LipschitzGpt((d_model: 256))`.
pub fn ron_options() -> Options {
    Options::default()
        .with_default_extension(Extensions::IMPLICIT_SOME | Extensions::UNWRAP_VARIANT_NEWTYPES)
}
