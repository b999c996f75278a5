//! `x·Wᵀ` with `W` kept in GGUF's blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, and the K-quants Q4_K,
//! Q5_K, Q6_K, [`BlockFormat`]), computed as llama.cpp's CPU backend computes it: each row of `x` is
//! quantized to 8-bit blocks of 32 with one scale each, and every pair of blocks is an integer dot
//! product scaled by the two blocks' scales (plus the weight block's offset times the activation
//! block's sum). llama.cpp quantizes the activations of a K-quant product per 256 elements (Q8_K);
//! here they are quantized per 32 whatever the weights' format, a finer rounding. Decoding one token reads each weight once, in its stored
//! size: SmolLM2-135M's Q4_1 matrices are 5.1× smaller than their f32 expansion, and decoding is bound
//! by reading them.
//!
//! Where the CPU has AVX2, FMA and F16C the block products are vector code (`vpmaddubsw` on 32 byte
//! pairs); elsewhere the same integer sums are computed one element at a time, with the same result.

use candle_core::quantized::QTensor;
use candle_core::Result;
use candle_core::{Device, Tensor};

use crate::storage::op_error;

use crate::cpu_op::{vectorized, with_f32};
use crate::sgemm::Operand;
use crate::spin_pool::{run_parts, DisjointWrites};

#[cfg(target_arch = "x86_64")]
mod block_products;
mod formats;

#[cfg(target_arch = "x86_64")]
use block_products::INPUTS;
pub use formats::BlockFormat;
/// Inputs one kernel call takes at most.
#[cfg(not(target_arch = "x86_64"))]
const INPUTS: usize = 8;

/// Elements per block, in every format here.
const BLOCK: usize = 32;

/// Input rows from which a product expands the matrix to f32 instead of quantizing the inputs: the
/// integer kernels read the weights once per 16 rows, the f32 product once per 256-deep block.
pub const PREFILL_ROWS: usize = 16;

/// Elements of the largest expansion a thread keeps between products (64 MiB of f32).
const KEPT_EXPANSION: usize = 16 << 20;

