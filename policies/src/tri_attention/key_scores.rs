//! The TriAttention key score as one fused op (candle `CustomOp1` on a KV head's keys): for a block of
//! keys, every query head of the group, every band and every future offset in one pass over the keys,
//! with a CPU path and a CUDA path (compiled at run time by NVRTC).
//!
//! Both paths evaluate [`GroupForms`]'s weights (scoring.rs) the same way: per key, band by band in
//! increasing order, `trig += u_f·k̃re_f + v_f·k̃im_f` for each form and `norm += w_f·|k̃_f|`, then
//! `trig + norm` (mean), `max_δ trig_δ + norm` (max) or `0 + norm` (norm only), each operation
//! correctly rounded and unfused. The CUDA kernel builds the weights itself, per block, from the
//! centres and the RoPE frequencies, with the phases `θ = ω_f (t + δ)` formed and reduced modulo 2π in
//! double precision exactly as the host does; only `sincos` may differ in the last bit of a double
//! (CUDA's and the C library's are both within 1 ulp), which survives rounding to f32 only in rare
//! ties. The two devices therefore agree to the last bit almost always, and to an f32 rounding of a
//! weight otherwise.

use crate::tri_attention::query_stats::HeadBandStats;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;
use spectra_core::ops::{contiguous_cpu, op_error};
use spectra_core::rope::RopePairing;
use spectra_core::{Error, Result};

pub use super::scoring::KeyScoreInputs;
use super::scoring::{GroupForms, OffsetAggregation};

/// Raw scores `[group, n]` (f32, on the keys' device) of the keys `[n, head_dim]` (post-RoPE; f32, f16
/// or bf16 are read as they are, other float types are converted to f32 first).
pub fn key_scores(keys: &Tensor, inputs: &KeyScoreInputs<'_>) -> Result<Tensor> {
    let (n, d) = keys.dims2().map_err(|_| {
        Error::invalid(
            "TriAttention",
            format!(
                "keys have shape {:?}; expected [entries, head_dim]",
                keys.dims()
            ),
        )
    })?;
    let rope = inputs.rope;
    if d != rope.head_dim || d % 2 != 0 || rope.inv_freq.len() != d / 2 {
        return Err(Error::invalid(
            "TriAttention",
            format!(
                "keys have head_dim {d}, the RoPE description {} with {} frequencies",
                rope.head_dim,
                rope.inv_freq.len()
            ),
        ));
    }
    let bands = d / 2;
    let short = |c: &HeadBandStats<'_>| {
        [c.mean_re.len(), c.mean_im.len(), c.abs_mean.len()]
            .iter()
            .any(|&l| l != bands)
    };
    if inputs.centers.is_empty() || inputs.centers.iter().any(short) {
        return Err(Error::invalid(
            "TriAttention",
            format!(
                "the KV head needs one centre per query head with {bands} bands each, got {} centres",
                inputs.centers.len()
            ),
        ));
    }
    let group = inputs.centers.len();
    if n == 0 {
        return Ok(Tensor::zeros((group, 0), DType::F32, keys.device())?);
    }
    let keys = match keys.dtype() {
        DType::F32 | DType::F16 | DType::BF16 => keys.contiguous()?,
        _ => keys.to_dtype(DType::F32)?,
    };
    Ok(keys.apply_op1_no_bwd(&KeyScores { inputs, n, d })?)
}

struct KeyScores<'a> {
    inputs: &'a KeyScoreInputs<'a>,
    n: usize,
    d: usize,
}

impl KeyScores<'_> {
    fn out_shape(&self) -> Shape {
        Shape::from((self.inputs.centers.len(), self.n))
    }
}

/// The op's name in its errors.
const OP: &str = "TriAttention key scores";

impl CustomOp1 for KeyScores<'_> {
    fn name(&self) -> &'static str {
        "tri-attention-key-scores"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let i = self.inputs;
        let forms = GroupForms::new(i.centers, i.table, i.rope, i.options);
        let host = HostScorer {
            forms: &forms,
            head_dim: self.d,
            pairing: i.rope.pairing,
            aggregation: i.options.aggregation,
            zeros: vec![0.0; forms.bands],
        };
        let scores = match storage {
            CpuStorage::F32(_) => host.scores(contiguous_cpu::<f32>(storage, layout, OP)?, |x| x),
            CpuStorage::F16(_) => {
                host.scores(contiguous_cpu::<f16>(storage, layout, OP)?, |x| x.to_f32())
            }
            CpuStorage::BF16(_) => {
                host.scores(contiguous_cpu::<bf16>(storage, layout, OP)?, |x| x.to_f32())
            }
            other => {
                return Err(op_error(
                    OP,
                    format!("no path for {:?} keys", other.dtype()),
                ))
            }
        };
        Ok((CpuStorage::F32(scores), self.out_shape()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let scores = cuda::scores(storage, layout, self.inputs, self.n)?;
        Ok((scores, self.out_shape()))
    }
}

