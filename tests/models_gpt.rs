//! The Lipschitz GPT: target norms from the modular-mass table (docs/lipschitz.md §3.2, §6.4),
//! parameter count and init (docs/lipschitz.md §6.2, §6.3), and causality. Its certificate is
//! attacked in `certificate_attack.rs`.

mod lipschitz_support;

use candle_core::{Device, Tensor};
use lipschitz_support::randomize;
use spectra::models::{GptShape, LipschitzGpt, Model};
use spectra_core::rng::derived_rng;

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
    // docs/lipschitz.md §3.2, §6.4: blocks_mass 16 → embed = out = 1/18, q/k/v = 16/18,
    // w/mlp_in/mlp_out = 16/54; blocks_mass 32 → 1/34, 32/34, 32/102 (the table's 0.941176,
    // 0.313725, 0.029412).
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
    assert_eq!(
        count, 2_392_576,
        "the paper's model (docs/lipschitz.md §6.2): 3·(4·256² + 2·256·1024) + 2·65·256"
    );
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
