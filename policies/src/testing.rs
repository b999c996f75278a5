//! Test fixtures: small caches built with the real `KvCache`.

use candle_core::{DType, Device, Tensor};
use rand::Rng;
use spectra_core::{
    scores_to_host, KvEvictionPolicy, KvLayerView, KvPhase, KvSideInfo, KvStepContext,
};
use spectra_kv::{KvCache, KvCacheShape};

pub struct Layer {
    pub cache: KvCache,
}

impl Layer {
    /// `keys[h][j]` of every head, values equal to the keys, the given positions.
    pub fn from_head_keys(
        keys: &[Vec<Vec<f32>>],
        positions: &[u64],
        group: usize,
        tracks_attention: bool,
    ) -> Self {
        let heads = keys.len();
        let n = positions.len();
        let d = keys[0].first().map_or(1, Vec::len);
        let shape = KvCacheShape {
            layers: 1,
            kv_heads: heads,
            head_dim: d,
            group_size: group,
        };
        let mut cache = KvCache::new(shape, DType::F32, &Device::Cpu, tracks_attention).unwrap();
        let flat: Vec<f32> = keys.iter().flatten().flatten().copied().collect();
        let t = Tensor::from_vec(flat, (heads, n, d), &Device::Cpu).unwrap();
        cache.append(0, &t, &t, positions).unwrap();
        Layer { cache }
    }

    /// One head holding `keys`, at positions 0, 1, ...
    pub fn from_keys(keys: &[Vec<f32>], group: usize) -> Self {
        let positions: Vec<u64> = (0..keys.len() as u64).collect();
        Self::from_head_keys(&[keys.to_vec()], &positions, group, false)
    }

    /// Standard-normal-ish keys (uniform in [-1, 1)), positions 0..n.
    pub fn random(n: usize, d: usize, heads: usize, group: usize, seed: u64) -> Self {
        let mut rng = spectra_core::rng::derived_rng(seed, 0);
        let keys: Vec<Vec<Vec<f32>>> = (0..heads)
            .map(|_| {
                (0..n)
                    .map(|_| (0..d).map(|_| rng.random_range(-1.0..1.0)).collect())
                    .collect()
            })
            .collect();
        let positions: Vec<u64> = (0..n as u64).collect();
        Self::from_head_keys(&keys, &positions, group, false)
    }

    pub fn view(&self) -> KvLayerView<'_> {
        self.cache.layer_view(0).unwrap()
    }
}

/// A decode step at position `position` with no prompt protection in play.
pub fn ctx(budget: usize, position: usize) -> KvStepContext {
    KvStepContext {
        phase: KvPhase::Decode,
        position: position as u64,
        prompt_len: 0,
        budget,
        seed: 0,
    }
}

/// A policy's scores brought to the host, for tests that compare them with a reference.
pub trait HostScores {
    fn host_scores(
        &self,
        layer: &KvLayerView<'_>,
        side: &KvSideInfo<'_>,
        ctx: &KvStepContext,
    ) -> Vec<Vec<f32>>;
}

impl<P: KvEvictionPolicy + ?Sized> HostScores for P {
    fn host_scores(
        &self,
        layer: &KvLayerView<'_>,
        side: &KvSideInfo<'_>,
        ctx: &KvStepContext,
    ) -> Vec<Vec<f32>> {
        let scores = self.score(layer, side, ctx).unwrap().unwrap();
        scores_to_host(&scores).unwrap()
    }
}
