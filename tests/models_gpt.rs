//! The Lipschitz GPT: target norms from the modular-mass table (§3.2), causality, and the certificate
//! (§5) against measured ratios ‖f(x) − f(y)‖ / ‖x − y‖.
//!
//! The norm of a sequence `[seq, d]` is the largest per-position RMS norm, for the embedding output
//! (the body's input) and the logits alike.

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use spectra::models::{GptShape, LipschitzGpt, Model};
use spectra_core::linalg::svd::with_singular_values;
use spectra_core::rng::derived_rng;
use spectra_core::SpectraRng;

fn shape(blocks_mass: f64) -> GptShape {
    GptShape {
        vocab: 65,
        d_model: 256,
        blocks: 3,
        heads: 4,
        seq_len: 256,
        mlp_ratio: 4,
        blocks_mass,
        softmax_scale: 1.0,
        final_scale: 1.0,
    }
}

fn target(gpt: &LipschitzGpt, name: &str) -> f64 {
    gpt.params()
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no {name}"))
        .target_norm
}

#[test]
fn target_norms_match_the_papers_table() {
    // §3.2: blocks_mass 16 → embed = out = 1/18, q/k/v = 16/18, w/mlp_in/mlp_out = 16/54;
    // blocks_mass 32 → 1/34, 32/34, 32/102 (the table's 0.941176, 0.313725, 0.029412).
    for (mass, embed, qkv, other) in [
        (16.0, 1.0 / 18.0, 16.0 / 18.0, 16.0 / 54.0),
        (32.0, 1.0 / 34.0, 32.0 / 34.0, 32.0 / 102.0),
    ] {
        let s = GptShape {
            d_model: 16,
            heads: 2,
            seq_len: 8,
            ..shape(mass)
        };
        let gpt = LipschitzGpt::new(s, &Device::Cpu, &mut derived_rng(0, 1)).unwrap();
        // The bookkeeping is a few divisions in f64.
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(target(&gpt, "embed"), embed));
        assert!(close(target(&gpt, "head"), embed));
        for b in 0..3 {
            for m in ["attn.q", "attn.k", "attn.v"] {
                assert!(close(target(&gpt, &format!("blocks.{b}.{m}")), qkv), "{m}");
            }
            for m in ["attn.o", "mlp.in", "mlp.out"] {
                assert!(
                    close(target(&gpt, &format!("blocks.{b}.{m}")), other),
                    "{m}"
                );
            }
        }
        assert_eq!(gpt.params().len(), 20);
        // A final scale is a bond after the head: every target is divided by it.
        let scaled = LipschitzGpt::new(
            GptShape {
                final_scale: 4.0,
                ..gpt.shape().clone()
            },
            &Device::Cpu,
            &mut derived_rng(0, 1),
        )
        .unwrap();
        for (p, q) in gpt.params().iter().zip(scaled.params()) {
            assert!(close(q.target_norm, p.target_norm / 4.0), "{}", p.name);
        }
    }
}

#[test]
fn the_papers_model_has_its_parameter_count_and_init() {
    let gpt = LipschitzGpt::new(shape(16.0), &Device::Cpu, &mut derived_rng(0, 1)).unwrap();
    let count: usize = gpt.params().iter().map(|p| p.var.elem_count()).sum();
    assert_eq!(count, 2_392_576, "§4.2: 3·(4·256² + 2·256·1024) + 2·65·256");
    let cert = gpt.certificate().unwrap();
    for (name, norm) in &cert.norms {
        let zero_init = name.ends_with("attn.o") || name.ends_with("mlp.out") || name == "head";
        let want = if zero_init { 0.0 } else { 1.0 };
        // Exact SVD of an f32 orthogonal matrix; embedding columns normalised in f32.
        assert!((norm - want).abs() < 1e-5, "{name}: {norm}");
    }
}

#[test]
fn a_future_token_does_not_change_earlier_logits() {
    let s = GptShape {
        vocab: 7,
        d_model: 16,
        blocks: 2,
        heads: 2,
        seq_len: 6,
        ..shape(16.0)
    };
    let mut rng = derived_rng(3, 0);
    let gpt = LipschitzGpt::new(s, &Device::Cpu, &mut rng).unwrap();
    randomize(&gpt, 1.5, &mut rng);
    let a = Tensor::new(&[[1u32, 2, 3, 4, 5, 6]], &Device::Cpu).unwrap();
    let b = Tensor::new(&[[1u32, 2, 3, 4, 0, 6]], &Device::Cpu).unwrap();
    let la = gpt.logits(&a).unwrap().to_vec2::<f32>().unwrap();
    let lb = gpt.logits(&b).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(
        la[..4],
        lb[..4],
        "positions before the change see the same prefix"
    );
    assert_ne!(la[4], lb[4]);
}

/// Every matrix gets singular values spread up to `top` (RMS→RMS norm `top`), embedding columns unit RMS.
fn randomize(gpt: &LipschitzGpt, top: f64, rng: &mut SpectraRng) {
    for p in gpt.params() {
        let (rows, cols) = p.var.dims2().unwrap();
        if p.name == "embed" {
            continue;
        }
        let k = rows.min(cols);
        let scale = (rows as f64 / cols as f64).sqrt();
        let sigmas: Vec<f64> = (0..k)
            .map(|i| top * scale * (1.0 - 0.5 * i as f64 / k as f64))
            .collect();
        let w = with_singular_values(rows, cols, &sigmas, rng, DType::F32, &Device::Cpu).unwrap();
        p.var.set(&w).unwrap();
    }
}

