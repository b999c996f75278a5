//! Query centres estimated from the observation window, for TriAttention without a calibration file.

use crate::tri_attention::query_stats::{QueryBandStats, QueryStatsAccumulator, QueryStatsMeta};
use candle_core::DType;
use spectra_core::rope::RopeSpec;
use spectra_core::{Error, KvLayerView, KvSideInfo, Result};

use crate::window_attention::window_queries;

/// Per query head of the layer (as "layer 0"), the statistics of the window's queries with RoPE
/// inverted at their positions (the last `w` before `position`).
pub fn estimate(
    side: &KvSideInfo<'_>,
    layer: &KvLayerView<'_>,
    rope: &RopeSpec,
    position: u64,
) -> Result<QueryBandStats> {
    let queries = window_queries(side, layer, "TriAttention")?;
    let (heads, window, head_dim) = queries.dims3()?;
    if head_dim != rope.head_dim {
        return Err(Error::invalid(
            "TriAttention",
            format!(
                "window queries have head_dim {head_dim}, the RoPE description {}",
                rope.head_dim
            ),
        ));
    }
    let mut acc = QueryStatsAccumulator::new(QueryStatsMeta::for_rope(rope, 1, heads))?;
    let first = position.saturating_sub(window as u64);
    for (h, rows) in queries
        .to_dtype(DType::F32)?
        .to_vec3::<f32>()?
        .into_iter()
        .enumerate()
    {
        for (i, q) in rows.into_iter().enumerate() {
            let q: Vec<f64> = q.into_iter().map(f64::from).collect();
            let pre_rope: Vec<f32> = rope
                .invert(&q, (first + i as u64) as f64)?
                .into_iter()
                .map(|x| x as f32)
                .collect();
            acc.add(0, h, &pre_rope)?;
        }
    }
    acc.finish()
}
