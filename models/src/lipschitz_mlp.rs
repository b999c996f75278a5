//! The paper's ReLU MLP (docs/lipschitz.md §6.1): `layers` bias-free linear layers, ReLU between
//! them, the input layer zero-initialised and the others orthogonal. Its Lipschitz bound (RMS norm
//! in and out) is the product of the layers' RMS→RMS norms, since ReLU is 1-Lipschitz.

use candle_core::{DType, Device, Tensor, Var};
use spectra_core::{Error, Param, ParamRole, Result, SpectraRng};

use crate::attack::{self, AttackEffort, LowerBounds};
use crate::certificate::{self, Certificate};
use crate::init;
use crate::mass::MassTree;
use crate::Model;
use spectra_kernels::activations::relu_half_at_zero;

pub struct LipschitzMlp {
    params: Vec<Param>,
}

impl LipschitzMlp {
    /// Parameters `layers.0` (input, Hidden, zeros) … `layers.{n−1}` (output, Head).
    pub fn new(
        inputs: usize,
        hidden: usize,
        classes: usize,
        layers: usize,
        device: &Device,
        rng: &mut SpectraRng,
    ) -> Result<Self> {
        if layers < 2 {
            return Err(Error::invalid(
                "model.layers",
                format!("LipschitzMlp needs layers ≥ 2 (input and output), got {layers}"),
            ));
        }
        if hidden == 0 {
            return Err(Error::invalid(
                "model.hidden",
                "hidden is 0; it must be ≥ 1",
            ));
        }
        if inputs == 0 || classes == 0 {
            return Err(Error::invalid(
                "data",
                format!("the images give {inputs} pixels and {classes} classes; both must be ≥ 1"),
            ));
        }
        let mut params = Vec::with_capacity(layers);
        for i in 0..layers {
            let fan_in = if i == 0 { inputs } else { hidden };
            let (fan_out, role) = if i + 1 == layers {
                (classes, ParamRole::Head)
            } else {
                (hidden, ParamRole::Hidden)
            };
            let w = if i == 0 {
                Tensor::zeros((fan_out, fan_in), DType::F32, device)?
            } else {
                init::orthogonal(fan_out, fan_in, rng, device)?
            };
            params.push(Param::new(
                format!("layers.{i}"),
                Var::from_tensor(&w)?,
                role,
            ));
        }
        mass_tree(layers).assign_target_norms(&mut params)?;
        Ok(LipschitzMlp { params })
    }
}

/// The layers (parameters 0, 1, …) in a chain with 1-Lipschitz ReLUs between them.
fn mass_tree(layers: usize) -> MassTree {
    let mut chain = Vec::new();
    for i in 0..layers {
        if i > 0 {
            chain.push(MassTree::Bond(1.0));
        }
        chain.push(MassTree::Atom(i));
    }
    MassTree::Sequence(chain)
}

impl Model for LipschitzMlp {
    fn params(&self) -> &[Param] {
        &self.params
    }

    fn logits(&self, inputs: &Tensor) -> Result<Tensor> {
        let mut x = inputs.clone();
        for (i, p) in self.params.iter().enumerate() {
            if i > 0 {
                x = relu_half_at_zero(&x)?;
            }
            x = x.matmul(&p.var.as_tensor().t()?)?;
        }
        Ok(x)
    }

    fn certificate_at(&self, radii: &[f64]) -> Result<Certificate> {
        let norms = self
            .params
            .iter()
            .map(|p| {
                Ok((
                    p.name.clone(),
                    certificate::rms_to_rms_norm(p.var.as_tensor())?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(certificate::chain(norms, radii))
    }

    /// Images (sequences of one position) within RMS 3 of the origin: the bound holds everywhere,
    /// and the ReLUs' kinks are met at every scale.
    fn lower_bounds(
        &self,
        _certificate: &Certificate,
        effort: &AttackEffort,
        rng: &mut SpectraRng,
    ) -> Result<LowerBounds> {
        let first = self.params[0].var.as_tensor();
        let f = |x: &Tensor| -> Result<Tensor> {
            let (b, t, d) = x.dims3()?;
            Ok(self.logits(&x.reshape((b * t, d))?)?.reshape((b, t, ()))?)
        };
        let dims = (4 * effort.batch, 1, first.dim(1)?);
        let body = attack::body_lower_bound(&f, dims, 1, 3.0, effort, rng, first.device())?;
        Ok(LowerBounds { body, inputs: None })
    }
}
