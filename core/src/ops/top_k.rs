//! Top-k selection per head on the scores' device: [`keep_top_k`](crate::keep_top_k)'s rule (the
//! first `sinks` and last `window` entries, then the best-scored rest up to the budget; NaN lowest,
//! ties to the newer entry; sorted indices) as a candle `CustomOp1`, so that scores computed on a GPU
//! stay there and only the kept indices reach the host.
//!
//! Both paths find the threshold by a 4-pass radix select over an order-preserving 32-bit image of
//! the scores (8 bits a pass, most significant first): the `fill`-th largest image among the
//! candidates and how many of the entries equal to it are taken. Every candidate above it is kept,
//! and of those equal to it the newest ones; one walk in index order then writes the kept indices
//! sorted. The CUDA kernel runs one block per head: histograms in shared memory (warp-aggregated
//! atomics, since scores concentrate in few bins), and prefix sums over per-thread segments for the
//! ranks of ties and the output positions.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};

use crate::ops::contiguous_cpu;
use crate::ops::grid::{blocks_of, Grid};
use crate::{Error, Result};

/// Per row of `scores` (`[heads, n]`, f32, any device): the indices [`keep_top_k`](crate::keep_top_k)
/// keeps, as a `[heads, min(n, budget)]` u32 tensor on the same device.
pub fn keep_top_k_rows(
    scores: &Tensor,
    sinks: usize,
    window: usize,
    budget: usize,
) -> Result<Tensor> {
    let (heads, n) = scores.dims2().map_err(|_| {
        Error::invalid(
            "keep_top_k_rows",
            format!(
                "scores have shape {:?}; expected [heads, entries]",
                scores.dims()
            ),
        )
    })?;
    if scores.dtype() != DType::F32 {
        return Err(Error::invalid(
            "keep_top_k_rows",
            format!("scores are {:?}; expected f32", scores.dtype()),
        ));
    }
    if n <= budget {
        let all = Tensor::arange(0u32, n as u32, scores.device())?;
        return Ok(all.unsqueeze(0)?.broadcast_as((heads, n))?.contiguous()?);
    }
    if u32::try_from(n).is_err() || i32::try_from(n).is_err() {
        return Err(Error::invalid(
            "keep_top_k_rows",
            format!("{n} entries per head exceed the index range (2^31 - 1)"),
        ));
    }
    let sinks = sinks.min(budget);
    let window = window.min(budget - sinks);
    let op = TopK {
        sinks,
        window,
        budget,
    };
    Ok(scores.contiguous()?.apply_op1_no_bwd(&op)?)
}

/// The CUDA kernel's launch: one block per head, of 1024 threads (the kernel's `THREADS`).
pub fn keep_top_k_grid(heads: usize) -> Grid {
    blocks_of(heads, 1024)
}

/// One selection's geometry, already clamped as `keep_top_k` clamps it: `sinks + window ≤ budget < n`.
#[derive(Clone, Copy, Debug)]
struct TopK {
    sinks: usize,
    window: usize,
    budget: usize,
}

/// The order-preserving image of a score: larger scores give larger images (`-0 < +0`, as
/// `total_cmp`), NaN maps to the image of -inf.
fn rank(score: f32) -> u32 {
    let bits = if score.is_nan() {
        f32::NEG_INFINITY.to_bits()
    } else {
        score.to_bits()
    };
    if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    }
}

/// Where the selection of the candidates stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Threshold {
    /// The image of the `fill`-th best candidate.
    image: u32,
    /// Candidates with exactly that image, and how many of them (the newest) are kept.
    ties: usize,
    taken: usize,
}

impl TopK {
    /// The threshold among the candidates' images for `fill > 0`, by radix select: each pass
    /// histograms the next 8 bits of the candidates that share the digits chosen so far (the host
    /// keeps only those; the kernel skips the others).
    fn threshold(&self, images: &[u32]) -> Threshold {
        let (mut prefix, mut remaining, mut ties) = (0u32, self.fill(), 0);
        let mut candidates = images.to_vec();
        for shift in [24, 16, 8, 0] {
            let mut histogram = [0usize; 256];
            for &image in &candidates {
                histogram[(image >> shift) as usize & 255] += 1;
            }
            for digit in (0..256).rev() {
                if histogram[digit] >= remaining {
                    prefix |= (digit as u32) << shift;
                    ties = histogram[digit];
                    break;
                }
                remaining -= histogram[digit];
            }
            let mask = u32::MAX << shift;
            candidates.retain(|&image| image & mask == prefix);
        }
        Threshold {
            image: prefix,
            ties,
            taken: remaining,
        }
    }

