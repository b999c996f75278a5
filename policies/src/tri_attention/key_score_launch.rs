//! What the CUDA key-score kernel (`kernels/cuda/tri_attention_key_scores.cu`) is launched with
//! besides the keys. Built without the `cuda` feature, so that the kernel runs on the CPU under
//! emulation (tests/emulated_kernels.rs) with exactly the arguments and grid the GPU path passes.

use spectra_core::ops::grid::{blocks_of, Grid, MAX_BLOCKS};
use spectra_core::ops::{kernel_int, op_error};
use spectra_core::rope::RopePairing;

use super::scoring::{norm_weight, KeyScoreInputs, OffsetAggregation};

/// Keys per block (one thread each); the kernel's `TILE`.
const TILE: usize = 128;
/// The kernel's `MAX_BANDS`: head_dim up to 256.
const MAX_BANDS: usize = 128;
/// The op's name in its errors.
const OP: &str = "TriAttention key scores";

/// The kernel's arguments after the keys, in its order, and its grid.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyScoreLaunch {
    /// [ω_f][Re q̄ per head][Im q̄ per head][a·c_f per head], f64.
    pub params: Vec<f64>,
    /// Entries, bands, group size, offsets, mode (0 mean, 1 max, 2 norm only), interleaved pairs.
    pub ints: [i32; 6],
    pub scaling: f64,
    pub position: u64,
    pub grid: Grid,
}

impl KeyScoreInputs<'_> {
    /// The launch that scores `n` keys; an error where the kernel cannot take them.
    pub fn kernel_launch(&self, n: usize) -> candle_core::Result<KeyScoreLaunch> {
        let rope = self.rope;
        let (bands, group) = (rope.bands(), self.centers.len());
        if bands > MAX_BANDS {
            return Err(op_error(
                OP,
                format!(
                    "the CUDA kernel handles head_dim up to {}, the keys have {}",
                    2 * MAX_BANDS,
                    rope.head_dim
                ),
            ));
        }
        let as_i32 = |x: usize, what: &str| kernel_int(OP, what, x);
        as_i32(n * rope.head_dim, "key element count")?;
        let mode = match (self.options.disable_trig, self.options.aggregation) {
            (false, OffsetAggregation::Mean) => 0,
            (false, OffsetAggregation::Max) => 1,
            (true, _) => 2,
        };
        let ints = [
            as_i32(n, "entry count")?,
            as_i32(bands, "band count")?,
            as_i32(group, "group size")?,
            as_i32(self.table.offsets.len(), "offset count")?,
            mode,
            i32::from(rope.pairing == RopePairing::Interleaved),
        ];
        let a = rope.attention_scaling;
        let mut params = rope.inv_freq.clone();
        for part in 0..3 {
            for c in self.centers {
                params.extend((0..bands).map(|f| match part {
                    0 => c.mean_re[f] as f64,
                    1 => c.mean_im[f] as f64,
                    _ => norm_weight(c, f, a, self.options.disable_mlr),
                }));
            }
        }
        // Blocks per query head at most; each loops over the remaining tiles.
        let tile_blocks = n.div_ceil(TILE).min(MAX_BLOCKS as usize);
        // Max: one block per (tile, query head), the heads of a tile adjacent.
        let blocks = if mode == 1 {
            tile_blocks * group
        } else {
            tile_blocks
        };
        Ok(KeyScoreLaunch {
            params,
            ints,
            scaling: a,
            position: self.table.position,
            grid: blocks_of(blocks, TILE as u32),
        })
    }
}
