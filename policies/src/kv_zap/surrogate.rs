//! KVzap's surrogate: per layer, a linear map from the layer's normalized input row to one predicted
//! score per KV head (the log of the entry's KVzip score), stored as safetensors.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::loaded::f32_tensor;
use spectra_core::{Error, Result};

/// The `format` metadata of a surrogate file.
const FORMAT: &str = "spectra-kvzap-linear-1";

/// `[layers][kv_heads × d_model]` weights and `[layers][kv_heads]` biases.
#[derive(Clone, Debug)]
pub struct Surrogate {
    pub layers: usize,
    pub kv_heads: usize,
    pub d_model: usize,
    weights: Vec<Vec<f32>>,
    biases: Vec<Vec<f32>>,
    /// Per layer, the map as it is applied on the CPU: `Wᵀ` `[d_model, kv_heads]` and `b`, built
    /// once rather than at every forward pass.
    applied: Vec<(Tensor, Tensor)>,
}

impl PartialEq for Surrogate {
    fn eq(&self, other: &Self) -> bool {
        (self.kv_heads, self.d_model, &self.weights, &self.biases)
            == (other.kv_heads, other.d_model, &other.weights, &other.biases)
    }
}

impl Surrogate {
    /// A surrogate from per-layer `weights` (`kv_heads × d_model`, row-major) and `biases`; every
    /// number must be finite.
    pub fn new(
        kv_heads: usize,
        d_model: usize,
        weights: Vec<Vec<f32>>,
        biases: Vec<Vec<f32>>,
    ) -> std::result::Result<Self, String> {
        if weights.is_empty() || weights.len() != biases.len() {
            return Err(format!(
                "{} weight matrices and {} bias vectors; give one of each per layer",
                weights.len(),
                biases.len()
            ));
        }
        for (l, (w, b)) in weights.iter().zip(&biases).enumerate() {
            if w.len() != kv_heads * d_model || b.len() != kv_heads {
                return Err(format!(
                    "layer {l}: {} weights and {} biases, expected {kv_heads} × {d_model} and \
                     {kv_heads}",
                    w.len(),
                    b.len()
                ));
            }
            if !w.iter().chain(b).all(|x| x.is_finite()) {
                return Err(format!("layer {l} holds a number that is not finite"));
            }
        }
        let applied = weights
            .iter()
            .zip(&biases)
            .map(|(w, b)| {
                let w = Tensor::from_slice(w, (kv_heads, d_model), &Device::Cpu)?;
                Ok((
                    w.t()?.contiguous()?,
                    Tensor::from_slice(b, kv_heads, &Device::Cpu)?,
                ))
            })
            .collect::<candle_core::Result<Vec<_>>>()
            .map_err(|e| e.to_string())?;
        Ok(Surrogate {
            layers: weights.len(),
            kv_heads,
            d_model,
            weights,
            biases,
            applied,
        })
    }