thread_local! {
    /// The last product's matrix expanded to f32, rewritten by the next.
    static EXPANDED: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// 1.5·2²³: see [`quantize_rows`].
const ROUND: f32 = 12_582_912.0;

/// A `rows × cols` matrix in one block format, rows one after another as GGUF stores them.
pub struct QuantizedMatrix {
    format: BlockFormat,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
}

/// The activations' side: a row of `x` as blocks of 32 signed bytes, each with its scale `d` (the
/// block's largest magnitude / 127) and `s = d·Σ qs` (what Q4_1's offset multiplies).
struct QuantizedRows {
    blocks_per_row: usize,
    qs: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
}

impl QuantizedMatrix {
    /// The matrix of a 2-D GGUF tensor in a format this module multiplies; `None` for others (f16,
    /// Q2_K, ...), which the caller multiplies another way.
    pub fn from_qtensor(t: &QTensor) -> Result<Option<Self>> {
        let Some(format) = BlockFormat::of(t.dtype()) else {
            return Ok(None);
        };
        let &[rows, cols] = t.shape().dims() else {
            return Ok(None);
        };
        let data = t.data()?.into_owned();
        if cols % format.unit_elements() != 0 || data.len() != rows * format.row_bytes(cols) {
            return Err(op_error(
                "quantized matrix",
                format!(
                    "{format:?} data of {} bytes does not hold a {rows} × {cols} matrix",
                    data.len()
                ),
            ));
        }
        Ok(Some(QuantizedMatrix {
            format,
            rows,
            cols,
            data,
        }))
    }

    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Bytes held: the blocks as stored.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// `x·Wᵀ` for `x: [t, cols]` (f32, CPU): `[t, rows]`. Decoding's few rows (fewer than
    /// [`PREFILL_ROWS`]) are quantized and multiplied on the blocks, more are multiplied as
    /// [`forward_expanded`](Self::forward_expanded) does.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(QuantizedMatrix::forward_all(&[self], x)?.remove(0))
    }

    /// `x·Wᵀ` with the matrix expanded to f32 (how a prompt chunk is multiplied), whatever `t`.
    pub fn forward_expanded(&self, x: &Tensor) -> Result<Tensor> {
        let t = self.check_input(x)?;
        let out = with_f32(x, "quantized matmul", |x| self.multiply_expanded(x, t))?;
        Tensor::from_vec(out, (t, self.rows), &Device::Cpu)
    }

    /// Rows of `x: [t, cols]`, or an error naming both widths.
    fn check_input(&self, x: &Tensor) -> Result<usize> {
        let (t, cols) = x.dims2()?;
        if cols != self.cols {
            return Err(op_error(
                "quantized matmul",
                format!(
                    "input has {cols} features, the {} × {} matrix takes {}",
                    self.rows, self.cols, self.cols
                ),
            ));
        }
        Ok(t)
    }

    /// `[t, rows]` for many input rows (a prefill chunk): the matrix expanded to f32 on every thread,
    /// then one f32 product. Expanding costs a pass over the weights per call, ~7% of a 256-row
    /// product here; the inputs stay unquantized.
    fn multiply_expanded(&self, x: &[f32], t: usize) -> Vec<f32> {
        let len = self.rows * self.cols;
        // A matrix of a layer reuses the thread's buffer: a fresh one cost its pages' zeroing by the
        // kernel and a memset each call (7% of a prefill). It is taken out while in use, so that a
        // product reached again on this thread (a rayon worker stealing work) gets a buffer of its
        // own. A larger matrix (an output head) is not kept.
        let mut w = if len <= KEPT_EXPANSION {
            EXPANDED.take()
        } else {
            Vec::new()
        };
        if w.len() < len {
            w.resize(len, 0.0);
        }
        let blocks = len / BLOCK;
        let out = DisjointWrites::new(&mut w[..len]);
        run_parts(|part, parts| {
            for b in part * blocks / parts..(part + 1) * blocks / parts {
                let values = self.dequantize_block(b);
                // SAFETY: block `b`'s 32 elements are inside `w`, and only this part writes them.
                unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), out.at(b * BLOCK), BLOCK) };
            }
        });
        // SAFETY: `x` is `t × cols` and `w` is `rows × cols`, both row-major.
        let product = unsafe {
            crate::sgemm::matmul(
                (t, self.rows, self.cols),
                Operand::of(x, self.cols, false),
                Operand::of(&w[..len], self.cols, true),
            )
        };
        if len <= KEPT_EXPANSION {
            EXPANDED.set(w);
        }
        product
    }

    /// `x·Wᵀ` for several matrices of one input width, as `[t, rows]` each, as
    /// [`forward`](Self::forward) chooses: few rows are quantized once, and one parallel section
    /// computes every matrix (the query, key and value projections of a layer; its gate and up
    /// projections), instead of one section per matrix.
    pub fn forward_all(matrices: &[&QuantizedMatrix], x: &Tensor) -> Result<Vec<Tensor>> {
        if x.dims2()?.0 >= PREFILL_ROWS {
            return matrices.iter().map(|m| m.forward_expanded(x)).collect();
        }
        QuantizedMatrix::forward_all_quantized(matrices, x)
    }

    /// [`forward_all`](Self::forward_all) on the blocks with quantized inputs, however many rows:
    /// each row's product is the one it gets alone, and the weights are read once for all of them
    /// (many sequences decoding together).
    pub fn forward_all_quantized(matrices: &[&QuantizedMatrix], x: &Tensor) -> Result<Vec<Tensor>> {
        for m in matrices {
            m.check_input(x)?;
        }
        let (t, cols) = x.dims2()?;
        let outs = with_f32(x, "quantized matmul", |x| {
            multiply_all(matrices, &vectorized(|| quantize_rows(x, cols)), t)
        })?;
        outs.into_iter()
            .zip(matrices)
            .map(|(out, m)| Tensor::from_vec(out, (t, m.rows), &Device::Cpu))
            .collect()
    }

    /// The matrix expanded to f32, `[rows, cols]`.
    pub fn dequantize(&self) -> Vec<f32> {
        (0..self.rows * self.cols / BLOCK)
            .flat_map(|b| self.dequantize_block(b))
            .collect()
    }

    /// Row `r` expanded to f32 (an embedding's lookup).
    pub fn row(&self, r: usize) -> Vec<f32> {
        let per_row = self.cols / BLOCK;
        (r * per_row..(r + 1) * per_row)
            .flat_map(|b| self.dequantize_block(b))
            .collect()
    }

    /// Block `b` of the whole matrix (row `b / blocks per row`), in vector code where the CPU has
    /// AVX2, FMA and F16C.
    fn dequantize_block(&self, b: usize) -> [f32; BLOCK] {
        let per_row = self.cols / BLOCK;
        let row_bytes = self.format.row_bytes(self.cols);
        let row = &self.data[b / per_row * row_bytes..][..row_bytes];
        #[cfg(target_arch = "x86_64")]
        if block_products::has_avx2() {
            let mut out = [0f32; BLOCK];
            // SAFETY: the CPU has AVX2, FMA and F16C, and `row` holds block `b % per_row`.
            unsafe {
                block_products::dequantize_block_avx2(self.format, row, b % per_row, &mut out)
            };
            return out;
        }
        self.format.dequantize_block(row, b % per_row)
    }
}

