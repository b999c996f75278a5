//! Exact singular values and decompositions through faer, in f64 on the CPU: the reference the fast
//! iterations are tested and certified against, and the engine of the `SvdClip` constraint.

use candle_core::{DType, Device, Tensor};
use faer::{Mat, MatRef};
use rand_distr::{Distribution, StandardNormal};

use super::checks::matrix_dims;
use crate::rng::SpectraRng;
use crate::{Error, Result};

/// A thin SVD `A = U·diag(s)·Vᵀ`: U is m×k, V is n×k, s descending, k = min(m, n).
#[derive(Clone, Debug)]
pub struct Svd {
    pub u: Mat<f64>,
    pub s: Vec<f64>,
    pub v: Mat<f64>,
}

/// Copies a 2-D tensor (any float dtype, any device) into an f64 faer matrix on the CPU.
pub fn to_faer(t: &Tensor) -> Result<Mat<f64>> {
    let (rows, cols) = matrix_dims(t, "matrix")?;
    let data = t
        .to_dtype(DType::F64)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    Ok(Mat::from_fn(rows, cols, |i, j| data[i * cols + j]))
}

/// Copies a faer matrix into a tensor of the given dtype on the given device.
pub fn from_faer(m: MatRef<'_, f64>, dtype: DType, device: &Device) -> Result<Tensor> {
    let (rows, cols) = (m.nrows(), m.ncols());
    let data: Vec<f64> = (0..rows)
        .flat_map(|i| (0..cols).map(move |j| m[(i, j)]))
        .collect();
    Ok(Tensor::from_vec(data, (rows, cols), &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(device)?)
}

fn no_convergence(e: faer::linalg::svd::SvdError) -> Error {
    Error::invalid(
        "svd",
        format!("the SVD did not converge ({e:?}); the matrix may hold extreme values"),
    )
}

/// All singular values, descending.
pub fn singular_values(t: &Tensor) -> Result<Vec<f64>> {
    to_faer(t)?.singular_values().map_err(no_convergence)
}

/// The exact spectral norm σ_max.
pub fn sigma_max(t: &Tensor) -> Result<f64> {
    Ok(singular_values(t)?.first().copied().unwrap_or(0.0))
}

/// The thin SVD of a 2-D tensor.
pub fn thin_svd(t: &Tensor) -> Result<Svd> {
    let svd = to_faer(t)?.thin_svd().map_err(no_convergence)?;
    let s = svd.S().column_vector().iter().copied().collect();
    Ok(Svd {
        u: svd.U().to_owned(),
        s,
        v: svd.V().to_owned(),
    })
}

/// `U·diag(s)·Vᵀ` from the factors of a thin SVD with the singular values replaced by `s`.
pub fn compose(u: MatRef<'_, f64>, s: &[f64], v: MatRef<'_, f64>) -> Mat<f64> {
    let scaled = Mat::from_fn(u.nrows(), s.len(), |i, j| u[(i, j)] * s[j]);
    scaled * v.transpose()
}

/// A Haar-random n×n orthogonal matrix: the Q of a Gaussian matrix's QR, with the signs of R's
/// diagonal folded in (without that correction Q is not uniformly distributed).
pub fn random_orthogonal(n: usize, rng: &mut SpectraRng) -> Mat<f64> {
    let g: Mat<f64> = Mat::from_fn(n, n, |_, _| StandardNormal.sample(rng));
    let qr = g.qr();
    let q = qr.compute_Q();
    let r = qr.R();
    Mat::from_fn(n, n, |i, j| {
        if r[(j, j)] < 0.0 {
            -q[(i, j)]
        } else {
            q[(i, j)]
        }
    })
}

/// A rows×cols matrix `U·diag(sigmas)·Vᵀ` with Haar-random orthogonal U and V, so its singular values
/// are exactly `sigmas` (padded with zeros up to min(rows, cols)) up to the dtype's rounding.
pub fn with_singular_values(
    rows: usize,
    cols: usize,
    sigmas: &[f64],
    rng: &mut SpectraRng,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let k = rows.min(cols);
    if sigmas.len() > k {
        return Err(Error::invalid(
            "with_singular_values",
            format!(
                "{} singular values do not fit a {rows}×{cols} matrix (at most {k})",
                sigmas.len()
            ),
        ));
    }
    let u = random_orthogonal(rows, rng);
    let v = random_orthogonal(cols, rng);
    let mut s = sigmas.to_vec();
    s.resize(k, 0.0);
    let m = compose(u.as_ref().subcols(0, k), &s, v.as_ref().subcols(0, k));
    from_faer(m.as_ref(), dtype, device)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn singular_values_of_a_hand_example() {
        // [[3, 0], [4, 5]]: AᵀA = [[25, 20], [20, 25]], eigenvalues 45 and 5.
        let t = Tensor::new(&[[3.0f32, 0.0], [4.0, 5.0]], &Device::Cpu).unwrap();
        let s = singular_values(&t).unwrap();
        assert!(
            (s[0] - 45f64.sqrt()).abs() < 1e-12 && (s[1] - 5f64.sqrt()).abs() < 1e-12,
            "{s:?}"
        );
    }

    #[test]
    fn built_matrices_have_the_requested_spectrum_and_round_trip() {
        let mut rng = SpectraRng::seed_from_u64(7);
        for (rows, cols) in [(5, 5), (7, 3), (3, 7)] {
            let want = [2.5, 1.0, 0.25];
            let t = with_singular_values(rows, cols, &want, &mut rng, DType::F64, &Device::Cpu)
                .unwrap();
            let got = singular_values(&t).unwrap();
            for (i, g) in got.iter().enumerate() {
                let w = want.get(i).copied().unwrap_or(0.0);
                // f64 orthogonal factors: exact up to a few ulps of the largest value.
                assert!(
                    (g - w).abs() < 1e-12,
                    "{rows}×{cols}: σ_{i} = {g}, want {w}"
                );
            }
            let svd = thin_svd(&t).unwrap();
            let back = from_faer(
                compose(svd.u.as_ref(), &svd.s, svd.v.as_ref()).as_ref(),
                DType::F64,
                &Device::Cpu,
            )
            .unwrap();
            let err = (back - &t)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            assert!(err < 1e-12, "U·S·Vᵀ reconstructs the matrix: {err}");
        }
    }

    #[test]
    fn random_orthogonal_is_orthogonal() {
        let q = random_orthogonal(6, &mut SpectraRng::seed_from_u64(1));
        let qtq = q.transpose() * &q;
        for i in 0..6 {
            for j in 0..6 {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((qtq[(i, j)] - want).abs() < 1e-12);
            }
        }
    }
}
