//! GGUF's weight formats as the block products take them: every format is read 32 elements at a
//! time (a block, or a sub-block of a K-quant's 256-element super-block) as small integers `q`, one
//! or two scales (one per 16 elements: Q6_K's sub-blocks are 16 wide) and an offset, so that the
//! block's values are `q·scale + offset`. The scalar reading here is the reference that the vector
//! code in `block_products` is tested against, and the dequantization (the expanded matrix of a
//! prompt chunk) is this reading, which gives candle's values exactly.

use candle_core::quantized::GgmlDType;

use super::BLOCK;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockFormat {
    /// `f16 d; u8 qs[16]`: element `j` is `(nibble j − 8)·d`, low nibbles first.
    Q4_0,
    /// `f16 d; f16 m; u8 qs[16]`: element `j` is `nibble j · d + m`.
    Q4_1,
    /// `f16 d; u8 qh[4]; u8 qs[16]`: Q4_0's nibbles with a fifth bit from `qh`, minus 16, times `d`.
    Q5_0,
    /// `f16 d; f16 m; u8 qh[4]; u8 qs[16]`: the same five bits, times `d`, plus `m`.
    Q5_1,
    /// `f16 d; i8 qs[32]`: element `j` is `qs[j]·d`.
    Q8_0,
    /// 256 elements: `f16 d; f16 dmin; u8 scales[12]; u8 qs[128]`; eight sub-blocks of 32, each with
    /// a 6-bit scale `sc` and minimum `m`: `nibble·d·sc − dmin·m`.
    Q4K,
    /// Q4_K with a fifth bit per element from `u8 qh[32]` (after the scales).
    Q5K,
    /// 256 elements: `u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d`; sixteen sub-blocks of 16, each
    /// `d·scale·(q − 32)` with `q` six bits, four from `ql` and two from `qh`.
    Q6K,
}

/// 32 elements of a weight row: `value_j = q_j·scales[j / 16] + offset`.
pub struct Block32 {
    pub q: [i32; BLOCK],
    pub scales: [f32; 2],
    pub offset: f32,
}

impl BlockFormat {
    pub const ALL: [BlockFormat; 8] = [
        BlockFormat::Q4_0,
        BlockFormat::Q4_1,
        BlockFormat::Q5_0,
        BlockFormat::Q5_1,
        BlockFormat::Q8_0,
        BlockFormat::Q4K,
        BlockFormat::Q5K,
        BlockFormat::Q6K,
    ];

    /// GGML's name for it.
    pub fn dtype(self) -> GgmlDType {
        match self {
            BlockFormat::Q4_0 => GgmlDType::Q4_0,
            BlockFormat::Q4_1 => GgmlDType::Q4_1,
            BlockFormat::Q5_0 => GgmlDType::Q5_0,
            BlockFormat::Q5_1 => GgmlDType::Q5_1,
            BlockFormat::Q8_0 => GgmlDType::Q8_0,
            BlockFormat::Q4K => GgmlDType::Q4K,
            BlockFormat::Q5K => GgmlDType::Q5K,
            BlockFormat::Q6K => GgmlDType::Q6K,
        }
    }