    /// `[t, kv_heads]` f32: the predicted scores of the entries written from `inputs` `[t, d_model]`
    /// at `layer`, on the inputs' device.
    pub fn predict(&self, layer: usize, inputs: &Tensor) -> Result<Tensor> {
        let (_, d) = inputs.dims2()?;
        if layer >= self.layers || d != self.d_model {
            return Err(Error::invalid(
                "KvZap",
                format!(
                    "the surrogate was fitted for {} layers of width {}, and was asked for layer \
                     {layer} of width {d}; fit one for this model with `spectra fit-kvzap`",
                    self.layers, self.d_model
                ),
            ));
        }
        let (weight, bias) = &self.applied[layer];
        let device = inputs.device();
        let (weight, bias) = (weight.to_device(device)?, bias.to_device(device)?);
        Ok(inputs
            .to_dtype(DType::F32)?
            .matmul(&weight)?
            .broadcast_add(&bias)?)
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let weights: Vec<u8> = self
            .weights
            .iter()
            .flatten()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let biases: Vec<u8> = self
            .biases
            .iter()
            .flatten()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        fn view(data: &[u8], shape: Vec<usize>) -> Result<TensorView<'_>> {
            TensorView::new(Dtype::F32, shape, data)
                .map_err(|e| Error::invalid("KVzap surrogate", e.to_string()))
        }
        let views = vec![
            (
                "weight",
                view(&weights, vec![self.layers, self.kv_heads, self.d_model])?,
            ),
            ("bias", view(&biases, vec![self.layers, self.kv_heads])?),
        ];
        let metadata: HashMap<String, String> = [("format", FORMAT.to_string())]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        safetensors::serialize(views, Some(metadata))
            .map_err(|e| Error::invalid("KVzap surrogate", e.to_string()))
    }

    /// Reads a surrogate written by [`to_bytes`](Self::to_bytes); a damaged or foreign buffer is an
    /// error saying what is wrong.
    pub fn from_bytes(bytes: &[u8]) -> std::result::Result<Self, String> {
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| format!("not a safetensors file: {e}"))?;
        let format = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get("format"))
            .ok_or("no `format` metadata; not a KVzap surrogate file")?;
        if format != FORMAT {
            return Err(format!("format `{format}` is not `{FORMAT}`"));
        }
        let tensors = SafeTensors::deserialize(bytes)
            .map_err(|e| format!("damaged safetensors data: {e}"))?;
        let read = |name: &str, rank: usize| {
            let (shape, data) = f32_tensor(&tensors, name)?;
            if shape.len() != rank {
                return Err(format!(
                    "tensor `{name}` has shape {shape:?}, expected rank {rank}"
                ));
            }
            Ok((shape, data))
        };
        let (shape, weights) = read("weight", 3)?;
        let (bias_shape, biases) = read("bias", 2)?;
        let (layers, kv_heads, d_model) = (shape[0], shape[1], shape[2]);
        if bias_shape != [layers, kv_heads] || layers == 0 || kv_heads == 0 || d_model == 0 {
            return Err(format!(
                "tensor shapes {shape:?} and {bias_shape:?} do not describe one surrogate"
            ));
        }
        Surrogate::new(
            kv_heads,
            d_model,
            weights
                .chunks(kv_heads * d_model)
                .map(<[f32]>::to_vec)
                .collect(),
            biases.chunks(kv_heads).map(<[f32]>::to_vec).collect(),
        )
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_bytes()?)
            .map_err(|e| Error::file(path, format!("cannot write the KVzap surrogate: {e}")))
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| {
            let fix = if e.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "; fit it with `spectra fit-kvzap --model <model> --text <plain text> --out {}`",
                    path.display()
                )
            } else {
                String::new()
            };
            Error::file(path, format!("cannot read the KVzap surrogate: {e}{fix}"))
        })?;
        Self::from_bytes(&bytes)
            .map_err(|m| Error::file(path, format!("{m}; fit it again with `spectra fit-kvzap`")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Surrogate {
        Surrogate::new(
            2,
            3,
            vec![vec![1.0, 0.0, -1.0, 0.5, 0.5, 0.5]],
            vec![vec![0.25, -2.0]],
        )
        .unwrap()
    }

    #[test]
    fn predicts_the_affine_map_by_hand() {
        let inputs = Tensor::new(&[[1f32, 2.0, 3.0], [0.0, -1.0, 4.0]], &Device::Cpu).unwrap();
        let got = small()
            .predict(0, &inputs)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        // Row 1: 1 − 3 + 0.25 and 0.5·6 − 2; row 2: −4 + 0.25 and 0.5·3 − 2.
        assert_eq!(got, vec![vec![-1.75, 1.0], vec![-3.75, -0.5]]);
    }

    #[test]
    fn survives_the_round_trip_and_refuses_damage() {
        let s = small();
        let bytes = s.to_bytes().unwrap();
        assert_eq!(Surrogate::from_bytes(&bytes).unwrap(), s);
        let err = Surrogate::from_bytes(&bytes[..bytes.len() - 4]).unwrap_err();
        assert!(err.contains("safetensors"), "{err}");
        assert!(Surrogate::from_bytes(b"not a file").is_err());
    }

    #[test]
    fn a_model_of_another_width_is_refused() {
        let inputs = Tensor::zeros((1, 4), DType::F32, &Device::Cpu).unwrap();
        let err = small().predict(0, &inputs).unwrap_err().to_string();
        assert!(err.contains("fit-kvzap"), "{err}");
        assert!(small()
            .predict(1, &inputs.narrow(1, 0, 3).unwrap())
            .is_err());
    }

    #[test]
    fn numbers_that_are_not_finite_are_refused() {
        let err = Surrogate::new(1, 1, vec![vec![f32::NAN]], vec![vec![0.0]]).unwrap_err();
        assert!(err.contains("not finite"), "{err}");
    }
}
