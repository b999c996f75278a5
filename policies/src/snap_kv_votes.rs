//! SnapKV's vote and pooling as one op (candle `CustomOp1` on the window's logits against one KV
//! head's keys): per query row the causal softmax, the votes summed over the window, reduced over the
//! GQA group, pooled over neighbouring prefix entries, `+inf` for the window entries. A CPU path and a
//! CUDA path (three kernels: row statistics, votes, pooling), so that only the kept indices leave a
//! GPU.
//!
//! The CPU path performs exactly the arithmetic of the per-row loops it replaced (softmax shifted by
//! the row maximum, summed in index order, each weight divided by the sum, votes added in query
//! order, group reduction, pooling); masked entries get `0 / sum` as a full-row softmax gives them,
//! which is NaN when the row's sum is (a NaN or +inf logit poisons the whole row). The CUDA path
//! reduces each row's maximum and sum in parallel and uses CUDA's `expf` (within 2 ulp), so its votes
//! agree with the host's to f32 rounding, not bit for bit.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use spectra_core::ops::contiguous_cpu;
use spectra_core::ops::grid::{blocks_of, grid_stride, Grid};
use spectra_core::{Error, GqaAggregation, Result};

use crate::window_attention::{pool1d, reduce_group, Pooling};

/// The geometry of one KV head's vote.
#[derive(Clone, Debug, PartialEq)]
pub struct VotePool {
    /// Query heads sharing the KV head.
    pub group: usize,
    /// Per window query, how many entries (a prefix of the head's, in position order) it sees.
    pub visible: Vec<usize>,
    /// Entries that are pooled and compete; the rest (the window) score `+inf`.
    pub prefix: usize,
    pub kernel: usize,
    pub pooling: Pooling,
    pub reduce: GqaAggregation,
}

impl VotePool {
    /// Scores `[n]` (f32, on the logits' device) from the logits `[group · window, n]` (f32; row
    /// `h · window + i` is query `i` of member `h`).
    pub fn apply(&self, logits: &Tensor) -> Result<Tensor> {
        let (rows, n) = logits.dims2()?;
        let window = self.visible.len();
        let ok = rows == self.group * window
            && self.group > 0
            && self.prefix <= n
            && self.visible.iter().all(|&c| c <= n)
            && self.kernel % 2 == 1
            && logits.dtype() == candle_core::DType::F32;
        if !ok {
            return Err(Error::invalid(
                "SnapKv",
                format!(
                    "vote over logits {:?} ({:?}) with group {}, {} window queries (visible {:?}), prefix {}, kernel {}: \
                     expected f32 [group · window, n], counts and prefix within n, an odd kernel",
                    logits.dims(),
                    logits.dtype(),
                    self.group,
                    window,
                    self.visible,
                    self.prefix,
                    self.kernel
                ),
            ));
        }
        Ok(logits.contiguous()?.apply_op1_no_bwd(self)?)
    }

