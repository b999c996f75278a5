//! One block of the Lipschitz GPT, described once: its six weight matrices, its forward pass
//! (`x ← (1 − a)·x + a·attention(x)`, then the same around the MLP), its place in the mass
//! bookkeeping and the norms its factor of the certificate is built from. Everything refers to the
//! weights by their index in the model's parameter list; only `new` names them.

use candle_core::{DType, Device, Tensor, Var};
use spectra_core::{Param, ParamRole, Result, SpectraRng};
use spectra_kernels::causal_attention::{
    causal_probabilities, causal_rope_attention, mix_heads, rotated_heads, AttentionDims,
};
use spectra_kernels::linear::linear;
use spectra_kernels::mlp::mlp;
use spectra_kernels::residual::residual;

use super::{GptShape, LipschitzGpt};
use crate::certificate::{self, GptBlockNorms, StreamSizes};
use crate::init;
use crate::mass::MassTree;

/// The attention output is divided by 3 (docs/lipschitz.md §6.2).
const ATTENTION_OUTPUT_SCALE: f64 = 1.0 / 3.0;

/// `(batch, seq)`: how many windows of how many tokens a stream holds.
type Windows = (usize, usize);

/// Parameter indices of one block.
#[derive(Clone, Debug)]
pub(super) struct Block {
    q: usize,
    k: usize,
    v: usize,
    o: usize,
    mlp_in: usize,
    mlp_out: usize,
}

impl Block {
    /// Appends block `index`'s weights to `params` (`blocks.{index}.attn.q`, …): orthogonal q, k, v
    /// and MLP input, zero attention output and MLP output.
    pub(super) fn new(
        index: usize,
        shape: &GptShape,
        params: &mut Vec<Param>,
        rng: &mut SpectraRng,
        device: &Device,
    ) -> Result<Block> {
        let (d, hidden) = (shape.d_model, shape.d_model * shape.mlp_ratio);
        let mut push = |name: &str, w: Tensor| -> Result<usize> {
            let name = format!("blocks.{index}.{name}");
            params.push(Param::new(name, Var::from_tensor(&w)?, ParamRole::Hidden));
            Ok(params.len() - 1)
        };
        let zeros = |r: usize, c: usize| Tensor::zeros((r, c), DType::F32, device);
        Ok(Block {
            q: push("attn.q", init::orthogonal(d, d, rng, device)?)?,
            k: push("attn.k", init::orthogonal(d, d, rng, device)?)?,
            v: push("attn.v", init::orthogonal(d, d, rng, device)?)?,
            o: push("attn.o", zeros(d, d)?)?,
            mlp_in: push("mlp.in", init::orthogonal(hidden, d, rng, device)?)?,
            mlp_out: push("mlp.out", zeros(d, hidden)?)?,
        })
    }

    /// The stream `h: [batch·seq, d_model]` after the block of `gpt`, for `batch` windows of `seq`
    /// tokens.
    pub(super) fn forward(
        &self,
        h: &Tensor,
        gpt: &LipschitzGpt,
        windows: Windows,
    ) -> Result<Tensor> {
        let dims = attention_dims(&gpt.shape, windows);
        let qkv = self.projections(h, &gpt.params)?;
        self.after_attention(h, &causal_rope_attention(&qkv, &gpt.rope, dims)?, gpt)
    }

    /// [`forward`](Self::forward) by candle's attention chain, and per window what the per-input
    /// certificate measures of the stream entering the block: its RMS, and the heads' queries, keys,
    /// values and attention weights, taken from the same pass.
    pub(super) fn forward_measured(
        &self,
        h: &Tensor,
        gpt: &LipschitzGpt,
        windows: Windows,
    ) -> Result<(Tensor, Vec<StreamSizes>)> {
        let dims = attention_dims(&gpt.shape, windows);
        let [q, k, v] = rotated_heads(&self.projections(h, &gpt.params)?, &gpt.rope, dims)?;
        let weights = causal_probabilities(&q, &k, dims.score_scale)?;
        let stream = h.reshape((windows.0, windows.1, gpt.shape.d_model))?;
        let sizes = StreamSizes::measure(&stream, [&q, &k, &v], &weights)?;
        let next = self.after_attention(h, &mix_heads(&weights, &v, dims)?, gpt)?;
        Ok((next, sizes))
    }

    /// The rest of the block once attention has mixed the values: the output projection and its
    /// residual, then the MLP's.
    fn after_attention(&self, h: &Tensor, mixed: &Tensor, gpt: &LipschitzGpt) -> Result<Tensor> {
        let w = |i: usize| gpt.params[i].var.as_tensor();
        let a = gpt.shape.residual_weight();
        let h = residual(h, &linear(mixed, w(self.o))?, a)?;
        let mlp = mlp(&h, w(self.mlp_in), w(self.mlp_out))?;
        Ok(residual(&h, &mlp, a)?)
    }

    /// `[q | k | v]: [batch·seq, 3·d_model]` of the stream `h`: one product for the three
    /// projections, one pass over the stream and one gradient node.
    fn projections(&self, h: &Tensor, params: &[Param]) -> Result<Tensor> {
        let w = |i: usize| params[i].var.as_tensor();
        let qkv = Tensor::cat(&[w(self.q), w(self.k), w(self.v)], 0)?;
        Ok(linear(h, &qkv)?)
    }

    /// The block's two residual sub-blocks in the mass bookkeeping: attention's scores depend on q
    /// and k (sensitivity 2·softmax_scale together) and its values on v (1); the GELU between the
    /// MLP's matrices is a bond of sensitivity 1.
    pub(super) fn mass(&self, shape: &GptShape) -> [MassTree; 2] {
        let a = shape.residual_weight();
        let qkv = MassTree::Parallel {
            children: vec![
                MassTree::Atom(self.q),
                MassTree::Atom(self.k),
                MassTree::Atom(self.v),
            ],
            sensitivity: 1.0 + 2.0 * shape.softmax_scale,
        };
        let attention = MassTree::Sequence(vec![
            qkv,
            MassTree::Bond(ATTENTION_OUTPUT_SCALE),
            MassTree::Atom(self.o),
        ]);
        let mlp = MassTree::Sequence(vec![
            MassTree::Atom(self.mlp_in),
            MassTree::Bond(1.0),
            MassTree::Atom(self.mlp_out),
        ]);
        [MassTree::residual(a, attention), MassTree::residual(a, mlp)]
    }

    /// The norms of the block's factor of the certificate (exact, from SVDs).
    pub(super) fn norms(&self, params: &[Param], heads: usize) -> Result<GptBlockNorms> {
        let w = |i: usize| params[i].var.as_tensor();
        let norm = |i: usize| -> Result<(String, f64)> {
            Ok((params[i].name.clone(), certificate::rms_to_rms_norm(w(i))?))
        };
        Ok(GptBlockNorms {
            q: norm(self.q)?,
            k: norm(self.k)?,
            v: norm(self.v)?,
            o: norm(self.o)?,
            mlp_in: norm(self.mlp_in)?,
            mlp_out: norm(self.mlp_out)?,
            q_heads: certificate::head_spectral_norms(w(self.q), heads)?,
            k_heads: certificate::head_spectral_norms(w(self.k), heads)?,
            v_heads: certificate::head_spectral_norms(w(self.v), heads)?,
        })
    }
}

fn attention_dims(shape: &GptShape, (batch, seq): Windows) -> AttentionDims {
    AttentionDims {
        batch,
        seq,
        heads: shape.heads,
        score_scale: shape.softmax_scale / shape.head_dim() as f64,
        output_scale: ATTENTION_OUTPUT_SCALE,
    }
}