/// Keys scored together on the host: the loop over bands runs across them, as across the kernel's
/// threads, so that the compiler vectorises it (16 f32: one AVX-512 register).
const LANES: usize = 16;

/// Keys per parallel task.
const KEYS_PER_TASK: usize = 512;

struct HostScorer<'a> {
    forms: &'a GroupForms,
    head_dim: usize,
    pairing: RopePairing,
    aggregation: OffsetAggregation,
    /// `bands` zero weights, for padding a group of sums.
    zeros: Vec<f32>,
}

impl HostScorer<'_> {
    /// Scores `[group][n]` of the row-major keys.
    fn scores<T: Copy + Send + Sync>(
        &self,
        keys: &[T],
        to_f32: impl Fn(T) -> f32 + Sync,
    ) -> Vec<f32> {
        let (d, group) = (self.head_dim, self.forms.group);
        let n = keys.len() / d;
        let parts: Vec<Vec<f32>> = keys
            .par_chunks(KEYS_PER_TASK * d)
            .map(|part| self.score_part(part, &to_f32))
            .collect();
        let mut out = vec![0f32; group * n];
        for (p, part) in parts.iter().enumerate() {
            let m = part.len() / group;
            for h in 0..group {
                let at = h * n + p * KEYS_PER_TASK;
                out[at..at + m].copy_from_slice(&part[h * m..(h + 1) * m]);
            }
        }
        out
    }

    /// Scores `[group][m]` of `m` consecutive keys, with the widest vector instructions the CPU has.
    /// Every variant performs the same unfused operations in the same order: the same bits.
    fn score_part<T: Copy>(&self, keys: &[T], to_f32: &impl Fn(T) -> f32) -> Vec<f32> {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU supports AVX-512F.
                return unsafe { self.score_part_avx512(keys, to_f32) };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2.
                return unsafe { self.score_part_avx2(keys, to_f32) };
            }
        }
        self.score_part_portable(keys, to_f32)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn score_part_avx512<T: Copy>(
        &self,
        keys: &[T],
        to_f32: &impl Fn(T) -> f32,
    ) -> Vec<f32> {
        self.score_part_portable(keys, to_f32)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn score_part_avx2<T: Copy>(&self, keys: &[T], to_f32: &impl Fn(T) -> f32) -> Vec<f32> {
        self.score_part_portable(keys, to_f32)
    }

    /// The scoring loop, inlined into each of the variants above so that each is compiled for its
    /// instruction set.
    #[inline(always)]
    fn score_part_portable<T: Copy>(&self, keys: &[T], to_f32: &impl Fn(T) -> f32) -> Vec<f32> {
        let (d, bands, group) = (self.head_dim, self.forms.bands, self.forms.group);
        let m = keys.len() / d;
        let mut out = vec![0f32; group * m];
        // Band-major copies of LANES keys: re[f][lane], im[f][lane], |k̃_f|.
        let mut re = vec![[0f32; LANES]; bands];
        let mut im = vec![[0f32; LANES]; bands];
        let mut modulus = vec![[0f32; LANES]; bands];
        let mut trig = vec![[0f32; LANES]; group * self.forms.forms];
        let mut norm = vec![[0f32; LANES]; group];
        for (b, block) in keys.chunks(LANES * d).enumerate() {
            for (lane, key) in block.chunks_exact(d).enumerate() {
                match self.pairing {
                    RopePairing::Half => {
                        let (x, y) = key.split_at(bands);
                        for (((r, i), &x), &y) in re.iter_mut().zip(im.iter_mut()).zip(x).zip(y) {
                            r[lane] = to_f32(x);
                            i[lane] = to_f32(y);
                        }
                    }
                    RopePairing::Interleaved => {
                        for ((r, i), pair) in
                            re.iter_mut().zip(im.iter_mut()).zip(key.chunks_exact(2))
                        {
                            r[lane] = to_f32(pair[0]);
                            i[lane] = to_f32(pair[1]);
                        }
                    }
                }
            }
            for ((m, x), y) in modulus.iter_mut().zip(&re).zip(&im) {
                for l in 0..LANES {
                    m[l] = (x[l] * x[l] + y[l] * y[l]).sqrt();
                }
            }
            let lanes = block.len() / d;
            self.accumulate(&re, &im, &modulus, &mut trig, &mut norm);
            for h in 0..group {
                let score = self.combine(h, &trig, &norm);
                let at = h * m + b * LANES;
                out[at..at + lanes].copy_from_slice(&score[..lanes]);
            }
        }
        out
    }

    /// Every form (`trig[h · forms + r]`) and norm term (`norm[h]`) of the LANES keys held band-major,
    /// each summed over the bands in increasing order. Sums are taken four at a time (padded with
    /// zero weights, whose sums are dropped), so that four independent chains of additions overlap.
    #[inline(always)]
    fn accumulate(
        &self,
        re: &[[f32; LANES]],
        im: &[[f32; LANES]],
        modulus: &[[f32; LANES]],
        trig: &mut [[f32; LANES]],
        norm: &mut [[f32; LANES]],
    ) {
        let forms = self.forms;
        let zeros = &self.zeros[..];
        for (first, out) in (0..).step_by(AT_ONCE).zip(norm.chunks_mut(AT_ONCE)) {
            let weights = std::array::from_fn(|i| {
                if i < out.len() {
                    forms.norm_weights(first + i)
                } else {
                    zeros
                }
            });
            let sums = weighted_sums(weights, modulus);
            out.copy_from_slice(&sums[..out.len()]);
        }
        for (first, out) in (0..).step_by(AT_ONCE).zip(trig.chunks_mut(AT_ONCE)) {
            let rows = std::array::from_fn(|i| {
                if i < out.len() {
                    let row = first + i;
                    forms.form(row / forms.forms, row % forms.forms)
                } else {
                    (zeros, zeros)
                }
            });
            let sums = form_sums(rows, re, im);
            out.copy_from_slice(&sums[..out.len()]);
        }
    }

    /// Query head `h`'s scores from the accumulated forms and norm term.
    #[inline(always)]
    fn combine(&self, h: usize, trig: &[[f32; LANES]], norm: &[[f32; LANES]]) -> [f32; LANES] {
        let forms = self.forms.forms;
        let head = &trig[h * forms..(h + 1) * forms];
        let best = match (forms, self.aggregation) {
            (0, _) => [0f32; LANES],
            (_, OffsetAggregation::Mean) => head[0],
            (_, OffsetAggregation::Max) => {
                let mut best = [f32::NEG_INFINITY; LANES];
                for t in head {
                    for l in 0..LANES {
                        best[l] = best[l].max(t[l]);
                    }
                }
                best
            }
        };
        std::array::from_fn(|l| best[l] + norm[h][l])
    }
}

