//! From raw per-query-head scores to one score per entry of a KV head: z-normalisation over the
//! candidates, the GQA reduction, and seeded tie noise. One op (candle `CustomOp2` on the raw scores
//! and the noise) with a CPU path and a CUDA path, so that scores computed on the GPU stay there.

use std::ops::Range;

use candle_core::{CpuStorage, CustomOp2, Device, Layout, Shape, Tensor};
use rand::Rng;
use spectra_core::ops::contiguous_cpu;
use spectra_core::ops::grid::{blocks_of, grid_stride, Grid};
use spectra_core::rng::derived_rng;
use spectra_core::{Error, GqaAggregation, Result};

/// Standard deviations below this are clamped, as in the reference (`std.clamp(min=1e-6)`), so that
/// constant scores do not divide by zero.
const MIN_STD: f64 = 1e-6;

/// Upper end of the uniform tie-breaking noise, as in the reference: far below any real score gap of
/// z-scores, enough to order exact ties reproducibly.
const TIE_NOISE: f32 = 1e-6;

/// The tie noise of one (layer, KV head): `n` draws of U(0, 1e-6) from a generator seeded by
/// (seed, layer, KV head), so that every device adds the same numbers.
pub fn tie_noise(
    seed: u64,
    layer: usize,
    kv_head: usize,
    n: usize,
    device: &Device,
) -> Result<Tensor> {
    let mut rng = derived_rng(seed, ((layer as u64) << 32) | kv_head as u64);
    let noise: Vec<f32> = (0..n).map(|_| rng.random_range(0.0..TIE_NOISE)).collect();
    Ok(Tensor::from_vec(noise, n, device)?)
}

/// How raw scores are finished.
#[derive(Clone, Debug, PartialEq)]
pub struct Finish {
    /// Entries whose scores set the z-normalisation's mean and deviation.
    pub candidates: Range<usize>,
    /// z-normalise each query head's row (finite values only; NaN and ±inf do not poison the
    /// statistics, and a row without finite candidates is left as it is).
    pub normalize: bool,
    pub reduce: GqaAggregation,
}

impl Finish {
    /// `[n]`: the rows of `raw` (`[group, n]`, f32) z-normalised, reduced over the group, plus `noise`
    /// (`[n]`, f32), on `raw`'s device.
    pub fn apply(&self, raw: &Tensor, noise: &Tensor) -> Result<Tensor> {
        let (_, n) = raw.dims2()?;
        if noise.dims() != [n]
            || self.candidates.start > self.candidates.end
            || self.candidates.end > n
        {
            return Err(Error::invalid(
                "TriAttention",
                format!(
                    "finishing scores of shape {:?} with noise {:?} over candidates {:?}: expected [group, n], [n] \
                     and a range within 0..n",
                    raw.dims(),
                    noise.dims(),
                    self.candidates
                ),
            ));
        }
        Ok(raw
            .contiguous()?
            .apply_op2_no_bwd(&noise.contiguous()?, self)?)
    }

    /// The host path, on rows `[group][n]`.
    /// The CUDA path's kernels in launch order, each with its grid, for `group` rows of `n`
    /// entries: the row statistics (a block per row), the reduction (a thread per entry). 256
    /// threads a block, the kernels' `THREADS`.
    pub fn kernel_grids(group: usize, n: usize) -> [(&'static str, Grid); 2] {
        const THREADS: u32 = 256;
        [
            ("tri_row_stats", blocks_of(group, THREADS)),
            ("tri_finish", grid_stride(n, THREADS)),
        ]
    }

    fn host(&self, raw: &[f32], group: usize, noise: &[f32]) -> Vec<f32> {
        let n = noise.len();
        let z: Vec<Vec<f32>> = raw
            .chunks_exact(n.max(1))
            .take(group)
            .map(
                |row| match self.normalize.then(|| self.row_stats(row)).flatten() {
                    Some((mean, std)) => row
                        .iter()
                        .map(|&x| ((x as f64 - mean) / std) as f32)
                        .collect(),
                    None => row.to_vec(),
                },
            )
            .collect();
        (0..n)
            .map(|j| {
                let reduced = match self.reduce {
                    GqaAggregation::Mean => z.iter().map(|r| r[j]).sum::<f32>() / z.len() as f32,
                    GqaAggregation::Max | GqaAggregation::NotApplicable => {
                        z.iter().map(|r| r[j]).fold(f32::NEG_INFINITY, f32::max)
                    }
                };
                reduced + noise[j]
            })
            .collect()
    }

    /// Mean and clamped standard deviation of the finite candidates, if there are any.
    fn row_stats(&self, row: &[f32]) -> Option<(f64, f64)> {
        let finite: Vec<f64> = row[self.candidates.clone()]
            .iter()
            .filter(|x| x.is_finite())
            .map(|&x| x as f64)
            .collect();
        if finite.is_empty() {
            return None;
        }
        let mean = finite.iter().sum::<f64>() / finite.len() as f64;
        let var = finite.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / finite.len() as f64;
        Some((mean, var.sqrt().max(MIN_STD)))
    }
}

impl CustomOp2 for Finish {
    fn name(&self) -> &'static str {
        "tri-attention-finish"
    }

