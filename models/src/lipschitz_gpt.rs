//! The Lipschitz transformer (docs/lipschitz.md §6.2): no layer norm, no QK norm, no logit soft
//! cap; residuals `(1 − a)·x + a·f(x)` with `a = 1/(2L)`; attention logits scaled by
//! `softmax_scale/d_head`; attention output divided by 3; GELU (tanh form) divided by 1.1289; RoPE.
//!
//! Weights are `(fan_out, fan_in)` and act as `y = x Wᵀ`; the embedding is `(d_model, vocab)`, one
//! column per token. Blocks are numbered in the order they run (`blocks.0` first); the paper's code
//! numbers them the other way round (docs/lipschitz.md §9.1).

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use spectra_core::rope::{RopePairing, RopeScaling, RopeSpec};
use spectra_core::{Error, Param, ParamRole, Result, SpectraRng};

use crate::certificate::{self, Certificate};
use crate::init;
use crate::mass::Module;
use crate::Model;
use spectra_kernels::causal_attention::{causal_rope_attention, AttentionDims};
use spectra_kernels::linear::linear;
use spectra_kernels::mlp::mlp;
use spectra_kernels::residual::residual;
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

    /// The modular-mass tree (docs/lipschitz.md §3.2, §6.4): embedding and head mass 1 each, the
    /// blocks `blocks_mass` in all; the final scale is a bond of that sensitivity after the head,
    /// so every target norm is divided by it.
    pub fn mass_tree(&self) -> Module {
        let a = self.residual_weight();
        let atom = |name: String| Module::Atom(name);
        let mut blocks = Vec::new();
        for b in 0..self.blocks {
            let p = |s: &str| format!("blocks.{b}.{s}");
            // Scores depend on q and k (sensitivity 2·scale together), values on v (1).
            let qkv = Module::Parallel {
                children: vec![atom(p("attn.q")), atom(p("attn.k")), atom(p("attn.v"))],
                sensitivity: 1.0 + 2.0 * self.softmax_scale,
            };
            let attention = Module::Sequence(vec![qkv, Module::Bond(1.0 / 3.0), atom(p("attn.o"))]);
            let mlp = Module::Sequence(vec![
                atom(p("mlp.in")),
                Module::Bond(1.0),
                atom(p("mlp.out")),
            ]);
            blocks.push(Module::residual(a, attention));
            blocks.push(Module::residual(a, mlp));
        }
        Module::Sequence(vec![
            Module::Tare(1.0, Box::new(atom("embed".into()))),
            Module::Tare(self.blocks_mass, Box::new(Module::Sequence(blocks))),
            Module::Tare(1.0, Box::new(atom("head".into()))),
            Module::Bond(self.final_scale),
        ])
    }
}

/// Parameter indices of one block.
#[derive(Clone, Debug)]
struct Block {
    q: usize,
    k: usize,
    v: usize,
    o: usize,
    mlp_in: usize,
    mlp_out: usize,
}

pub struct LipschitzGpt {
    shape: GptShape,
    params: Vec<Param>,
    blocks: Vec<Block>,
    rope: Rope,
}

const EMBED: usize = 0;