/// Sums taken together on the host (independent accumulators in registers).
const AT_ONCE: usize = 4;

/// `Σ_f w_r[f] · m[f][l]` for each of the AT_ONCE weight vectors `w_r`, in band order.
#[inline(always)]
fn weighted_sums(weights: [&[f32]; AT_ONCE], modulus: &[[f32; LANES]]) -> [[f32; LANES]; AT_ONCE] {
    let mut acc = [[0f32; LANES]; AT_ONCE];
    for (f, m) in modulus.iter().enumerate() {
        for (acc, w) in acc.iter_mut().zip(&weights) {
            let w = w[f];
            for l in 0..LANES {
                acc[l] += w * m[l];
            }
        }
    }
    acc
}

/// `Σ_f u_r[f]·re[f][l] + v_r[f]·im[f][l]` for each of the AT_ONCE forms `(u_r, v_r)`, in band order.
#[inline(always)]
fn form_sums(
    forms: [(&[f32], &[f32]); AT_ONCE],
    re: &[[f32; LANES]],
    im: &[[f32; LANES]],
) -> [[f32; LANES]; AT_ONCE] {
    let mut acc = [[0f32; LANES]; AT_ONCE];
    for (f, (x, y)) in re.iter().zip(im).enumerate() {
        for (acc, (u, v)) in acc.iter_mut().zip(&forms) {
            let (u, v) = (u[f], v[f]);
            for l in 0..LANES {
                acc[l] += u * x[l] + v * y[l];
            }
        }
    }
    acc
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::{bf16, f16};
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, PushKernelArg};
    use candle_core::cuda_backend::CudaStorageSlice;
    use candle_core::{CudaDevice, CudaStorage, Layout};
    use spectra_core::ops::cuda::contiguous_cuda;
    use spectra_core::ops::nvrtc::{cuda_function, launch_error, KernelModule};
    use spectra_core::ops::op_error;

    use super::super::key_score_launch::KeyScoreLaunch;
    use super::{KeyScoreInputs, OP};

    const MODULE: KernelModule = KernelModule::new(
        "spectra_tri_attention_key_scores",
        spectra_kernels::cuda::TRI_ATTENTION_KEY_SCORES,
    );

    /// A launch's arguments besides the keys, on the device.
    struct Launch<'a> {
        device: &'a CudaDevice,
        params: CudaSlice<f64>,
        out: CudaSlice<f32>,
        host: KeyScoreLaunch,
    }

    impl Launch<'_> {
        fn run<T>(&self, function: &str, keys: &CudaView<'_, T>) -> candle_core::Result<()> {
            let kernel = cuda_function(self.device, &MODULE, function)?;
            let mut builder = kernel.builder();
            builder.arg(keys).arg(&self.params).arg(&self.out);
            for i in &self.host.ints {
                builder.arg(i);
            }
            builder.arg(&self.host.scaling).arg(&self.host.position);
            // SAFETY: the arguments follow the kernel's signature in order and type; the keys hold
            // n·head_dim elements, `params` F + 3·group·F doubles laid out as the kernel reads them,
            // `out` group·n floats.
            unsafe { builder.launch(self.host.grid.config()) }
                .map(|_| ())
                .map_err(|e| launch_error(&MODULE, function, e).into())
        }
    }

    pub(super) fn scores(
        storage: &CudaStorage,
        layout: &Layout,
        inputs: &KeyScoreInputs<'_>,
        n: usize,
    ) -> candle_core::Result<CudaStorage> {
        let host = inputs.kernel_launch(n)?;
        let device = &storage.device;
        let launch = Launch {
            device,
            params: device.clone_htod(&host.params)?,
            out: device.alloc_zeros::<f32>(inputs.centers.len() * n)?,
            host,
        };
        match &storage.slice {
            CudaStorageSlice::F32(_) => launch.run(
                "tri_key_scores_f32",
                &contiguous_cuda::<f32>(storage, layout, OP)?,
            )?,
            CudaStorageSlice::F16(_) => launch.run(
                "tri_key_scores_f16",
                &contiguous_cuda::<f16>(storage, layout, OP)?,
            )?,
            CudaStorageSlice::BF16(_) => launch.run(
                "tri_key_scores_bf16",
                &contiguous_cuda::<bf16>(storage, layout, OP)?,
            )?,
            _ => return Err(op_error(OP, "keys must be f32, f16 or bf16")),
        }
        Ok(CudaStorage::wrap_cuda_slice(launch.out, device.clone()))
    }
}

