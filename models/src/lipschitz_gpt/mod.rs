//! The Lipschitz transformer (docs/lipschitz.md §6.2): no layer norm, no QK norm, no logit soft
//! cap; residuals `(1 − a)·x + a·f(x)` with `a = 1/(2L)`; attention logits scaled by
//! `softmax_scale/d_head`; attention output divided by 3; GELU (tanh form) divided by 1.1289; RoPE.
//!
//! Weights are `(fan_out, fan_in)` and act as `y = x Wᵀ`; the embedding is `(d_model, vocab)`, one
//! column per token. Blocks are numbered in the order they run (`blocks.0` first); the paper's code
//! numbers them the other way round (docs/lipschitz.md §9.1).

mod block;

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use spectra_core::rope::{RopePairing, RopeScaling, RopeSpec};
use spectra_core::{Error, Param, ParamRole, Result, SpectraRng};

use crate::attack::{self, AttackEffort, LowerBounds};
use crate::certificate::{self, Certificate, StreamSizes};
use crate::init;
use crate::mass::MassTree;
use crate::Model;
use block::Block;
use spectra_kernels::linear::linear;
use spectra_kernels::rope::Rope;

/// The transformer's sizes; the paper's Shakespeare model is vocab 65, d 256, 3 blocks, 4 heads, 256.
/// A config's `LipschitzGpt(...)` reads the fields but the vocabulary, which the data set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GptShape {
    #[serde(skip)]
    pub vocab: usize,
    #[serde(default = "d256")]
    pub d_model: usize,
    #[serde(default = "three")]
    pub blocks: usize,
    #[serde(default = "four")]
    pub heads: usize,
    #[serde(default = "d256")]
    pub seq_len: usize,
    #[serde(default = "four")]
    pub mlp_ratio: usize,
    /// Modular mass of the blocks relative to embedding and head (mass 1 each).
    #[serde(default = "sixteen")]
    pub blocks_mass: f64,
    #[serde(default = "one")]
    pub softmax_scale: f64,
    /// A constant multiplying the logits (the paper's `final_scale`); the certified bound includes it,
    /// and the optimizer's target norms are divided by it as modular mass prescribes.
    #[serde(default = "one")]
    pub final_scale: f64,
}

pub(crate) fn d256() -> usize {
    256
}
pub(crate) fn three() -> usize {
    3
}
fn four() -> usize {
    4
}
fn sixteen() -> f64 {
    16.0
}
fn one() -> f64 {
    1.0
}

impl GptShape {
    pub fn head_dim(&self) -> usize {
        self.d_model / self.heads
    }

    /// The residual mixing weight `a = 1/(2L)`.
    pub fn residual_weight(&self) -> f64 {
        1.0 / (2.0 * self.blocks as f64)
    }

    /// Errors name the offending field as `model.FIELD`, which the app places at its line.
    fn validate(&self) -> Result<()> {
        let bad = |field: &str, m: String| Err(Error::invalid(format!("model.{field}"), m));
        for (field, size) in [
            ("d_model", self.d_model),
            ("blocks", self.blocks),
            ("heads", self.heads),
            ("seq_len", self.seq_len),
            ("mlp_ratio", self.mlp_ratio),
        ] {
            if size == 0 {
                return bad(field, format!("{field} is 0; it must be ≥ 1"));
            }
        }
        if self.vocab == 0 {
            return Err(Error::invalid(
                "data",
                "the corpus is empty: a vocabulary of 0 tokens",
            ));
        }
        if !self.d_model.is_multiple_of(self.heads) || !self.head_dim().is_multiple_of(2) {
            return bad(
                "heads",
                format!(
                    "d_model {} must split into {} heads of even size (RoPE rotates pairs)",
                    self.d_model, self.heads
                ),
            );
        }
        for (field, value) in [
            ("blocks_mass", self.blocks_mass),
            ("softmax_scale", self.softmax_scale),
            ("final_scale", self.final_scale),
        ] {
            if !(value > 0.0 && value.is_finite()) {
                return bad(field, format!("{field} must be positive, got {value}"));
            }
        }
        Ok(())
    }
}

pub struct LipschitzGpt {
    shape: GptShape,
    params: Vec<Param>,
    blocks: Vec<Block>,
    rope: Rope,
}

const EMBED: usize = 0;

impl LipschitzGpt {
    /// Unit-RMS embedding columns, the blocks (`Block::new`), a zero head; target norms from the
    /// mass tree of the same parts.
    pub fn new(shape: GptShape, device: &Device, rng: &mut SpectraRng) -> Result<Self> {
        shape.validate()?;
        let d = shape.d_model;
        let mut params = vec![Param::new(
            "embed",
            Var::from_tensor(&init::unit_rms_columns(d, shape.vocab, rng, device)?)?,
            ParamRole::Embedding,
        )];
        let blocks = (0..shape.blocks)
            .map(|b| Block::new(b, &shape, &mut params, rng, device))
            .collect::<Result<Vec<_>>>()?;
        let head = Tensor::zeros((shape.vocab, d), DType::F32, device)?;
        params.push(Param::new(
            "head",
            Var::from_tensor(&head)?,
            ParamRole::Head,
        ));
        let frequencies = RopeSpec::new(
            shape.head_dim(),
            10000.0,
            RopePairing::Half,
            RopeScaling::None,
        )
        .inv_freq;
        let rope = Rope::new(&frequencies, shape.seq_len, device)?;
        let mut gpt = LipschitzGpt {
            shape,
            params,
            blocks,
            rope,
        };
        gpt.mass_tree().assign_target_norms(&mut gpt.params)?;
        Ok(gpt)
    }

