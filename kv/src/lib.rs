//! spectra's KV runtime: the compacting cache a decoder writes its keys and values into, and the
//! compression loop that asks a [`KvEvictionPolicy`](spectra_core::KvEvictionPolicy) when and what
//! to evict. A decoder drives both: it appends each forward pass's keys and values (and, for H2O,
//! the attention each entry received), then calls [`Compression::compress`]. With feature
//! `conformance`, the suite that holds every policy, built-in or third-party, to its contract
//! through this runtime.

pub mod cache;
pub mod compression;
#[cfg(feature = "conformance")]
pub mod conformance;

pub use cache::{headroom, KvCache, KvCacheShape};
pub use compression::{Compression, CompressionStats};