#[cfg(test)]
mod tests {
    use crate::tri_attention::query_stats::{QueryBandStats, QueryStatsMeta};
    use rand::Rng;
    use spectra_core::rng::derived_rng;
    use spectra_core::rope::{RopeScaling, RopeSpec};

    use crate::tri_attention::{OffsetTable, ScoreOptions};

    use super::*;

    /// The host path's vectorised variants (AVX-512, AVX2, and the portable build) produce the same
    /// bits: the same unfused operations in the same order, only wider.
    #[test]
    fn every_instruction_set_gives_the_same_bits() {
        let mut rng = derived_rng(21, 0);
        let rope = RopeSpec::new(128, 10000.0, RopePairing::Interleaved, RopeScaling::None);
        let n = 3 * rope.bands();
        let values = |rng: &mut spectra_core::rng::SpectraRng| -> Vec<f32> {
            (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
        };
        let (re, im) = (values(&mut rng), values(&mut rng));
        let abs = re.iter().zip(&im).map(|(a, b)| a.hypot(*b) + 0.1).collect();
        let stats =
            QueryBandStats::new(QueryStatsMeta::for_rope(&rope, 1, 3), re, im, abs).unwrap();
        let centers: Vec<_> = (0..3).map(|h| stats.head(0, h).unwrap()).collect();
        let table = OffsetTable::new(&rope, 12_345, 1 << 16);
        let keys: Vec<f32> = (0..37 * 128).map(|_| rng.random_range(-2.0..2.0)).collect();
        for aggregation in [OffsetAggregation::Mean, OffsetAggregation::Max] {
            let options = ScoreOptions {
                max_offset: 1 << 16,
                aggregation,
                disable_mlr: false,
                disable_trig: false,
            };
            let forms = GroupForms::new(&centers, &table, &rope, &options);
            let host = HostScorer {
                forms: &forms,
                head_dim: 128,
                pairing: rope.pairing,
                aggregation,
                zeros: vec![0.0; 64],
            };
            let portable = host.score_part_portable(&keys, &|x| x);
            assert_eq!(host.score_part(&keys, &|x| x), portable);
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2.
                assert_eq!(unsafe { host.score_part_avx2(&keys, &|x| x) }, portable);
            }
        }
    }
}