    /// The CUDA path's kernels in launch order, each with its grid, for `n` entries: the row
    /// statistics (a block per window row), the votes (a thread per prefix entry), the pooling (a
    /// thread per entry). 256 threads a block, the kernels' `THREADS`.
    pub fn kernel_grids(&self, n: usize) -> [(&'static str, Grid); 3] {
        const THREADS: u32 = 256;
        [
            (
                "snap_row_stats",
                blocks_of(self.group * self.visible.len(), THREADS),
            ),
            ("snap_votes", grid_stride(self.prefix, THREADS)),
            ("snap_pool", grid_stride(n, THREADS)),
        ]
    }

    /// The host path.
    fn host(&self, logits: &[f32], n: usize) -> Vec<f32> {
        let window = self.visible.len();
        let mut weights = vec![0f32; n];
        let per_member: Vec<Vec<f32>> = (0..self.group)
            .map(|member| {
                let mut votes = vec![0f32; n];
                for (i, &visible) in self.visible.iter().enumerate() {
                    let row = &logits[(member * window + i) * n..][..n];
                    let max = row[..visible]
                        .iter()
                        .copied()
                        .fold(f32::NEG_INFINITY, f32::max);
                    if max == f32::NEG_INFINITY {
                        continue;
                    }
                    let mut sum = 0f32;
                    for (w, &x) in weights.iter_mut().zip(&row[..visible]) {
                        *w = (x - max).exp();
                        sum += *w;
                    }
                    for (v, w) in votes.iter_mut().zip(&weights[..visible]) {
                        *v += w / sum;
                    }
                    for v in &mut votes[visible..] {
                        *v += 0.0 / sum;
                    }
                }
                votes
            })
            .collect();
        let votes = reduce_group(&per_member, self.reduce);
        let mut scores = pool1d(&votes[..self.prefix], self.kernel, self.pooling);
        scores.resize(n, f32::INFINITY);
        scores
    }
}

impl CustomOp1 for VotePool {
    fn name(&self) -> &'static str {
        "snap-kv-vote-pool"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, n) = layout.shape().dims2()?;
        let scores = self.host(contiguous_cpu(storage, layout, self.name())?, n);
        Ok((CpuStorage::F32(scores), Shape::from(n)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (_, n) = layout.shape().dims2()?;
        Ok((cuda::scores(self, storage, layout, n)?, Shape::from(n)))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
    use candle_core::{CudaStorage, CustomOp1, Layout};
    use spectra_core::ops::cuda::contiguous_cuda;
    use spectra_core::ops::kernel_int;
    use spectra_core::ops::nvrtc::{cuda_function, launch_error, KernelModule};
    use spectra_core::GqaAggregation;

    use super::VotePool;
    use crate::window_attention::Pooling;

    const MODULE: KernelModule = KernelModule::new(
        "spectra_snap_kv_votes",
        spectra_kernels::cuda::SNAP_KV_VOTES,
    );

    pub(super) fn scores(
        op: &VotePool,
        storage: &CudaStorage,
        layout: &Layout,
        n: usize,
    ) -> candle_core::Result<CudaStorage> {
        let logits = contiguous_cuda::<f32>(storage, layout, op.name())?;
        let device = &storage.device;
        let as_i32 = |x: usize| kernel_int(op.name(), "a size", x);
        let rows = op.group * op.visible.len();
        as_i32(rows * n)?;
        let visible = op
            .visible
            .iter()
            .map(|&c| as_i32(c))
            .collect::<candle_core::Result<Vec<i32>>>()?;
        let visible = device.clone_htod(&visible)?;
        let stats = device.alloc_zeros::<f32>(2 * rows)?;
        let votes = device.alloc_zeros::<f32>(op.prefix.max(1))?;
        let out = device.alloc_zeros::<f32>(n)?;
        let (n_arg, window, group, prefix, kernel_size) = (
            as_i32(n)?,
            as_i32(op.visible.len())?,
            as_i32(op.group)?,
            as_i32(op.prefix)?,
            as_i32(op.kernel)?,
        );
        let mean = i32::from(op.reduce == GqaAggregation::Mean);
        let avg = i32::from(op.pooling == Pooling::Avg);
        let kernel = |name: &str| cuda_function(device, &MODULE, name);
        let failed = |name: &'static str| move |e| launch_error(&MODULE, name, e);
        let [(_, per_row), (_, per_prefix_entry), (_, per_entry)] = op.kernel_grids(n);

        let row_stats = kernel("snap_row_stats")?;
        let mut launch = row_stats.builder();
        launch
            .arg(&logits)
            .arg(&visible)
            .arg(&stats)
            .arg(&n_arg)
            .arg(&window);
        // SAFETY (all three launches): arguments in the kernels' order and types; `logits` holds
        // rows·n floats, `visible` window counts ≤ n, `stats` 2·rows floats, `votes` prefix floats
        // (at least one), `out` n floats.
        unsafe { launch.launch(per_row.config()) }.map_err(failed("snap_row_stats"))?;

        let vote = kernel("snap_votes")?;
        let mut launch = vote.builder();
        launch
            .arg(&logits)
            .arg(&visible)
            .arg(&stats)
            .arg(&votes)
            .arg(&n_arg)
            .arg(&window)
            .arg(&group)
            .arg(&prefix)
            .arg(&mean);
        unsafe { launch.launch(per_prefix_entry.config()) }.map_err(failed("snap_votes"))?;

        let pool = kernel("snap_pool")?;
        let mut launch = pool.builder();
        launch
            .arg(&votes)
            .arg(&out)
            .arg(&n_arg)
            .arg(&prefix)
            .arg(&kernel_size)
            .arg(&avg);
        unsafe { launch.launch(per_entry.config()) }.map_err(failed("snap_pool"))?;
        Ok(CudaStorage::wrap_cuda_slice(out, device.clone()))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;
    use proptest::prelude::*;

    use super::*;
    use crate::window_attention::softmax_in_place;

    /// The per-row loops the op replaced: copy the row, mask what the query cannot see with -inf,
    /// softmax the whole row, add it to the member's votes; reduce, pool, +inf for the window.
    fn unfused(op: &VotePool, logits: &[f32], n: usize) -> Vec<f32> {
        let window = op.visible.len();
        let per_member: Vec<Vec<f32>> = (0..op.group)
            .map(|member| {
                let mut votes = vec![0f32; n];
                for (i, &visible) in op.visible.iter().enumerate() {
                    let mut row = logits[(member * window + i) * n..][..n].to_vec();
                    row[visible..].fill(f32::NEG_INFINITY);
                    softmax_in_place(&mut row);
                    votes.iter_mut().zip(&row).for_each(|(v, a)| *v += a);
                }
                votes
            })
            .collect();
        let votes = reduce_group(&per_member, op.reduce);
        let mut scores = pool1d(&votes[..op.prefix], op.kernel, op.pooling);
        scores.resize(n, f32::INFINITY);
        scores
    }

    fn logit() -> impl Strategy<Value = f32> {
        prop_oneof![
            8 => -6.0f32..6.0,
            1 => Just(f32::NAN),
            1 => Just(f32::INFINITY),
            1 => Just(f32::NEG_INFINITY),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

        /// Bit for bit the unfused computation (NaN where it is NaN), for any group, window, causal
        /// counts, kernel, pooling and reduction, with non-finite logits mixed in.
        #[test]
        fn fused_equals_the_unfused_loops(
            group in 1usize..4,
            window in 1usize..5,
            n in 1usize..30,
            kernel in prop::sample::select(vec![1usize, 3, 5, 7]),
            max_pool in any::<bool>(),
            mean in any::<bool>(),
            counts in prop::collection::vec(0usize..30, 5),
            values in prop::collection::vec(logit(), 4 * 5 * 30),
        ) {
            let visible: Vec<usize> = counts[..window].iter().map(|&c| c.min(n)).collect();
            let op = VotePool {
                group,
                visible,
                prefix: n - n.min(window),
                kernel,
                pooling: if max_pool { Pooling::Max } else { Pooling::Avg },
                reduce: if mean { GqaAggregation::Mean } else { GqaAggregation::Max },
            };
            let logits = values[..group * window * n].to_vec();
            let t = Tensor::from_vec(logits.clone(), (group * window, n), &Device::Cpu).unwrap();
            let fused: Vec<f32> = op.apply(&t).unwrap().to_vec1().unwrap();
            let want = unfused(&op, &logits, n);
            prop_assert_eq!(fused.len(), want.len());
            for (a, b) in fused.iter().zip(&want) {
                prop_assert!(a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()), "{} vs {}", a, b);
            }
        }
    }

    #[test]
    fn bad_geometry_is_refused() {
        let op = VotePool {
            group: 2,
            visible: vec![3, 4],
            prefix: 2,
            kernel: 3,
            pooling: Pooling::Avg,
            reduce: GqaAggregation::Mean,
        };
        let logits = Tensor::zeros((3, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(op
            .apply(&logits)
            .unwrap_err()
            .to_string()
            .contains("[group · window, n]"));
    }
}