    pub fn of(dtype: GgmlDType) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.dtype() == dtype)
    }

    /// Elements of one stored unit (a block, or a K-quant's super-block).
    pub fn unit_elements(self) -> usize {
        match self {
            BlockFormat::Q4K | BlockFormat::Q5K | BlockFormat::Q6K => 256,
            _ => BLOCK,
        }
    }

    /// Bytes of one stored unit.
    pub fn unit_bytes(self) -> usize {
        match self {
            BlockFormat::Q4_0 => 18,
            BlockFormat::Q4_1 => 20,
            BlockFormat::Q5_0 => 22,
            BlockFormat::Q5_1 => 24,
            BlockFormat::Q8_0 => 34,
            BlockFormat::Q4K => 144,
            BlockFormat::Q5K => 176,
            BlockFormat::Q6K => 210,
        }
    }

    /// Where a unit's f16 scale and offset (or K-quant super-scales) lie, in bytes from its start.
    pub(super) fn half_fields(self) -> &'static [usize] {
        match self {
            BlockFormat::Q4_0 | BlockFormat::Q5_0 | BlockFormat::Q8_0 => &[0],
            BlockFormat::Q4_1 | BlockFormat::Q5_1 | BlockFormat::Q4K | BlockFormat::Q5K => &[0, 2],
            BlockFormat::Q6K => &[208],
        }
    }

    /// The first unit of `data` (whole units of this format) whose scale or offset is NaN or
    /// infinite. Such a unit makes its products NaN, or, where activations are rounded to bytes,
    /// silently wrong.
    pub fn first_non_finite_unit(self, data: &[u8]) -> Option<usize> {
        data.chunks_exact(self.unit_bytes()).position(|unit| {
            self.half_fields()
                .iter()
                .any(|&at| !f16_at(unit, at).is_finite())
        })
    }

    /// Bytes of a row of `cols` elements (a multiple of [`unit_elements`](Self::unit_elements)).
    pub fn row_bytes(self, cols: usize) -> usize {
        cols / self.unit_elements() * self.unit_bytes()
    }

    /// Block `b` (of 32 elements) of a row stored as `row`.
    pub fn block(self, row: &[u8], b: usize) -> Block32 {
        let per_unit = self.unit_elements() / BLOCK;
        let at = b / per_unit * self.unit_bytes();
        let unit = &row[at..at + self.unit_bytes()];
        let sub = b % per_unit;
        let mut q = [0i32; BLOCK];
        // One scale for the 32 elements, and the offset; Q6_K returns its two scales itself.
        let (d, offset) = match self {
            BlockFormat::Q4_0 | BlockFormat::Q4_1 => {
                let d = f16_at(unit, 0);
                let (offset, qs) = match self {
                    BlockFormat::Q4_0 => (-8.0 * d, &unit[2..18]),
                    _ => (f16_at(unit, 2), &unit[4..20]),
                };
                nibbles(qs, &mut q);
                (d, offset)
            }
            BlockFormat::Q5_0 | BlockFormat::Q5_1 => {
                let (d, offset, qh, qs) = match self {
                    BlockFormat::Q5_0 => {
                        let d = f16_at(unit, 0);
                        (d, -16.0 * d, &unit[2..6], &unit[6..22])
                    }
                    _ => (f16_at(unit, 0), f16_at(unit, 2), &unit[4..8], &unit[8..24]),
                };
                nibbles(qs, &mut q);
                let high = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
                for (j, q) in q.iter_mut().enumerate() {
                    *q |= (((high >> j) & 1) << 4) as i32;
                }
                (d, offset)
            }
            BlockFormat::Q8_0 => {
                for (q, &v) in q.iter_mut().zip(&unit[2..34]) {
                    *q = i32::from(v as i8);
                }
                (f16_at(unit, 0), 0.0)
            }
            BlockFormat::Q4K | BlockFormat::Q5K => {
                let (sc, m) = scale_min_k4(&unit[4..16], sub);
                let qs = if self == BlockFormat::Q4K {
                    &unit[16..144]
                } else {
                    &unit[48..176]
                };
                let bytes = &qs[32 * (sub / 2)..32 * (sub / 2) + 32];
                let shift = 4 * (sub % 2);
                for (q, &v) in q.iter_mut().zip(bytes) {
                    *q = i32::from((v >> shift) & 0x0F);
                }
                if self == BlockFormat::Q5K {
                    for (q, &h) in q.iter_mut().zip(&unit[16..48]) {
                        *q |= i32::from((h >> sub) & 1) << 4;
                    }
                }
                let d = f16_at(unit, 0) * f32::from(sc);
                (d, -(f16_at(unit, 2) * f32::from(m)))
            }
            BlockFormat::Q6K => {
                let (half, group) = (sub / 4, sub % 4);
                let ql = &unit[64 * half + 32 * (group % 2)..][..32];
                let qh = &unit[128 + 32 * half..][..32];
                let (low_shift, high_shift) = (4 * (group / 2), 2 * group);
                for ((q, &l), &h) in q.iter_mut().zip(ql).zip(qh) {
                    *q = i32::from(((l >> low_shift) & 0x0F) | (((h >> high_shift) & 3) << 4)) - 32;
                }
                let d = f16_at(unit, 208);
                let scale = |k: usize| d * f32::from(unit[192 + 8 * half + 2 * group + k] as i8);
                return Block32 {
                    q,
                    scales: [scale(0), scale(1)],
                    offset: 0.0,
                };
            }
        };
        Block32 {
            q,
            scales: [d, d],
            offset,
        }
    }

    /// Block `b`'s 32 values, as candle's dequantization computes them.
    pub fn dequantize_block(self, row: &[u8], b: usize) -> [f32; BLOCK] {
        let block = self.block(row, b);
        let mut out = [0f32; BLOCK];
        for (j, (o, &q)) in out.iter_mut().zip(&block.q).enumerate() {
            *o = block.scales[j / 16] * q as f32 + block.offset;
        }
        out
    }
}

pub(super) fn f16_at(bytes: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// 16 packed bytes as 32 nibbles: low nibbles (elements 0–15), then high ones.
fn nibbles(qs: &[u8], q: &mut [i32; BLOCK]) {
    for (j, &v) in qs.iter().enumerate() {
        q[j] = i32::from(v & 0x0F);
        q[j + 16] = i32::from(v >> 4);
    }
}

/// Sub-block `j`'s 6-bit scale and minimum in Q4_K's and Q5_K's 12 packed bytes (llama.cpp's
/// `get_scale_min_k4`).
pub(super) fn scale_min_k4(scales: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        (
            (scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
        )
    }
}