    /// The modular-mass tree (docs/lipschitz.md §3.2, §6.4): embedding and head mass 1 each, the
    /// blocks `blocks_mass` in all; the final scale is a bond of that sensitivity after the head, so
    /// every target norm is divided by it.
    pub fn mass_tree(&self) -> MassTree {
        let blocks = self
            .blocks
            .iter()
            .flat_map(|b| b.mass(&self.shape))
            .collect();
        MassTree::Sequence(vec![
            MassTree::Tare(1.0, Box::new(MassTree::Atom(EMBED))),
            MassTree::Tare(self.shape.blocks_mass, Box::new(MassTree::Sequence(blocks))),
            MassTree::Tare(1.0, Box::new(MassTree::Atom(self.head()))),
            MassTree::Bond(self.shape.final_scale),
        ])
    }

    fn head(&self) -> usize {
        self.params.len() - 1
    }

    /// The norms the certificate is composed from (exact, from SVDs).
    fn norms(&self) -> Result<certificate::GptNorms> {
        let heads = self.shape.heads;
        let head = self.head();
        Ok(certificate::GptNorms {
            embed: (
                self.params[EMBED].name.clone(),
                certificate::max_column_rms(self.w(EMBED))?,
            ),
            blocks: self
                .blocks
                .iter()
                .map(|b| b.norms(&self.params, heads))
                .collect::<Result<_>>()?,
            head: (
                self.params[head].name.clone(),
                certificate::rms_to_rms_norm(self.w(head))?,
            ),
            residual_weight: self.shape.residual_weight(),
            heads,
            d_model: self.shape.d_model,
            softmax_scale: self.shape.softmax_scale,
            final_scale: self.shape.final_scale,
        })
    }