impl LipschitzGpt {
    /// Orthogonal q, k, v and MLP-in; zero attention output, MLP-out and head; unit-RMS embedding columns.
    pub fn new(shape: GptShape, device: &Device, rng: &mut SpectraRng) -> Result<Self> {
        shape.validate()?;
        let (d, hidden) = (shape.d_model, shape.d_model * shape.mlp_ratio);
        let targets = shape.mass_tree().target_norms(1.0);
        let target = |name: &str| {
            targets
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| *t)
                .unwrap_or(1.0)
        };
        let mut params = Vec::new();
        let mut push = |name: String, w: Tensor, role: ParamRole| -> Result<usize> {
            let t = target(&name);
            params.push(Param::new(name, Var::from_tensor(&w)?, role).with_target_norm(t));
            Ok(params.len() - 1)
        };
        let zeros = |r: usize, c: usize| Tensor::zeros((r, c), DType::F32, device);
        push(
            "embed".into(),
            init::unit_rms_columns(d, shape.vocab, rng, device)?,
            ParamRole::Embedding,
        )?;
        let mut blocks = Vec::new();
        for b in 0..shape.blocks {
            let name = |s: &str| format!("blocks.{b}.{s}");
            blocks.push(Block {
                q: push(
                    name("attn.q"),
                    init::orthogonal(d, d, rng, device)?,
                    ParamRole::Hidden,
                )?,
                k: push(
                    name("attn.k"),
                    init::orthogonal(d, d, rng, device)?,
                    ParamRole::Hidden,
                )?,
                v: push(
                    name("attn.v"),
                    init::orthogonal(d, d, rng, device)?,
                    ParamRole::Hidden,
                )?,
                o: push(name("attn.o"), zeros(d, d)?, ParamRole::Hidden)?,
                mlp_in: push(
                    name("mlp.in"),
                    init::orthogonal(hidden, d, rng, device)?,
                    ParamRole::Hidden,
                )?,
                mlp_out: push(name("mlp.out"), zeros(d, hidden)?, ParamRole::Hidden)?,
            });
        }
        push("head".into(), zeros(shape.vocab, d)?, ParamRole::Head)?;
        let frequencies = RopeSpec::new(
            shape.head_dim(),
            10000.0,
            RopePairing::Half,
            RopeScaling::None,
        )
        .inv_freq;
        let rope = Rope::new(&frequencies, shape.seq_len, device)?;
        Ok(LipschitzGpt {
            shape,
            params,
            blocks,
            rope,
        })
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
        let (b, t, d) = h.dims3()?;
        if t > self.shape.seq_len {
            return Err(Error::invalid(
                "inputs",
                format!(
                    "windows of {t} tokens are longer than the model's seq_len {}",
                    self.shape.seq_len
                ),
            ));
        }
        let a = self.shape.residual_weight();
        let mut h = h.reshape((b * t, d))?;
        for blk in &self.blocks {
            let att = self.attention(&h, blk, b, t)?;
            h = residual(&h, &att, a)?;
            let mlp = mlp(&h, self.w(blk.mlp_in), self.w(blk.mlp_out))?;
            h = residual(&h, &mlp, a)?;
        }
        let head = self.params.len() - 1;
        let logits = (linear(&h, self.w(head))? * self.shape.final_scale)?;
        Ok(logits.reshape((b, t, self.shape.vocab))?)
    }

    fn attention(&self, h: &Tensor, blk: &Block, b: usize, t: usize) -> Result<Tensor> {
        let dims = AttentionDims {
            batch: b,
            seq: t,
            heads: self.shape.heads,
            score_scale: self.shape.softmax_scale / self.shape.head_dim() as f64,
            output_scale: 1.0 / 3.0,
        };
        // One product for the three projections: one pass over the stream and one gradient node.
        let qkv = Tensor::cat(&[self.w(blk.q), self.w(blk.k), self.w(blk.v)], 0)?;
        let mixed = causal_rope_attention(&linear(h, &qkv)?, &self.rope, dims)?;
        Ok(linear(&mixed, self.w(blk.o))?)
    }
}

impl Model for LipschitzGpt {
    fn params(&self) -> &[Param] {
        &self.params
    }

    fn logits(&self, inputs: &Tensor) -> Result<Tensor> {
        let logits = self.body(&self.embed(inputs)?)?;
        Ok(logits.reshape(((), self.shape.vocab))?)
    }

    fn certificate(&self) -> Result<Certificate> {
        let norm = |i: usize| -> Result<(String, f64)> {
            Ok((
                self.params[i].name.clone(),
                certificate::rms_to_rms_norm(self.w(i))?,
            ))
        };
        let heads = self.shape.heads;
        let mut blocks = Vec::new();
        for blk in &self.blocks {
            blocks.push(certificate::GptBlockNorms {
                q: norm(blk.q)?,
                k: norm(blk.k)?,
                v: norm(blk.v)?,
                o: norm(blk.o)?,
                mlp_in: norm(blk.mlp_in)?,
                mlp_out: norm(blk.mlp_out)?,
                k_heads: certificate::head_spectral_norms(self.w(blk.k), heads)?,
                v_heads: certificate::head_spectral_norms(self.w(blk.v), heads)?,
            });
        }
        let embed = (
            "embed".to_string(),
            certificate::max_column_rms(self.w(EMBED))?,
        );
        Ok(certificate::GptNorms {
            embed,
            blocks,
            head: norm(self.params.len() - 1)?,
            residual_weight: self.shape.residual_weight(),
            heads,
            softmax_scale: self.shape.softmax_scale,
            final_scale: self.shape.final_scale,
        }
        .certificate())
    }
}
