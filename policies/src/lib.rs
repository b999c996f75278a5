//! spectra's KV-cache eviction policies, each a registered `KvEvictionPolicy`
//! (docs/kv-policies.md §2–4): `Full`, `StreamingLlm`, `H2o`, `SnapKv`, `RKv`, `KNorm`, `KeyDiff`,
//! `Tova`, `ExpectedAttention`, `PyramidKv`, `AdaKv`, `KvZip`, `KvZap`, `Random` and
//! `TriAttention`.

mod ada_kv;
mod expected_attention;
mod full;
mod h2o;
mod k_norm;
mod key_diff;
pub mod kv_zap;
mod kv_zip;
pub mod loaded;
mod pyramid_kv;
mod r_kv;
mod random;
mod selection;
mod snap_kv;
pub mod snap_kv_votes;
mod streaming_llm;
mod tova;
pub mod tri_attention;
mod window_attention;

#[cfg(test)]
mod conformance_tests;
#[cfg(test)]
mod testing;

pub use ada_kv::AdaKv;
pub use expected_attention::ExpectedAttention;
pub use full::Full;
pub use h2o::H2o;
pub use k_norm::KNorm;
pub use key_diff::KeyDiff;
pub use kv_zap::KvZap;
pub use kv_zip::KvZip;
pub use pyramid_kv::PyramidKv;
pub use r_kv::RKv;
pub use random::Random;
pub use snap_kv::SnapKv;
pub use streaming_llm::StreamingLlm;
pub use tova::Tova;
pub use tri_attention::{OffsetAggregation, StatsSource, TriAttention, TriAttentionMode};
pub use window_attention::Pooling;
