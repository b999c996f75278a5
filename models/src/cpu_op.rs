//! What the models' fused CPU ops (the scaled GELU, the causal softmax) share.

use candle_core::{CpuStorage, Layout, Result};

/// The elements of a contiguous f32 CPU tensor; `op` names the op in the error.
pub(crate) fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((start, end))) => Ok(&v[start..end]),
        _ => candle_core::bail!("{op}: expects a contiguous f32 tensor"),
    }
}
