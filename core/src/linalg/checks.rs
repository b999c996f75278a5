//! Input checks and scalar reductions shared by every matrix routine and plugin.

use candle_core::{DType, Tensor};

use crate::{Error, Result};

/// The `(rows, cols)` of a matrix; anything but a 2-D floating-point tensor with at least one entry is
/// an error naming `name`.
pub fn matrix_dims(t: &Tensor, name: &str) -> Result<(usize, usize)> {
    if t.rank() != 2 {
        return Err(Error::invalid(
            name,
            format!(
                "expected a 2-D weight matrix (fan_out, fan_in), got shape {:?}; matrix constraints and \
                 optimizers do not apply to 1-D gains or stacked tensors",
                t.dims()
            ),
        ));
    }
    if !t.dtype().is_float() {
        return Err(Error::invalid(
            name,
            format!("expected a floating-point matrix, got {:?}", t.dtype()),
        ));
    }
    let (rows, cols) = t.dims2()?;
    if rows == 0 || cols == 0 {
        return Err(Error::invalid(
            name,
            format!("the matrix is empty ({rows}×{cols})"),
        ));
    }
    Ok((rows, cols))
}

/// A 0-d or one-element tensor as `f64`, whatever its float dtype.
pub fn scalar_f64(t: &Tensor) -> Result<f64> {
    Ok(t.flatten_all()?
        .to_dtype(DType::F64)?
        .get(0)?
        .to_scalar::<f64>()?)
}

/// Whether every entry is finite. One pass in the common case: a finite sum proves every entry finite
/// (any NaN or Inf makes the sum non-finite); only an overflowing sum of finite entries needs the exact
/// second check `Σ 0·x = 0` (0·x is NaN exactly for x = ±Inf or NaN).
pub fn all_finite(t: &Tensor) -> Result<bool> {
    if t.elem_count() == 0 {
        return Ok(true);
    }
    if scalar_f64(&t.sum_all()?)?.is_finite() {
        return Ok(true);
    }
    Ok(scalar_f64(&t.affine(0.0, 0.0)?.sum_all()?)? == 0.0)
}

/// An error naming `name` and `what` ("weights", "gradient", ...) unless every entry is finite.
pub fn ensure_finite(t: &Tensor, name: &str, what: &str) -> Result<()> {
    if all_finite(t)? {
        Ok(())
    } else {
        Err(Error::NonFinite {
            name: name.to_string(),
            what: what.to_string(),
        })
    }
}

/// ‖t‖_F. One pass in the tensor's dtype; when the sum of squares over- or underflows (entries beyond
/// ~1e19 or below ~1e-15 in f32), a second pass rescales by the largest magnitude first.
pub fn frobenius_norm(t: &Tensor) -> Result<f64> {
    let sum_sq = scalar_f64(&t.sqr()?.sum_all()?)?;
    if sum_sq.is_finite() && sum_sq > 1e-30 {
        return Ok(sum_sq.sqrt());
    }
    let largest = scalar_f64(&t.abs()?.max_all()?)?;
    if largest == 0.0 {
        return Ok(0.0);
    }
    if !largest.is_finite() {
        return Ok(sum_sq);
    }
    Ok(largest * scalar_f64(&t.affine(1.0 / largest, 0.0)?.sqr()?.sum_all()?)?.sqrt())
}

/// The RMS of every column of a 2-D tensor, as a 1×cols row. Computed as 1ᵀ·(X∘X)/rows, a vector–matrix
/// product, which candle runs several times faster than a reduction over the first dimension.
pub fn column_rms(t: &Tensor) -> Result<Tensor> {
    let (rows, _) = t.dims2()?;
    let ones = Tensor::ones((1, rows), t.dtype(), t.device())?;
    Ok(ones
        .matmul(&t.sqr()?)?
        .affine(1.0 / rows as f64, 0.0)?
        .sqrt()?)
}

/// `sqrt(fan_out/fan_in)` for a weight of shape `(fan_out, fan_in)`: the factor between the spectral
/// norm and the RMS→RMS operator norm, `‖W‖_RMS→RMS = σ_max(W)/scale` (docs/lipschitz.md §1).
pub fn rms_scale(rows: usize, cols: usize) -> f64 {
    (rows as f64 / cols as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn finiteness_is_exact_even_when_the_sum_overflows() {
        let dev = Device::Cpu;
        let big = Tensor::new(&[3.0e38f32, 3.0e38, -1.0], &dev).unwrap();
        assert!(
            all_finite(&big).unwrap(),
            "a sum overflowing to Inf must not be mistaken for an Inf entry"
        );
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let t = Tensor::new(&[1.0f32, bad, 2.0], &dev).unwrap();
            assert!(!all_finite(&t).unwrap(), "{bad} not detected");
        }
        let both = Tensor::new(&[f32::INFINITY, f32::NEG_INFINITY], &dev).unwrap();
        assert!(!all_finite(&both).unwrap());
    }

    #[test]
    fn matrix_dims_rejects_what_is_not_a_matrix() {
        let dev = Device::Cpu;
        let v = Tensor::zeros(4, DType::F32, &dev).unwrap();
        let err = matrix_dims(&v, "gain").unwrap_err().to_string();
        assert!(err.contains("`gain`") && err.contains("2-D"), "{err}");
        let cube = Tensor::zeros((2, 2, 2), DType::F32, &dev).unwrap();
        assert!(matrix_dims(&cube, "w").is_err());
        let ints = Tensor::zeros((2, 2), DType::U32, &dev).unwrap();
        assert!(matrix_dims(&ints, "w").is_err());
        let empty = Tensor::zeros((0, 3), DType::F32, &dev).unwrap();
        assert!(matrix_dims(&empty, "w").is_err());
        assert_eq!(
            matrix_dims(&Tensor::zeros((3, 5), DType::F32, &dev).unwrap(), "w").unwrap(),
            (3, 5)
        );
    }

    #[test]
    fn frobenius_norm_of_a_hand_example() {
        let t = Tensor::new(&[[3.0f32, 0.0], [0.0, 4.0]], &Device::Cpu).unwrap();
        assert_eq!(frobenius_norm(&t).unwrap(), 5.0);
        for scale in [1e-30f32, 1e30] {
            let scaled = t.affine(scale as f64, 0.0).unwrap();
            // f32 rounding of the rescaled entries.
            assert!(
                (frobenius_norm(&scaled).unwrap() / (5.0 * scale as f64) - 1.0).abs() < 1e-6,
                "{scale}"
            );
        }
        assert_eq!(rms_scale(4, 1), 2.0);
        // Columns (3, 0) and (0, 4): RMS 3/√2 and 4/√2.
        let rms = column_rms(&t).unwrap().to_vec2::<f32>().unwrap();
        assert!(
            (rms[0][0] - 3.0 / 2f32.sqrt()).abs() < 1e-6
                && (rms[0][1] - 4.0 / 2f32.sqrt()).abs() < 1e-6
        );
    }
}