    fn fill(&self) -> usize {
        self.budget - self.sinks - self.window
    }

    /// The kept indices of one row, ascending.
    fn select(&self, row: &[f32]) -> Vec<u32> {
        let n = row.len();
        let rest_end = n - self.window;
        let images: Vec<u32> = row[self.sinks..rest_end].iter().map(|&s| rank(s)).collect();
        let threshold = (self.fill() > 0).then(|| self.threshold(&images));
        let mut kept: Vec<u32> = (0..self.sinks as u32).collect();
        kept.reserve(self.budget);
        if let Some(t) = threshold {
            let mut ties_seen = 0;
            for (j, &image) in (self.sinks..).zip(&images) {
                let keep = if image == t.image {
                    // Ties go to the newest: keep this one if fewer than `taken` ties come after it.
                    ties_seen += 1;
                    t.ties - ties_seen < t.taken
                } else {
                    image > t.image
                };
                if keep {
                    kept.push(j as u32);
                }
            }
        }
        kept.extend(rest_end as u32..n as u32);
        kept
    }
}

impl CustomOp1 for TopK {
    fn name(&self) -> &'static str {
        "keep-top-k-rows"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (heads, n) = layout.shape().dims2()?;
        let scores = contiguous_cpu::<f32>(storage, layout, self.name())?;
        let kept: Vec<u32> = scores
            .chunks_exact(n)
            .flat_map(|row| self.select(row))
            .collect();
        Ok((CpuStorage::U32(kept), Shape::from((heads, self.budget))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (heads, n) = layout.shape().dims2()?;
        let out = cuda::select(self, storage, layout, heads, n)?;
        Ok((out, Shape::from((heads, self.budget))))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
    use candle_core::{CudaStorage, Layout};

    use super::{keep_top_k_grid, TopK};
    use crate::ops::cuda::contiguous_cuda;
    use crate::ops::nvrtc::{cuda_function, launch_error, KernelModule};
    use candle_core::CustomOp1;

    const MODULE: KernelModule =
        KernelModule::new("spectra_keep_top_k", spectra_kernels::cuda::KEEP_TOP_K);

    pub(super) fn select(
        op: &TopK,
        storage: &CudaStorage,
        layout: &Layout,
        heads: usize,
        n: usize,
    ) -> candle_core::Result<CudaStorage> {
        let scores = contiguous_cuda::<f32>(storage, layout, op.name())?;
        let device = &storage.device;
        let out = device.alloc_zeros::<u32>(heads * op.budget)?;
        // The caller checked n < 2^31; sinks, window and budget are below n.
        let ints = [n, op.sinks, op.window, op.budget].map(|x| x as i32);
        let kernel = cuda_function(device, &MODULE, "keep_top_k")?;
        let mut launch = kernel.builder();
        launch.arg(&scores).arg(&out);
        for i in &ints {
            launch.arg(i);
        }
        let config = keep_top_k_grid(heads).config();
        // SAFETY: arguments in the kernel's order and types; `scores` holds heads·n floats, `out`
        // heads·budget indices, and sinks + window ≤ budget < n.
        unsafe { launch.launch(config) }.map_err(|e| launch_error(&MODULE, "keep_top_k", e))?;
        Ok(CudaStorage::wrap_cuda_slice(out, device.clone()))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;
    use proptest::prelude::*;

    use super::*;
    use crate::keep_top_k;

    fn rows(scores: &[Vec<f32>], sinks: usize, window: usize, budget: usize) -> Vec<Vec<u32>> {
        let n = scores[0].len();
        let flat: Vec<f32> = scores.iter().flatten().copied().collect();
        let t = Tensor::from_vec(flat, (scores.len(), n), &Device::Cpu).unwrap();
        keep_top_k_rows(&t, sinks, window, budget)
            .unwrap()
            .to_vec2()
            .unwrap()
    }

    #[test]
    fn images_preserve_the_order_of_scores() {
        let ordered = [
            f32::NEG_INFINITY,
            -3.5,
            -f32::MIN_POSITIVE,
            -0.0,
            0.0,
            1e-40,
            2.0,
            f32::MAX,
            f32::INFINITY,
        ];
        for w in ordered.windows(2) {
            assert!(rank(w[0]) < rank(w[1]), "{} vs {}", w[0], w[1]);
        }
        assert_eq!(rank(f32::NAN), rank(f32::NEG_INFINITY));
        assert_eq!(rank(-f32::NAN), rank(f32::NEG_INFINITY));
    }

    #[test]
    fn worked_example_matches_keep_top_k() {
        let scores = [0.0, 9.0, 1.0, 5.0, f32::NAN, 5.0, 3.0, 0.0];
        // As in kv_policy's test: sinks {0}, window {7}, 9.0, then the newer of the tied 5.0s.
        assert_eq!(rows(&[scores.to_vec()], 1, 1, 4), vec![vec![0, 1, 5, 7]]);
        assert_eq!(rows(&[scores.to_vec()], 1, 1, 5), vec![vec![0, 1, 3, 5, 7]]);
        assert_eq!(rows(&[scores.to_vec()], 2, 5, 3), vec![vec![0, 1, 7]]);
        assert_eq!(
            rows(&[scores.to_vec()], 0, 0, 8),
            vec![(0..8).collect::<Vec<_>>()]
        );
        assert_eq!(
            rows(&[scores.to_vec()], 0, 0, 9),
            vec![(0..8).collect::<Vec<_>>()]
        );
    }

    #[test]
    fn bad_input_is_refused() {
        let ints = Tensor::zeros((2, 5), DType::U32, &Device::Cpu).unwrap();
        assert!(keep_top_k_rows(&ints, 0, 0, 2)
            .unwrap_err()
            .to_string()
            .contains("f32"));
        let flat = Tensor::zeros(5, DType::F32, &Device::Cpu).unwrap();
        assert!(keep_top_k_rows(&flat, 0, 0, 2)
            .unwrap_err()
            .to_string()
            .contains("[heads, entries]"));
    }

    /// Scores from a small alphabet (many ties, at the cut too), with NaN, ±inf and ±0.
    fn score() -> impl Strategy<Value = f32> {
        prop_oneof![
            4 => (-3i8..=3).prop_map(|x| x as f32 * 0.5),
            1 => Just(f32::NAN),
            1 => Just(f32::INFINITY),
            1 => Just(f32::NEG_INFINITY),
            1 => Just(-0.0f32),
            2 => -1e6f32..1e6,
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

        /// Equal to `keep_top_k` on every row, for every geometry (budget over, at and under n;
        /// protected sets over-subscribing the budget).
        #[test]
        fn equals_keep_top_k_on_every_row(
            scores in prop::collection::vec(prop::collection::vec(score(), 40), 1..4),
            n in 0usize..40,
            sinks in 0usize..8,
            window in 0usize..8,
            budget in 1usize..44,
        ) {
            let scores: Vec<Vec<f32>> = scores.into_iter().map(|mut r| { r.truncate(n); r }).collect();
            let got = if n == 0 {
                let t = Tensor::zeros((scores.len(), 0), DType::F32, &Device::Cpu).unwrap();
                keep_top_k_rows(&t, sinks, window, budget).unwrap().to_vec2::<u32>().unwrap()
            } else {
                rows(&scores, sinks, window, budget)
            };
            for (row, kept) in scores.iter().zip(&got) {
                prop_assert_eq!(kept, &keep_top_k(row, sinks, window, budget));
            }
        }

        /// Large rows of concentrated scores: many entries share the top digits, so the later radix
        /// passes decide.
        #[test]
        fn concentrated_scores_need_every_pass(
            seed in any::<u64>(),
            budget in 1usize..600,
        ) {
            use rand::{Rng, SeedableRng};
            let mut rng = crate::rng::SpectraRng::seed_from_u64(seed);
            let row: Vec<f32> = (0..1000).map(|_| 1.0 + rng.random_range(0..64) as f32 * f32::EPSILON).collect();
            prop_assert_eq!(&rows(std::slice::from_ref(&row), 3, 5, budget)[0], &keep_top_k(&row, 3, 5, budget));
        }
    }
}
