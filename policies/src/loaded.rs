//! Data a policy reads from a file once (a calibration, a surrogate) and keeps for its lifetime, or
//! is given in code. Runtime state, so it takes no part in comparing configs.

use std::sync::{Arc, OnceLock};

use safetensors::{Dtype, SafeTensors};

/// The shape and numbers of the f32 tensor `name` of a safetensors file; what is missing or of
/// another type is an error naming the tensor.
pub fn f32_tensor(tensors: &SafeTensors<'_>, name: &str) -> Result<(Vec<usize>, Vec<f32>), String> {
    let t = tensors
        .tensor(name)
        .map_err(|e| format!("tensor `{name}`: {e}"))?;
    if t.dtype() != Dtype::F32 {
        return Err(format!("tensor `{name}` is {:?}, expected F32", t.dtype()));
    }
    let data = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((t.shape().to_vec(), data))
}

pub struct Loaded<T>(OnceLock<Arc<T>>);

impl<T> Loaded<T> {
    /// Already holding `value`.
    pub fn with(value: T) -> Self {
        Loaded(OnceLock::from(Arc::new(value)))
    }

    pub fn get(&self) -> Option<Arc<T>> {
        self.0.get().cloned()
    }

    /// The value, read by `load` the first time.
    pub fn get_or_load<E>(&self, load: impl FnOnce() -> Result<T, E>) -> Result<Arc<T>, E> {
        if let Some(v) = self.0.get() {
            return Ok(v.clone());
        }
        let loaded = Arc::new(load()?);
        Ok(self.0.get_or_init(|| loaded).clone())
    }
}

impl<T> Default for Loaded<T> {
    fn default() -> Self {
        Loaded(OnceLock::new())
    }
}

impl<T> Clone for Loaded<T> {
    fn clone(&self) -> Self {
        Loaded(self.0.clone())
    }
}

impl<T> PartialEq for Loaded<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl<T> std::fmt::Debug for Loaded<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "loaded"
        } else {
            "not loaded"
        })
    }
}
