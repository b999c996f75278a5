//! Calibration statistics of pre-RoPE queries, per (layer, query head, frequency band): the complex
//! mean `q̄_f = E[q_f]` and the mean modulus `m_f = E[|q_f|]` (docs/kv-policies.md §4.2, §4.8).
//! TriAttention scores keys with them. They are measured once per model (`spectra calibrate`) and
//! stored as safetensors with the RoPE description in the metadata, so that stats of another model
//! are refused.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;
use safetensors::{Dtype, SafeTensors};

use spectra_core::rope::{RopePairing, RopeScaling, RopeSpec};
use spectra_core::{Error, Result};

/// The `format` metadata value of a stats file.
pub const QUERY_STATS_FORMAT: &str = "spectra-query-band-stats-v1";

const TENSOR_NAMES: [&str; 3] = ["q_mean_re", "q_mean_im", "q_abs_mean"];

/// What the statistics describe: the model's attention geometry and RoPE.
#[derive(Clone, Debug, PartialEq)]
pub struct QueryStatsMeta {
    pub num_layers: usize,
    pub num_query_heads: usize,
    pub head_dim: usize,
    pub pairing: RopePairing,
    pub base: f64,
    pub scaling: RopeScaling,
}

impl QueryStatsMeta {
    /// The description of `rope`'s model with the given layer and query-head counts.
    pub fn for_rope(rope: &RopeSpec, num_layers: usize, num_query_heads: usize) -> Self {
        QueryStatsMeta {
            num_layers,
            num_query_heads,
            head_dim: rope.head_dim,
            pairing: rope.pairing,
            base: rope.base,
            scaling: rope.scaling.clone(),
        }
    }

    pub fn bands(&self) -> usize {
        self.head_dim / 2
    }

    fn entries(&self) -> usize {
        self.num_layers * self.num_query_heads * self.bands()
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.num_layers == 0
            || self.num_query_heads == 0
            || self.head_dim < 2
            || !self.head_dim.is_multiple_of(2)
        {
            return Err(format!(
                "{} layers, {} query heads, head_dim {}: need at least one layer and head and an even head_dim",
                self.num_layers, self.num_query_heads, self.head_dim
            ));
        }
        if !(self.base.is_finite() && self.base > 1.0) {
            return Err(format!(
                "RoPE base {} must be a finite number above 1",
                self.base
            ));
        }
        Ok(())
    }
}

/// One (layer, query head)'s statistics, one entry per band.
#[derive(Clone, Copy, Debug)]
pub struct HeadBandStats<'a> {
    pub mean_re: &'a [f32],
    pub mean_im: &'a [f32],
    pub abs_mean: &'a [f32],
}

/// Per (layer, query head, band): `Re q̄`, `Im q̄` and `m`, stored layer-major then head then band.
#[derive(Clone, Debug, PartialEq)]
pub struct QueryBandStats {
    meta: QueryStatsMeta,
    mean_re: Vec<f32>,
    mean_im: Vec<f32>,
    abs_mean: Vec<f32>,
}

impl QueryBandStats {
    /// Statistics of random centres, for scoring tests and benchmarks without a calibrated model:
    /// each coordinate of q̄ uniform in [-1, 1), and m_f = |q̄_f| + a uniform draw from [0, spread)
    /// (a negative spread gives m_f < |q̄_f|, which [`new`](Self::new) refuses).
    pub fn random(meta: QueryStatsMeta, spread: f32, rng: &mut impl rand::Rng) -> Result<Self> {
        let n = meta.num_layers * meta.num_query_heads * meta.head_dim / 2;
        let re: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let im: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let abs = re
            .iter()
            .zip(&im)
            .map(|(a, b)| a.hypot(*b) + rng.random::<f32>() * spread)
            .collect();
        Self::new(meta, re, im, abs)
    }