    /// This model with every weight in f64 (the same values), run by candle's ops: what the per-input
    /// certificates measure the stream and the logits with, so that their rounding is ~1e-16
    /// relative rather than f32's.
    pub fn in_f64(&self) -> Result<LipschitzGpt> {
        let params = self
            .params
            .iter()
            .map(|p| {
                let w = Var::from_tensor(&p.var.as_tensor().to_dtype(DType::F64)?)?;
                Ok(Param::new(p.name.clone(), w, p.role).with_target_norm(p.target_norm))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(LipschitzGpt {
            shape: self.shape.clone(),
            params,
            blocks: self.blocks.clone(),
            rope: self.rope.clone(),
        })
    }

    /// The blocks run on embedding outputs `h: [batch, seq, d_model]`, each by `step(block, stream,
    /// (batch, seq))` on the stream `[batch·seq, d_model]` entering it: the stream entering the head,
    /// `[batch·seq, d_model]`.
    fn run_blocks(
        &self,
        h: &Tensor,
        mut step: impl FnMut(&Block, &Tensor, (usize, usize)) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let (b, t, d) = h.dims3()?;
        let mut x = h.reshape((b * t, d))?;
        for blk in &self.blocks {
            x = step(blk, &x, (b, t))?;
        }
        Ok(x)
    }

    /// The stream entering the head, `[batch, seq, d_model]`, for embedding outputs `h`: what the
    /// blocks' bounds ([`local_block_bounds`](Self::local_block_bounds)) bound.
    pub fn stream(&self, h: &Tensor) -> Result<Tensor> {
        Ok(self
            .run_blocks(h, |blk, x, windows| blk.forward(x, self, windows))?
            .reshape(h.dims3()?)?)
    }

    /// One pass over embedding outputs `h: [batch, seq, d_model]`: per window, what the per-input
    /// certificate measures entering each block (`[batch][blocks]`), and the logits
    /// `[batch·seq, vocab]`.
    fn measure(&self, h: &Tensor) -> Result<(Vec<Vec<StreamSizes>>, Tensor)> {
        let mut windows = vec![Vec::with_capacity(self.blocks.len()); h.dim(0)?];
        let x = self.run_blocks(h, |blk, x, dims| {
            let (next, sizes) = blk.forward_measured(x, self, dims)?;
            for (window, s) in windows.iter_mut().zip(sizes) {
                window.push(s);
            }
            Ok(next)
        })?;
        let logits = (linear(&x, self.w(self.head()))? * self.shape.final_scale)?;
        Ok((windows, logits))
    }

    /// Per window of embedding outputs `h: [batch, seq, d_model]` and per position `t`, the blocks'
    /// Lipschitz constant (embedding output to the stream entering the head) on the ball of `radius`
    /// around the window, for the outputs at positions `≤ t` (`GptNorms::local_block_bounds`), the
    /// stream measured in f64.
    pub fn local_block_bounds(&self, h: &Tensor, radius: f64) -> Result<Vec<Vec<f64>>> {
        let (windows, _) = self.in_f64()?.measure(&h.to_dtype(DType::F64)?)?;
        Ok(window_bounds(&self.norms()?, &windows, radius))
    }

    pub fn shape(&self) -> &GptShape {
        &self.shape
    }

    fn w(&self, i: usize) -> &Tensor {
        self.params[i].var.as_tensor()
    }

    /// The embedding output `[batch, seq, d_model]` for token ids `[batch, seq]`.
    pub fn embed(&self, tokens: &Tensor) -> Result<Tensor> {
        let (b, t) = tokens.dims2()?;
        let table = self.w(EMBED).t()?.contiguous()?;
        let rows = table.index_select(&tokens.flatten_all()?, 0)?;
        Ok(rows.reshape((b, t, self.shape.d_model))?)
    }

    /// Logits `[batch, seq, vocab]` from an embedding output `[batch, seq, d_model]`: the function the
    /// certificate bounds after the embedding.
    pub fn body(&self, h: &Tensor) -> Result<Tensor> {
        let (b, t, _) = h.dims3()?;
        if t > self.shape.seq_len {
            return Err(Error::invalid(
                "inputs",
                format!(
                    "windows of {t} tokens are longer than the model's seq_len {}",
                    self.shape.seq_len
                ),
            ));
        }
        let x = self.run_blocks(h, |blk, x, windows| blk.forward(x, self, windows))?;
        let logits = (linear(&x, self.w(self.head()))? * self.shape.final_scale)?;
        Ok(logits.reshape((b, t, self.shape.vocab))?)
    }
}

/// Per window of `windows` (`[batch][blocks]`) and per position, `norms`' local block bounds.
fn window_bounds(
    norms: &certificate::GptNorms,
    windows: &[Vec<StreamSizes>],
    radius: f64,
) -> Vec<Vec<f64>> {
    windows
        .iter()
        .map(|window| norms.local_block_bounds(norms.embed.1, window, radius))
        .collect()
}

impl Model for LipschitzGpt {
    fn params(&self) -> &[Param] {
        &self.params
    }

    fn logits(&self, inputs: &Tensor) -> Result<Tensor> {
        let logits = self.body(&self.embed(inputs)?)?;
        Ok(logits.reshape(((), self.shape.vocab))?)
    }

    fn certificate_at(&self, radii: &[f64]) -> Result<Certificate> {
        Ok(self.norms()?.certificate(radii))
    }

    /// Each target certified by its own bound: the blocks' Lipschitz constant on the ball of
    /// `radius` around its window's embedding output (from the stream's measured size entering every
    /// block), and for each other class `j` the head's own rows, `|Δ(z_y − z_j)| ≤ final_scale·
    /// ‖w_y − w_j‖₂·√d·‖Δh‖` (`docs/certificate.md`, "Per-input certificates").
    fn certified_targets(
        &self,
        inputs: &Tensor,
        targets: &Tensor,
        radii: &[f64],
    ) -> Result<Option<Vec<Vec<bool>>>> {
        let exact = self.in_f64()?;
        let h = exact.embed(inputs)?;
        let positions = h.dim(1)?;
        let (windows, logits) = exact.measure(&h)?;
        let logits = logits.to_vec2::<f64>()?;
        let targets = targets.to_dtype(DType::U32)?.to_vec1::<u32>()?;
        let norms = self.norms()?;
        let gaps = certificate::row_distances(self.w(self.head()))?;
        let per_radius = radii
            .iter()
            .map(|&radius| {
                let scale = self.shape.final_scale * (self.shape.d_model as f64).sqrt() * radius;
                let mut certified = Vec::with_capacity(targets.len());
                for (window, bounds) in window_bounds(&norms, &windows, radius)
                    .into_iter()
                    .enumerate()
                {
                    for (t, l) in bounds.into_iter().enumerate() {
                        let row = window * positions + t;
                        let (z, y) = (&logits[row], targets[row] as usize);
                        certified.push(
                            z.iter()
                                .enumerate()
                                .all(|(j, &zj)| j == y || z[y] - zj > gaps[y][j] * l * scale),
                        );
                    }
                }
                certified
            })
            .collect();
        Ok(Some(per_radius))
    }

    /// The body on sequences of embedding outputs within the certificate's domain, and the whole
    /// network on token sequences.
    fn lower_bounds(
        &self,
        certificate: &Certificate,
        effort: &AttackEffort,
        rng: &mut SpectraRng,
    ) -> Result<LowerBounds> {
        let s = &self.shape;
        let device = self.w(EMBED).device();
        let body = attack::body_lower_bound(
            &|x| self.body(x),
            (effort.batch, s.seq_len, s.d_model),
            s.heads,
            certificate.input_rms,
            effort,
            rng,
            device,
        )?;
        let tokens = attack::token_lower_bound(self, (s.seq_len, s.vocab), effort, rng, device)?;
        Ok(LowerBounds {
            body,
            inputs: Some(tokens),
        })
    }
}
