//! A trainable parameter as optimizers and constraints see it.

use candle_core::Var;
use serde::{Deserialize, Serialize};

/// What a parameter is for. Constraints and optimizers treat roles differently: embeddings are
/// column-normalised, not orthogonalised, and a 1-D gain takes no matrix constraint at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ParamRole {
    /// A hidden weight matrix (attention q/k/v/o, MLP in/out, MLP layers).
    Hidden,
    /// An embedding table, one column (or row) per token.
    Embedding,
    /// The output layer producing logits.
    Head,
    /// A 1-D parameter (norm gains, biases).
    Vector,
}

impl std::fmt::Display for ParamRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// A named parameter with its role and its target norm (the "mass" bookkeeping of modular norms:
/// the RMS→RMS norm an optimizer's unit update is scaled to).
#[derive(Clone, Debug)]
pub struct Param {
    pub name: String,
    pub var: Var,
    pub role: ParamRole,
    pub target_norm: f64,
}

impl Param {
    pub fn new(name: impl Into<String>, var: Var, role: ParamRole) -> Self {
        Param {
            name: name.into(),
            var,
            role,
            target_norm: 1.0,
        }
    }

    pub fn with_target_norm(mut self, target_norm: f64) -> Self {
        self.target_norm = target_norm;
        self
    }
}