    /// Checks that the numbers can be statistics of the described shape: right lengths, finite, and
    /// `|q̄_f| ≤ m_f` (the modulus of a mean never exceeds the mean modulus).
    pub fn new(
        meta: QueryStatsMeta,
        mean_re: Vec<f32>,
        mean_im: Vec<f32>,
        abs_mean: Vec<f32>,
    ) -> Result<Self> {
        Self::checked(meta, mean_re, mean_im, abs_mean)
            .map_err(|m| Error::invalid("query stats", m))
    }

    fn checked(
        meta: QueryStatsMeta,
        mean_re: Vec<f32>,
        mean_im: Vec<f32>,
        abs_mean: Vec<f32>,
    ) -> std::result::Result<Self, String> {
        meta.validate()?;
        let want = meta.entries();
        for (name, v) in TENSOR_NAMES.iter().zip([&mean_re, &mean_im, &abs_mean]) {
            if v.len() != want {
                return Err(format!(
                    "{name} has {} values, expected layers × query heads × bands = {} × {} × {} = {want}",
                    v.len(),
                    meta.num_layers,
                    meta.num_query_heads,
                    meta.bands()
                ));
            }
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(format!("{name}[{i}] = {} is not finite", v[i]));
            }
        }
        for i in 0..want {
            let modulus = mean_re[i].hypot(mean_im[i]);
            // f32 storage and summation order allow |q̄| to exceed m by a few ulps when R ≈ 1.
            if modulus > abs_mean[i] * (1.0 + 1e-4) + 1e-6 {
                return Err(format!(
                    "entry {i}: |mean| = {modulus} exceeds the mean modulus {}; the file is not query statistics",
                    abs_mean[i]
                ));
            }
        }
        Ok(QueryBandStats {
            meta,
            mean_re,
            mean_im,
            abs_mean,
        })
    }

    pub fn meta(&self) -> &QueryStatsMeta {
        &self.meta
    }

    /// The statistics of one (layer, query head).
    pub fn head(&self, layer: usize, query_head: usize) -> Result<HeadBandStats<'_>> {
        if layer >= self.meta.num_layers || query_head >= self.meta.num_query_heads {
            return Err(Error::invalid(
                "query stats",
                format!(
                    "asked for layer {layer}, query head {query_head}, but the stats cover {} layers × {} query \
                     heads; they were calibrated on another model",
                    self.meta.num_layers, self.meta.num_query_heads
                ),
            ));
        }
        let bands = self.meta.bands();
        let at = (layer * self.meta.num_query_heads + query_head) * bands;
        Ok(HeadBandStats {
            mean_re: &self.mean_re[at..at + bands],
            mean_im: &self.mean_im[at..at + bands],
            abs_mean: &self.abs_mean[at..at + bands],
        })
    }

    /// Fails unless the stats were measured with `rope`'s pairing, head size and base.
    pub fn check_rope(&self, rope: &RopeSpec) -> Result<()> {
        let m = &self.meta;
        let mismatch = if m.pairing != rope.pairing {
            Some(format!(
                "RoPE pairing {:?}, the model uses {:?}",
                m.pairing, rope.pairing
            ))
        } else if m.head_dim != rope.head_dim {
            Some(format!(
                "head_dim {}, the model has {}",
                m.head_dim, rope.head_dim
            ))
        } else if m.base != rope.base {
            Some(format!(
                "RoPE base {}, the model uses {}",
                m.base, rope.base
            ))
        } else {
            None
        };
        match mismatch {
            Some(what) => Err(Error::invalid(
                "query stats",
                format!(
                    "the stats were calibrated with {what}; run `spectra calibrate` on this model"
                ),
            )),
            None => Ok(()),
        }
    }

    /// The safetensors encoding: three f32 tensors `[layers, query heads, bands]` and the metadata.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let m = &self.meta;
        let shape = vec![m.num_layers, m.num_query_heads, m.bands()];
        let bytes: Vec<Vec<u8>> = [&self.mean_re, &self.mean_im, &self.abs_mean]
            .iter()
            .map(|v| v.iter().flat_map(|x| x.to_le_bytes()).collect())
            .collect();
        let views = TENSOR_NAMES
            .iter()
            .zip(&bytes)
            .map(|(name, b)| {
                Ok((
                    *name,
                    safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), b)?,
                ))
            })
            .collect::<std::result::Result<Vec<_>, safetensors::SafeTensorError>>()
            .map_err(|e| Error::invalid("query stats", e.to_string()))?;
        let metadata: HashMap<String, String> = [
            ("format", QUERY_STATS_FORMAT.to_string()),
            ("num_layers", m.num_layers.to_string()),
            ("num_query_heads", m.num_query_heads.to_string()),
            ("head_dim", m.head_dim.to_string()),
            ("rope_pairing", spectra_core::registry::to_ron(&m.pairing)),
            ("rope_base", m.base.to_string()),
            ("rope_scaling", spectra_core::registry::to_ron(&m.scaling)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        safetensors::serialize(views, Some(metadata))
            .map_err(|e| Error::invalid("query stats", e.to_string()))
    }

    /// Reads stats written by [`to_bytes`](Self::to_bytes); a damaged or foreign buffer is an error
    /// saying what is wrong.
    pub fn from_bytes(bytes: &[u8]) -> std::result::Result<Self, String> {
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| format!("not a safetensors file: {e}"))?;
        let meta = header
            .metadata()
            .as_ref()
            .ok_or("no metadata; not a spectra query-stats file")?;
        let field = |k: &str| {
            meta.get(k)
                .ok_or_else(|| format!("metadata field `{k}` is missing"))
        };
        if field("format")? != QUERY_STATS_FORMAT {
            return Err(format!(
                "format `{}` is not `{QUERY_STATS_FORMAT}`",
                field("format")?
            ));
        }
        let number = |k: &str| -> std::result::Result<usize, String> {
            field(k)?
                .parse()
                .map_err(|e| format!("metadata `{k}`: {e}"))
        };
        let parsed = QueryStatsMeta {
            num_layers: number("num_layers")?,
            num_query_heads: number("num_query_heads")?,
            head_dim: number("head_dim")?,
            pairing: ron::from_str(field("rope_pairing")?)
                .map_err(|e| format!("metadata `rope_pairing`: {e}"))?,
            base: field("rope_base")?
                .parse()
                .map_err(|e| format!("metadata `rope_base`: {e}"))?,
            scaling: ron::from_str(field("rope_scaling")?)
                .map_err(|e| format!("metadata `rope_scaling`: {e}"))?,
        };
        parsed.validate()?;
        let tensors = SafeTensors::deserialize(bytes)
            .map_err(|e| format!("damaged safetensors data: {e}"))?;
        let want = [parsed.num_layers, parsed.num_query_heads, parsed.bands()];
        let read = |name: &str| -> std::result::Result<Vec<f32>, String> {
            let (shape, data) = crate::loaded::f32_tensor(&tensors, name)?;
            if shape != want {
                return Err(format!(
                    "tensor `{name}` has shape {shape:?}, expected {want:?} (from the metadata)"
                ));
            }
            Ok(data)
        };
        Self::checked(
            parsed,
            read(TENSOR_NAMES[0])?,
            read(TENSOR_NAMES[1])?,
            read(TENSOR_NAMES[2])?,
        )
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_bytes()?)
            .map_err(|e| Error::file(path, format!("cannot write query stats: {e}")))
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| {
            let fix = if e.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "; make them with `spectra calibrate --text <plain text> --out {}` (the model's \
                     own query statistics; keep the text apart from evaluation text)",
                    path.display()
                )
            } else {
                String::new()
            };
            Error::file(path, format!("cannot read query stats: {e}{fix}"))
        })?;
        Self::from_bytes(&bytes)
            .map_err(|m| Error::file(path, format!("{m}; recreate it with `spectra calibrate`")))
    }
}