/// Each row of `x` (`cols` wide, a multiple of 32) as 8-bit blocks: `qs = round(x/d)` with
/// `d = max|x|/127` over the block, so `|x − qs·d| ≤ d/2`.
#[inline(always)]
fn quantize_rows(x: &[f32], cols: usize) -> QuantizedRows {
    let blocks = x.len() / BLOCK;
    let mut q = QuantizedRows {
        blocks_per_row: cols / BLOCK,
        qs: vec![0; x.len()],
        d: vec![0.0; blocks],
        s: vec![0.0; blocks],
    };
    for (((block, qs), d), s) in x
        .chunks_exact(BLOCK)
        .zip(q.qs.chunks_exact_mut(BLOCK))
        .zip(&mut q.d)
        .zip(&mut q.s)
    {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        *d = amax / 127.0;
        let inverse = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in qs.iter_mut().zip(block) {
            // Adding and subtracting 1.5·2²³ rounds |v·inverse| ≤ 127 to the nearest integer (ties
            // to even) in vector registers; `round_ties_even` is a libm call per element.
            *q = ((v * inverse + ROUND) - ROUND) as i8;
            sum += i32::from(*q);
        }
        *s = sum as f32 * *d;
    }
    q
}

/// `[t, rows]`, row-major, for each matrix, on every thread: each thread takes an equal share of
/// every matrix's rows and computes their outputs for all `t` inputs (each weight row read once, from
/// memory, and unpacked once per eight inputs) as `[rows, t]`; a transpose at the end gives
/// `[t, rows]`.
fn multiply_all(matrices: &[&QuantizedMatrix], x: &QuantizedRows, t: usize) -> Vec<Vec<f32>> {
    let kernel = kernel();
    let mut by_row: Vec<Vec<f32>> = matrices.iter().map(|m| vec![0f32; m.rows * t]).collect();
    let outs: Vec<DisjointWrites> = by_row.iter_mut().map(|b| DisjointWrites::new(b)).collect();
    run_parts(|part, parts| {
        for (m, out) in matrices.iter().zip(&outs) {
            let row_bytes = m.format.row_bytes(m.cols);
            for r in part * m.rows / parts..(part + 1) * m.rows / parts {
                let row = &m.data[r * row_bytes..(r + 1) * row_bytes];
                for first in (0..t).step_by(INPUTS) {
                    // SAFETY: `kernel` runs on this CPU; the row and the inputs hold `nb` blocks;
                    // elements (r, first..) are inside this matrix's buffer, and only this part
                    // writes row r.
                    unsafe {
                        let n = INPUTS.min(t - first);
                        let at = std::slice::from_raw_parts_mut(out.at(r * t + first), n);
                        kernel(m.format, row, x, first, at);
                    }
                }
            }
        }
    });
    if t == 1 {
        return by_row;
    }
    by_row
        .iter()
        .zip(matrices)
        .map(|(by_row, m)| {
            let mut out = vec![0f32; t * m.rows];
            for (r, row) in by_row.chunks(t).enumerate() {
                for (i, &v) in row.iter().enumerate() {
                    out[i * m.rows + r] = v;
                }
            }
            out
        })
        .collect()
}

/// One weight row against inputs `first..first + out.len()` (at most [`INPUTS`]):
/// `(format, row, x, first, out)`.
type Kernel = unsafe fn(BlockFormat, &[u8], &QuantizedRows, usize, &mut [f32]);

/// The block products for this CPU: vector code where it has AVX2, FMA and F16C, with AVX-VNNI's
/// byte products where it has them.
fn kernel() -> Kernel {
    #[cfg(target_arch = "x86_64")]
    {
        if block_products::has_vnni() {
            return block_products::rows_vnni;
        }
        if block_products::has_avx2() {
            return block_products::rows_avx2;
        }
    }
    rows_scalar
}

