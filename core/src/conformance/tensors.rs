//! What the constraint and optimizer suites share: seeded test tensors, bitwise comparison, and a
//! deterministic proptest runner that panics with the violated property.

use candle_core::{DType, Device, Tensor};
use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

use crate::linalg::all_finite;
use crate::rng::SpectraRng;

/// A Gaussian f32 tensor of the given shape with entries of standard deviation `std`.
pub(crate) fn gaussian(dims: &[usize], std: f64, seed: u64) -> Tensor {
    let mut rng = SpectraRng::seed_from_u64(seed);
    let n: usize = dims.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|_| {
            let z: f64 = StandardNormal.sample(&mut rng);
            (std * z) as f32
        })
        .collect();
    Tensor::from_vec(data, dims, &Device::Cpu).expect("a CPU tensor of matching length")
}

/// The entries' bit patterns (as f64), so that NaN compares equal to itself and -0 differs from 0.
pub(crate) fn bits(t: &Tensor) -> Vec<u64> {
    let v = t
        .flatten_all()
        .and_then(|t| t.to_dtype(DType::F64))
        .and_then(|t| t.to_vec1::<f64>());
    v.expect("a float tensor")
        .into_iter()
        .map(f64::to_bits)
        .collect()
}

/// The same tensor with entry `index` replaced by `value`.
pub(crate) fn with_entry(t: &Tensor, index: usize, value: f32) -> Tensor {
    let mut data = t
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .expect("an f32 tensor");
    let len = data.len();
    data[index % len] = value;
    Tensor::from_vec(data, t.dims(), t.device()).expect("same shape")
}

/// `Ok` when every entry is finite, else a failure naming `what`.
pub(crate) fn check_finite(t: &Tensor, what: &str) -> Result<(), TestCaseError> {
    match all_finite(t) {
        Ok(true) => Ok(()),
        Ok(false) => Err(TestCaseError::fail(format!("{what} contains NaN or Inf"))),
        Err(e) => Err(TestCaseError::fail(format!("{what}: cannot be read: {e}"))),
    }
}

/// Runs `property` on `cases` inputs drawn from `strategy` with a fixed seed (failures reproduce run to
/// run), and panics with `plugin`, the property's message and the smallest failing input.
pub fn run_cases<S: Strategy>(
    plugin: &str,
    cases: u32,
    strategy: S,
    property: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    if let Err(e) = runner.run(&strategy, property) {
        panic!("`{plugin}` violates its contract: {e}");
    }
}