/// Sums pre-RoPE query bands as a model runs over calibration text; `finish` turns them into stats.
#[derive(Clone, Debug)]
pub struct QueryStatsAccumulator {
    meta: QueryStatsMeta,
    sum_re: Vec<f64>,
    sum_im: Vec<f64>,
    sum_abs: Vec<f64>,
    /// Queries seen per (layer, query head).
    counts: Vec<u64>,
}

impl QueryStatsAccumulator {
    pub fn new(meta: QueryStatsMeta) -> Result<Self> {
        meta.validate()
            .map_err(|m| Error::invalid("query stats", m))?;
        let entries = meta.entries();
        let heads = meta.num_layers * meta.num_query_heads;
        Ok(QueryStatsAccumulator {
            meta,
            sum_re: vec![0.0; entries],
            sum_im: vec![0.0; entries],
            sum_abs: vec![0.0; entries],
            counts: vec![0; heads],
        })
    }

    /// Adds one pre-RoPE query vector (`head_dim` long, exactly what the model feeds to RoPE) of
    /// (`layer`, `query_head`).
    pub fn add(&mut self, layer: usize, query_head: usize, query: &[f32]) -> Result<()> {
        let m = &self.meta;
        if layer >= m.num_layers || query_head >= m.num_query_heads || query.len() != m.head_dim {
            return Err(Error::invalid(
                "QueryStatsAccumulator::add",
                format!(
                    "layer {layer}, head {query_head}, vector of {} for stats of {} layers × {} heads × head_dim {}",
                    query.len(),
                    m.num_layers,
                    m.num_query_heads,
                    m.head_dim
                ),
            ));
        }
        if query.iter().any(|x| !x.is_finite()) {
            return Err(Error::NonFinite {
                name: format!("query of layer {layer} head {query_head}"),
                what: "calibration query".into(),
            });
        }
        let bands = m.bands();
        let head = layer * m.num_query_heads + query_head;
        for f in 0..bands {
            let (re, im) = m.pairing.coordinates(m.head_dim, f);
            let (re, im) = (query[re] as f64, query[im] as f64);
            let at = head * bands + f;
            self.sum_re[at] += re;
            self.sum_im[at] += im;
            self.sum_abs[at] += re.hypot(im);
        }
        self.counts[head] += 1;
        Ok(())
    }