/// The largest per-position RMS of `[batch, seq, d]`, per batch element.
fn seq_norms(x: &Tensor) -> Vec<f64> {
    let rms = x
        .to_dtype(DType::F64)
        .unwrap()
        .sqr()
        .unwrap()
        .mean(2)
        .unwrap()
        .sqrt()
        .unwrap()
        .max(1)
        .unwrap();
    rms.to_vec1::<f64>().unwrap()
}

/// Random sequences with each position's RMS drawn uniformly in (0, r].
fn random_inputs(b: usize, t: usize, d: usize, r: f64, rng: &mut SpectraRng) -> Tensor {
    let g = spectra::models::init::gaussian(b * t, d, rng, &Device::Cpu).unwrap();
    let rms = g.sqr().unwrap().mean_keepdim(1).unwrap().sqrt().unwrap();
    let radii: Vec<f32> = (0..b * t)
        .map(|_| (r * rng.random_range(0.05..1.0)) as f32)
        .collect();
    let radii = Tensor::from_vec(radii, (b * t, 1), &Device::Cpu).unwrap();
    g.broadcast_div(&rms)
        .unwrap()
        .broadcast_mul(&radii)
        .unwrap()
        .reshape((b, t, d))
        .unwrap()
}

fn ratios(gpt: &LipschitzGpt, x: &Tensor, y: &Tensor) -> Vec<f64> {
    let fx = gpt.body(x).unwrap();
    let fy = gpt.body(y).unwrap();
    let num = seq_norms(&(fx - fy).unwrap());
    let den = seq_norms(&(x - y).unwrap());
    num.iter().zip(den).map(|(n, d)| n / d).collect()
}

#[test]
fn certificate_bounds_measured_ratios_on_random_and_adversarial_pairs() {
    let s = GptShape {
        vocab: 11,
        d_model: 16,
        blocks: 2,
        heads: 2,
        seq_len: 8,
        ..shape(16.0)
    };
    let mut rng = SpectraRng::seed_from_u64(11);
    // (largest σ, softmax scale, final scale): the paper's scales, then sharper attention and a
    // scaled (up or down) output.
    for (top, softmax_scale, final_scale) in [
        (0.5, 1.0, 1.0),
        (1.0, 1.0, 1.0),
        (2.0, 1.0, 1.0),
        (3.0, 1.0, 1.0),
        (1.0, 8.0, 3.0),
        (2.0, 4.0, 0.5),
    ] {
        let s = GptShape {
            softmax_scale,
            final_scale,
            ..s.clone()
        };
        let gpt = LipschitzGpt::new(s, &Device::Cpu, &mut rng).unwrap();
        randomize(&gpt, top, &mut rng);
        let cert = gpt.certificate().unwrap();
        // Unit embedding columns: inputs may have any per-position RMS up to 1.
        assert!((cert.input_rms - 1.0).abs() < 1e-5);
        assert!((cert.bound - cert.body_bound * cert.input_rms).abs() < 1e-12 * cert.bound);
        let (b, t, d) = (64, 8, 16);
        let mut worst = 0f64;
        // Independent pairs, and nearby pairs (a local slope).
        for eps in [None, Some(1e-2)] {
            let x = random_inputs(b, t, d, 1.0, &mut rng);
            let y = match eps {
                None => random_inputs(b, t, d, 1.0, &mut rng),
                Some(e) => (&x * (1.0 - e)).unwrap(),
            };
            worst = ratios(&gpt, &x, &y).into_iter().fold(worst, f64::max);
        }
        // Adversarial: power iteration on the Jacobian at random points, δ ← Jᵀ J δ through autodiff.
        let x = random_inputs(8, t, d, 0.9, &mut rng);
        let mut delta = random_inputs(8, t, d, 1e-2, &mut rng);
        for _ in 0..12 {
            let v = Var::from_tensor(&delta).unwrap();
            let diff = (gpt.body(&(&x + v.as_tensor()).unwrap()).unwrap()
                - gpt.body(&x).unwrap().detach())
            .unwrap();
            let grads = diff.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            let g = grads.get(&v).unwrap().clone();
            let scale = 1e-2
                / g.sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .sqrt()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    .max(1e-30);
            delta = (g * scale as f64).unwrap();
        }
        let y = (&x + &delta).unwrap();
        worst = ratios(&gpt, &x, &y).into_iter().fold(worst, f64::max);
        assert!(worst > 0.0);
        // f32 forward passes: the measured ratios carry ~1e-4 relative noise at δ ~ 1e-2.
        assert!(
            worst <= cert.body_bound * (1.0 + 1e-3),
            "top {top}, scales {softmax_scale}/{final_scale}: measured {worst} > certified {}",
            cert.body_bound
        );
        eprintln!(
            "top σ {top}: worst measured ratio {worst:.4}, certified {:.4}",
            cert.body_bound
        );
    }
}
