//! A third-party plugin crate: it registers a weight constraint and a KV eviction policy with spectra
//! without editing any spectra crate. A binary that uses it adds one line, `use third_party_plugin as _;`,
//! so that the linker keeps the registrations.

mod max_entry_clip;
mod value_norm;

pub use max_entry_clip::MaxEntryClip;
pub use value_norm::ValueNorm;