    /// Adds every row of `queries` (`[n, head_dim]`, pre-RoPE) of (`layer`, `query_head`).
    pub fn add_queries(&mut self, layer: usize, query_head: usize, queries: &Tensor) -> Result<()> {
        let rows = queries
            .to_dtype(candle_core::DType::F32)?
            .to_vec2::<f32>()?;
        rows.iter().try_for_each(|q| self.add(layer, query_head, q))
    }

    /// The means. Fails if some (layer, head) saw no query.
    pub fn finish(self) -> Result<QueryBandStats> {
        let heads = self.meta.num_query_heads;
        if let Some(i) = self.counts.iter().position(|&c| c == 0) {
            return Err(Error::invalid(
                "QueryStatsAccumulator::finish",
                format!(
                    "layer {} query head {} received no queries; run more text through the model",
                    i / heads,
                    i % heads
                ),
            ));
        }
        let bands = self.meta.bands();
        let mean = |sums: &[f64]| -> Vec<f32> {
            sums.iter()
                .enumerate()
                .map(|(i, s)| (s / self.counts[i / bands] as f64) as f32)
                .collect()
        };
        let (re, im, abs) = (mean(&self.sum_re), mean(&self.sum_im), mean(&self.sum_abs));
        QueryBandStats::new(self.meta, re, im, abs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(pairing: RopePairing) -> QueryStatsMeta {
        QueryStatsMeta {
            num_layers: 2,
            num_query_heads: 3,
            head_dim: 4,
            pairing,
            base: 10000.0,
            scaling: RopeScaling::Yarn {
                factor: 4.0,
                original_max_position: 4096.0,
                beta_fast: 32.0,
                beta_slow: 1.0,
            },
        }
    }

    fn accumulated(pairing: RopePairing) -> QueryBandStats {
        let mut acc = QueryStatsAccumulator::new(meta(pairing)).unwrap();
        for layer in 0..2 {
            for head in 0..3 {
                acc.add(layer, head, &[1.0, 2.0, 3.0, 4.0]).unwrap();
                acc.add(layer, head, &[-1.0, 0.0, 3.0, 0.0]).unwrap();
            }
        }
        acc.finish().unwrap()
    }

    #[test]
    fn accumulator_means_match_hand_computation() {
        let half = accumulated(RopePairing::Half);
        let h = half.head(1, 2).unwrap();
        // Half pairing: band 0 = (x0, x2): (1, 3) and (-1, 3); band 1 = (x1, x3): (2, 4) and (0, 0).
        assert_eq!(h.mean_re, &[0.0, 1.0]);
        assert_eq!(h.mean_im, &[3.0, 2.0]);
        let m0 = (10f32.sqrt() + 10f32.sqrt()) / 2.0;
        let m1 = 20f32.sqrt() / 2.0;
        // f64 sums rounded once to f32.
        assert!((h.abs_mean[0] - m0).abs() < 1e-6 && (h.abs_mean[1] - m1).abs() < 1e-6);
        let inter = accumulated(RopePairing::Interleaved);
        let h = inter.head(0, 0).unwrap();
        // Interleaved: band 0 = (x0, x1): (1, 2), (-1, 0); band 1 = (x2, x3): (3, 4), (3, 0).
        assert_eq!(h.mean_re, &[0.0, 3.0]);
        assert_eq!(h.mean_im, &[1.0, 2.0]);
        assert!(half
            .head(2, 0)
            .unwrap_err()
            .to_string()
            .contains("another model"));
    }

    #[test]
    fn safetensors_round_trip_keeps_everything() {
        let stats = accumulated(RopePairing::Interleaved);
        let dir = std::env::temp_dir().join(format!("spectra-stats-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("stats.safetensors");
        stats.save(&path).unwrap();
        assert_eq!(QueryBandStats::load(&path).unwrap(), stats);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn damaged_or_foreign_files_are_refused() {
        let bytes = accumulated(RopePairing::Half).to_bytes().unwrap();
        assert!(QueryBandStats::from_bytes(&bytes[..bytes.len() - 4]).is_err());
        assert!(QueryBandStats::from_bytes(b"garbage")
            .unwrap_err()
            .contains("not a safetensors"));
        let foreign = safetensors::serialize(
            [(
                "x",
                safetensors::tensor::TensorView::new(Dtype::F32, vec![1], &[0, 0, 0, 0]).unwrap(),
            )],
            None,
        )
        .unwrap();
        assert!(QueryBandStats::from_bytes(&foreign)
            .unwrap_err()
            .contains("no metadata"));
        let missing = QueryBandStats::load(Path::new("/nonexistent/stats.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("cannot read"), "{missing}");
    }

    #[test]
    fn impossible_statistics_are_refused() {
        let m = meta(RopePairing::Half);
        let n = 2 * 3 * 2;
        // |q̄| = 5 > m = 1 cannot come from any data.
        let err =
            QueryBandStats::new(m.clone(), vec![3.0; n], vec![4.0; n], vec![1.0; n]).unwrap_err();
        assert!(
            err.to_string().contains("exceeds the mean modulus"),
            "{err}"
        );
        assert!(
            QueryBandStats::new(m.clone(), vec![0.0; n - 1], vec![0.0; n], vec![1.0; n]).is_err()
        );
        assert!(QueryBandStats::new(m, vec![f32::NAN; n], vec![0.0; n], vec![1.0; n]).is_err());
    }

    #[test]
    fn rope_mismatch_is_a_clear_error() {
        let stats = accumulated(RopePairing::Half);
        let ok = RopeSpec::new(4, 10000.0, RopePairing::Half, RopeScaling::None);
        assert!(stats.check_rope(&ok).is_ok());
        let other = RopeSpec::new(4, 10000.0, RopePairing::Interleaved, RopeScaling::None);
        assert!(stats
            .check_rope(&other)
            .unwrap_err()
            .to_string()
            .contains("pairing"));
        let wide = RopeSpec::new(8, 10000.0, RopePairing::Half, RopeScaling::None);
        assert!(stats
            .check_rope(&wide)
            .unwrap_err()
            .to_string()
            .contains("head_dim"));
    }
}