/// [`dot_scalar`] for each input.
fn rows_scalar(format: BlockFormat, row: &[u8], x: &QuantizedRows, first: usize, out: &mut [f32]) {
    let nb = x.blocks_per_row;
    for (k, o) in out.iter_mut().enumerate() {
        let blocks = (first + k) * nb..(first + k + 1) * nb;
        *o = dot_scalar(
            format,
            row,
            &x.qs[blocks.start * BLOCK..blocks.end * BLOCK],
            &x.d[blocks.clone()],
            &x.s[blocks],
        );
    }
}

/// The block products one element at a time: `Σ_b d_x·Σ_half scale·Σ_j q_w q_x + offset·s_x`, with
/// the integer sums exact.
fn dot_scalar(format: BlockFormat, row: &[u8], qs: &[i8], d: &[f32], s: &[f32]) -> f32 {
    let mut sum = 0f32;
    for (b, x) in qs.chunks_exact(BLOCK).enumerate() {
        let w = format.block(row, b);
        let half = |h: usize| -> i32 {
            (16 * h..16 * h + 16)
                .map(|j| w.q[j] * i32::from(x[j]))
                .sum()
        };
        sum +=
            d[b] * (w.scales[0] * half(0) as f32 + w.scales[1] * half(1) as f32) + w.offset * s[b];
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};

    /// A `rows × cols` matrix of smooth, signed values with a few large entries.
    fn matrix(rows: usize, cols: usize, seed: f32) -> Vec<f32> {
        (0..rows * cols)
            .map(|i| {
                let v = ((i as f32 * 0.37 + seed).sin() * 1.7)
                    .tan()
                    .clamp(-6.0, 6.0);
                if i % 97 == 0 {
                    v * 4.0
                } else {
                    v
                }
            })
            .collect()
    }

    fn quantized(dtype: GgmlDType, rows: usize, cols: usize) -> (QTensor, QuantizedMatrix) {
        let w = Tensor::from_vec(matrix(rows, cols, 0.3), (rows, cols), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, dtype).unwrap();
        let m = QuantizedMatrix::from_qtensor(&q).unwrap().unwrap();
        (q, m)
    }

    fn formats() -> [GgmlDType; 8] {
        BlockFormat::ALL.map(BlockFormat::dtype)
    }

    #[test]
    fn blocks_decode_to_candles_dequantized_values_exactly() {
        for dtype in formats() {
            let (q, m) = quantized(dtype, 7, 512);
            let candle = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap();
            let candle = candle.to_vec1::<f32>().unwrap();
            // The vector expansion where the CPU has it, and the scalar reading.
            assert_eq!(m.dequantize(), candle, "{dtype:?}");
            let row_bytes = m.format.row_bytes(512);
            let scalar: Vec<f32> = m
                .data
                .chunks(row_bytes)
                .flat_map(|row| (0..512 / BLOCK).flat_map(|b| m.format.dequantize_block(row, b)))
                .collect();
            assert_eq!(scalar, candle, "{dtype:?}");
            // An embedding's lookup, row by row.
            for r in [0, 3, 6] {
                assert_eq!(
                    m.row(r),
                    candle[r * 512..(r + 1) * 512],
                    "{dtype:?} row {r}"
                );
            }
        }
    }

    /// A NaN or an infinity in any unit's scale or offset is found, at that unit; a sound matrix has
    /// none.
    #[test]
    fn non_finite_scales_are_found_at_their_unit() {
        for dtype in formats() {
            let (_, m) = quantized(dtype, 7, 512);
            assert_eq!(m.format.first_non_finite_unit(&m.data), None, "{dtype:?}");
            for &at in m.format.half_fields() {
                for bits in [0x7E00u16, 0x7C00, 0xFC00] {
                    let mut data = m.data.clone();
                    let unit = 5 * m.format.unit_bytes();
                    data[unit + at..unit + at + 2].copy_from_slice(&bits.to_le_bytes());
                    assert_eq!(
                        m.format.first_non_finite_unit(&data),
                        Some(5),
                        "{dtype:?} field {at} = {bits:#x}"
                    );
                }
            }
        }
    }

    #[test]
    fn activation_blocks_are_within_half_a_step_of_the_input() {
        let x = matrix(3, 64, 1.1);
        let q = quantize_rows(&x, 64);
        for (b, block) in x.chunks(BLOCK).enumerate() {
            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert_eq!(q.d[b], amax / 127.0);
            let qs = &q.qs[b * BLOCK..(b + 1) * BLOCK];
            for (&v, &k) in block.iter().zip(qs) {
                // Half a step, plus the f32 rounding of v/d.
                assert!(
                    (v - f32::from(k) * q.d[b]).abs() <= q.d[b] * 0.5001,
                    "{v} {k}"
                );
            }
            let sum: i32 = qs.iter().map(|&k| i32::from(k)).sum();
            assert_eq!(q.s[b], sum as f32 * q.d[b]);
        }
        let zeros = quantize_rows(&[0.0; 32], 32);
        assert_eq!((zeros.d[0], zeros.s[0]), (0.0, 0.0));
        assert!(zeros.qs.iter().all(|&k| k == 0));
    }

    /// The product against f64 sums of the dequantized weights and the dequantized activations: the
    /// kernels' integer sums are exact, so the only difference is f32 rounding of the block sums.
    #[test]
    fn products_are_the_block_sums_of_both_dequantized_sides() {
        for dtype in formats() {
            for t in [1, 3] {
                let (rows, cols) = (37, 512);
                let (_, m) = quantized(dtype, rows, cols);
                let x = matrix(t, cols, 2.0);
                let out = m
                    .forward(&Tensor::from_vec(x.clone(), (t, cols), &Device::Cpu).unwrap())
                    .unwrap()
                    .to_vec2::<f32>()
                    .unwrap();
                let xq = quantize_rows(&x, cols);
                let w = m.dequantize();
                for (i, got_row) in out.iter().enumerate() {
                    for r in 0..rows {
                        let (mut exact, mut size) = (0f64, 0f64);
                        for j in 0..cols {
                            let xv = f64::from(xq.qs[i * cols + j])
                                * f64::from(xq.d[(i * cols + j) / BLOCK]);
                            exact += f64::from(w[r * cols + j]) * xv;
                            size += (f64::from(w[r * cols + j]) * xv).abs();
                        }
                        // f32 sums over 5 blocks of values up to ~size: a few ulps of the magnitude sum.
                        let got = f64::from(got_row[r]);
                        assert!(
                            (got - exact).abs() <= 1e-6 * size + 1e-6,
                            "{dtype:?} t {t} ({i}, {r}): {got} vs {exact}"
                        );
                    }
                }
            }
        }
    }

    /// Every kernel this CPU runs (AVX-VNNI, AVX2) against the scalar sums, for 1 to 11 inputs (the
    /// groups of 8, 4, 2 and 1 a call splits them into). The integer sums are exact; the vector
    /// kernels add the blocks in other orders, and the offsets (Q4_1's minimum, or the 8 and 128
    /// that make Q4_0's and Q8_0's bytes unsigned) apart from the byte products. Those two sums may
    /// each be much larger than the result, so the f32 rounding is bounded by the size of the terms
    /// added: per block, the largest weight and 128 steps of the block's scale, times Σ|x|.
    #[test]
    fn vector_and_scalar_block_products_agree() {
        let mut kernels: Vec<(&str, Kernel)> = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if block_products::has_vnni() {
                kernels.push(("vnni", block_products::rows_vnni));
            }
            if block_products::has_avx2() {
                kernels.push(("avx2", block_products::rows_avx2));
            }
        }
        let cols = 512;
        for dtype in formats() {
            let (_, m) = quantized(dtype, 5, cols);
            let x = quantize_rows(&matrix(11, cols, 0.9), cols);
            let w = m.dequantize();
            let row_bytes = m.format.row_bytes(cols);
            for (r, row) in m.data.chunks(row_bytes).enumerate() {
                let size = |i: usize| -> f32 {
                    (0..cols / BLOCK)
                        .map(|b| {
                            let block = r * cols + b * BLOCK..r * cols + (b + 1) * BLOCK;
                            let largest = w[block].iter().fold(0f32, |a, v| a.max(v.abs()));
                            let unpacked = m.format.block(row, b);
                            let step = unpacked.scales[0].abs().max(unpacked.scales[1].abs())
                                + unpacked.offset.abs();
                            let xs = &x.qs[(i * cols + b * BLOCK)..(i * cols + (b + 1) * BLOCK)];
                            let sum_x: f32 = xs.iter().map(|&q| f32::from(q).abs()).sum();
                            (largest + 128.0 * step) * sum_x * x.d[i * cols / BLOCK + b]
                        })
                        .sum()
                };
                for t in 1..=11 {
                    let mut scalar = vec![0f32; t];
                    rows_scalar(m.format, row, &x, 0, &mut scalar);
                    for (name, kernel) in &kernels {
                        let mut vector = vec![0f32; t];
                        for first in (0..t).step_by(INPUTS) {
                            let n = INPUTS.min(t - first);
                            unsafe {
                                kernel(m.format, row, &x, first, &mut vector[first..first + n])
                            };
                        }
                        for (i, (a, b)) in scalar.iter().zip(&vector).enumerate() {
                            assert!(
                                (a - b).abs() <= 1e-6 * size(i),
                                "{name} {dtype:?} t {t}: {a} vs {b}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Against the f32 product of the dequantized weights and the unquantized input: within the
    /// activations' rounding, `Σ_j |w_j|·d_j/2`.
    #[test]
    fn products_are_within_the_activation_rounding_of_the_f32_product() {
        let (rows, cols) = (24, 256);
        for dtype in formats() {
            let (_, m) = quantized(dtype, rows, cols);
            let x = matrix(2, cols, 0.5);
            let out = m
                .forward(&Tensor::from_vec(x.clone(), (2, cols), &Device::Cpu).unwrap())
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let xq = quantize_rows(&x, cols);
            let w = m.dequantize();
            for i in 0..2 {
                for r in 0..rows {
                    let (mut exact, mut bound) = (0f64, 1e-4);
                    for j in 0..cols {
                        let wv = f64::from(w[r * cols + j]);
                        exact += wv * f64::from(x[i * cols + j]);
                        bound += wv.abs() * f64::from(xq.d[(i * cols + j) / BLOCK]) * 0.5;
                    }
                    assert!((f64::from(out[i][r]) - exact).abs() <= bound, "{dtype:?}");
                }
            }
        }
    }

    /// A prefill chunk (≥ 16 rows) multiplies the expanded matrix in f32: against f64 sums of the
    /// dequantized weights and the unquantized input, within f32 rounding of the magnitude sum.
    #[test]
    fn many_rows_multiply_the_expanded_matrix() {
        let (rows, cols, t) = (40, 256, PREFILL_ROWS + 3);
        for dtype in formats() {
            let (_, m) = quantized(dtype, rows, cols);
            let x = matrix(t, cols, 0.7);
            let out = m
                .forward(&Tensor::from_vec(x.clone(), (t, cols), &Device::Cpu).unwrap())
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let w = m.dequantize();
            for (i, got) in out.iter().enumerate() {
                for (r, &got) in got.iter().enumerate() {
                    let terms =
                        (0..cols).map(|j| f64::from(w[r * cols + j]) * f64::from(x[i * cols + j]));
                    let exact: f64 = terms.clone().sum();
                    let size: f64 = terms.map(f64::abs).sum();
                    assert!(
                        (f64::from(got) - exact).abs() <= 1e-6 * size + 1e-6,
                        "{dtype:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn several_matrices_in_one_section_are_each_matrix_alone() {
        let (_, a) = quantized(GgmlDType::Q4_1, 50, 256);
        let (_, b) = quantized(GgmlDType::Q8_0, 7, 256);
        let (_, c) = quantized(GgmlDType::Q6K, 9, 256);
        for t in [1, 4] {
            let x = Tensor::from_vec(matrix(t, 256, 0.1), (t, 256), &Device::Cpu).unwrap();
            let together = QuantizedMatrix::forward_all(&[&a, &b, &c], &x).unwrap();
            for (got, m) in together.iter().zip([&a, &b, &c]) {
                let alone = m.forward(&x).unwrap().to_vec2::<f32>().unwrap();
                assert_eq!(got.to_vec2::<f32>().unwrap(), alone);
            }
        }
    }

    #[test]
    fn wrong_widths_and_other_formats_are_refused_or_left_to_the_caller() {
        let (_, m) = quantized(GgmlDType::Q8_0, 4, 64);
        let x = Tensor::zeros((1, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
        let e = m.forward(&x).unwrap_err().to_string();
        assert!(e.contains("32 features") && e.contains("takes 64"), "{e}");
        let w = Tensor::zeros((4, 256), candle_core::DType::F32, &Device::Cpu).unwrap();
        let k = QTensor::quantize(&w, GgmlDType::Q2K).unwrap();
        assert!(QuantizedMatrix::from_qtensor(&k).unwrap().is_none());
    }
}
