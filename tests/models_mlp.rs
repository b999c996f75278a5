//! The Lipschitz MLP: target norms, the zero-initialised input layer's first gradient (ReLU′(0) = ½,
//! docs/lipschitz.md §9.3), and the certificate (product of RMS→RMS norms) against measured ratios
//! in RMS norm.

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use spectra::models::{LipschitzMlp, Model};
use spectra_core::linalg::svd::with_singular_values;
use spectra_core::rng::derived_rng;
use spectra_core::SpectraRng;

#[test]
fn three_layers_share_the_target_equally() {
    let mlp = LipschitzMlp::new(784, 256, 10, 3, &Device::Cpu, &mut derived_rng(0, 1)).unwrap();
    let names: Vec<&str> = mlp.params().iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["layers.0", "layers.1", "layers.2"]);
    for p in mlp.params() {
        assert!((p.target_norm - 1.0 / 3.0).abs() < 1e-15, "{}", p.name);
    }
}

#[test]
fn the_zero_initialised_input_layer_gets_a_gradient_and_descends() {
    let device = Device::Cpu;
    let mlp = LipschitzMlp::new(12, 16, 3, 3, &device, &mut derived_rng(4, 1)).unwrap();
    let mut rng = derived_rng(4, 2);
    let x = spectra::models::init::gaussian(24, 12, &mut rng, &device).unwrap();
    let y = Tensor::from_vec((0..24u32).map(|i| i % 3).collect::<Vec<_>>(), 24, &device).unwrap();
    let loss_of =
        |m: &LipschitzMlp| candle_nn::loss::cross_entropy(&m.logits(&x).unwrap(), &y).unwrap();
    let first = loss_of(&mlp);
    let grads = first.backward().unwrap();
    let w_in = &mlp.params()[0];
    let g = grads
        .get(&w_in.var)
        .expect("the input layer gets a gradient");
    let g_norm = g
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .sqrt()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    // All pre-activations are exactly 0; with ReLU′(0) = 0 this gradient would be exactly 0.
    assert!(g_norm > 1e-3, "input-layer gradient norm {g_norm}");
    // A plain gradient step on every layer lowers the loss (a step of 0.1 is small for this scale).
    for p in mlp.params() {
        let g = grads.get(&p.var).unwrap();
        p.var
            .set(&(p.var.as_tensor() - (g * 0.1).unwrap()).unwrap())
            .unwrap();
    }
    let after = loss_of(&mlp).to_scalar::<f32>().unwrap();
    assert!(after < first.to_scalar::<f32>().unwrap(), "{after}");
}

#[test]
fn certificate_is_the_product_and_bounds_measured_ratios() {
    let device = Device::Cpu;
    let mut rng = SpectraRng::seed_from_u64(9);
    let mlp = LipschitzMlp::new(20, 16, 5, 3, &device, &mut rng).unwrap();
    let tops = [1.7, 0.8, 2.5];
    for (p, top) in mlp.params().iter().zip(tops) {
        let (rows, cols) = p.var.dims2().unwrap();
        let sigma = top * (rows as f64 / cols as f64).sqrt();
        let k = rows.min(cols);
        let sigmas: Vec<f64> = (0..k)
            .map(|i| sigma * (1.0 - 0.3 * i as f64 / k as f64))
            .collect();
        p.var
            .set(&with_singular_values(rows, cols, &sigmas, &mut rng, DType::F32, &device).unwrap())
            .unwrap();
    }
    let cert = mlp.certificate().unwrap();
    let product: f64 = tops.iter().product();
    // Exact SVDs of f32 matrices built with these singular values.
    assert!(
        (cert.bound - product).abs() < 1e-4 * product,
        "{} vs {product}",
        cert.bound
    );
    let x = spectra::models::init::gaussian(256, 20, &mut rng, &device).unwrap();
    let y =
        (&x + spectra::models::init::gaussian(256, 20, &mut rng, &device).unwrap() * 0.05).unwrap();
    let rms = |t: &Tensor| {
        t.to_dtype(DType::F64)
            .unwrap()
            .sqr()
            .unwrap()
            .mean(1)
            .unwrap()
            .sqrt()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()
    };
    let num = rms(&(mlp.logits(&x).unwrap() - mlp.logits(&y).unwrap()).unwrap());
    let den = rms(&(&x - &y).unwrap());
    let worst = num
        .iter()
        .zip(&den)
        .map(|(n, d)| n / d)
        .fold(0f64, f64::max);
    assert!(
        worst > 0.0 && worst <= cert.bound * (1.0 + 1e-4),
        "measured {worst}, certified {}",
        cert.bound
    );
}