    fn cpu_fwd(
        &self,
        raw: &CpuStorage,
        raw_layout: &Layout,
        noise: &CpuStorage,
        noise_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (group, n) = raw_layout.shape().dims2()?;
        let raw = contiguous_cpu(raw, raw_layout, self.name())?;
        let noise = contiguous_cpu(noise, noise_layout, self.name())?;
        let out = self.host(raw, group, noise);
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        raw: &candle_core::CudaStorage,
        raw_layout: &Layout,
        noise: &candle_core::CudaStorage,
        noise_layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (group, n) = raw_layout.shape().dims2()?;
        let out = cuda::finish(self, (raw, raw_layout), (noise, noise_layout), group, n)?;
        Ok((out, Shape::from(n)))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
    use candle_core::{CudaStorage, CustomOp2, Layout};
    use spectra_core::ops::cuda::contiguous_cuda;
    use spectra_core::ops::kernel_int;
    use spectra_core::ops::nvrtc::{cuda_function, launch_error, KernelModule};
    use spectra_core::GqaAggregation;

    use super::Finish;

    const MODULE: KernelModule = KernelModule::new(
        "spectra_tri_attention_finish",
        spectra_kernels::cuda::TRI_ATTENTION_FINISH,
    );

    pub(super) fn finish(
        op: &Finish,
        (raw, raw_layout): (&CudaStorage, &Layout),
        (noise, noise_layout): (&CudaStorage, &Layout),
        group: usize,
        n: usize,
    ) -> candle_core::Result<CudaStorage> {
        let raw_view = contiguous_cuda::<f32>(raw, raw_layout, op.name())?;
        let noise_view = contiguous_cuda::<f32>(noise, noise_layout, op.name())?;
        let as_i32 = |x: usize| kernel_int(op.name(), "a size", x);
        let (n_arg, group_arg) = (as_i32(n)?, as_i32(group)?);
        as_i32(n * group)?;
        let (first, last) = (as_i32(op.candidates.start)?, as_i32(op.candidates.end)?);
        let device = &raw.device;
        let stats = device.alloc_zeros::<f64>(3 * group)?;
        let out = device.alloc_zeros::<f32>(n)?;
        let kernel = |name: &str| cuda_function(device, &MODULE, name);
        let failed = |name: &'static str| move |e| launch_error(&MODULE, name, e);

        let row_stats = kernel("tri_row_stats")?;
        let mut launch = row_stats.builder();
        launch
            .arg(&raw_view)
            .arg(&stats)
            .arg(&n_arg)
            .arg(&first)
            .arg(&last);
        let [(_, per_row), (_, per_entry)] = Finish::kernel_grids(group, n);
        // SAFETY: arguments in the kernel's order and types; `raw` holds group·n floats, `stats`
        // 3·group doubles.
        unsafe { launch.launch(per_row.config()) }.map_err(failed("tri_row_stats"))?;

        let (normalize, mean) = (
            i32::from(op.normalize),
            i32::from(op.reduce == GqaAggregation::Mean),
        );
        let combine = kernel("tri_finish")?;
        let mut launch = combine.builder();
        launch
            .arg(&raw_view)
            .arg(&stats)
            .arg(&noise_view)
            .arg(&out)
            .arg(&n_arg)
            .arg(&group_arg)
            .arg(&normalize)
            .arg(&mean);
        // SAFETY: as above; `noise` and `out` hold n floats.
        unsafe { launch.launch(per_entry.config()) }.map_err(failed("tri_finish"))?;
        Ok(CudaStorage::wrap_cuda_slice(out, device.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finish(
        raw: &[Vec<f32>],
        candidates: Range<usize>,
        normalize: bool,
        reduce: GqaAggregation,
        seed: u64,
    ) -> Vec<f32> {
        let n = raw[0].len();
        let flat: Vec<f32> = raw.iter().flatten().copied().collect();
        let raw = Tensor::from_vec(flat, (raw.len(), n), &Device::Cpu).unwrap();
        let noise = tie_noise(seed, 0, 0, n, &Device::Cpu).unwrap();
        Finish {
            candidates,
            normalize,
            reduce,
        }
        .apply(&raw, &noise)
        .unwrap()
        .to_vec1()
        .unwrap()
    }

    #[test]
    fn z_scores_are_affine_invariant_and_robust() {
        let raw = vec![vec![1.0, 2.0, 3.0, 10.0]];
        let scaled = vec![raw[0].iter().map(|x| 3.0 * x - 7.0).collect::<Vec<f32>>()];
        let a = finish(&raw, 0..4, true, GqaAggregation::Max, 1);
        let b = finish(&scaled, 0..4, true, GqaAggregation::Max, 1);
        // Same noise, z-scores equal up to f32 rounding of 3x − 7.
        assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-5));
        let constant = finish(&[vec![5.0; 4]], 0..4, true, GqaAggregation::Max, 1);
        assert!(constant.iter().all(|x| x.is_finite() && x.abs() < 1e-5));
        let with_nan = finish(
            &[vec![1.0, f32::NAN, 3.0, f32::INFINITY]],
            0..4,
            true,
            GqaAggregation::Max,
            1,
        );
        assert!(with_nan[0].is_finite() && with_nan[2].is_finite());
        // A NaN score stays unusable (NaN, or -inf after the max): never ranked above a real one.
        assert!(with_nan[1].is_nan() || with_nan[1] == f32::NEG_INFINITY);
        // Max takes the dominant member, mean averages.
        let group = vec![vec![0.0, 0.0], vec![1.0, -1.0]];
        let max = finish(&group, 0..2, false, GqaAggregation::Max, 0);
        let mean = finish(&group, 0..2, false, GqaAggregation::Mean, 0);
        assert!((max[0] - 1.0).abs() < 2e-6 && (max[1] - 0.0).abs() < 2e-6);
        assert!((mean[0] - 0.5).abs() < 2e-6 && (mean[1] + 0.5).abs() < 2e-6);
    }

    /// The statistics come from the candidates only: entries outside them are scored against the
    /// candidates' mean and deviation (computed here by hand).
    #[test]
    fn statistics_come_from_the_candidates() {
        let raw = vec![vec![100.0, 1.0, 3.0, -50.0]];
        let got = finish(&raw, 1..3, true, GqaAggregation::Max, 4);
        let noise: Vec<f32> = tie_noise(4, 0, 0, 4, &Device::Cpu)
            .unwrap()
            .to_vec1()
            .unwrap();
        // Candidates 1 and 3: mean 2, deviation 1.
        for (g, (x, e)) in got
            .iter()
            .zip([98.0f32, -1.0, 1.0, -52.0].iter().zip(&noise))
        {
            assert_eq!(*g, x + e);
        }
        // No finite candidate: the row is used as it is.
        let none = finish(&[vec![f32::NAN, 2.0]], 0..1, true, GqaAggregation::Max, 5);
        assert_eq!(
            none[1],
            2.0 + tie_noise(5, 0, 0, 2, &Device::Cpu)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()[1]
        );
        let bad = Finish {
            candidates: 0..5,
            normalize: true,
            reduce: GqaAggregation::Max,
        };
        let raw = Tensor::zeros((1, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        let noise = tie_noise(0, 0, 0, 4, &Device::Cpu).unwrap();
        assert!(bad
            .apply(&raw, &noise)
            .unwrap_err()
            .to_string()
            .contains("within 0..n"));
    }
}
