//! Attacks on the Lipschitz certificate (`spectra::models::attack`: projected gradient ascent with
//! restarts on pairs of body inputs, and hill-climbing on pairs of token sequences), for random and
//! trained tiny GPTs and MLPs.
//! No pair may ever exceed the certified bound; each case prints its tightness (best ratio / bound).
//! Two constructed networks exceed the paper code's formula (`reference_bound`): the old certificate
//! fails on both.
//!
//! Norms are the certificate's: a sequence `[seq, d]` is measured by its largest per-position RMS
//! (embedding outputs and logits alike); a token sequence by its largest per-position ℓ1 distance of
//! one-hot vectors (2 wherever two sequences differ); an image by its RMS.

mod lipschitz_support;
mod train_support;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use spectra::models::data::{Dataset, TextCorpus};
use spectra::models::{Certificate, GptShape, LipschitzGpt, LipschitzMlp, Model};
use spectra::train::checkpoint;
use spectra_core::linalg::svd::with_singular_values;
use spectra_core::SpectraRng;

use lipschitz_support::randomize;
use spectra::models::attack::{
    ball_lower_bound, body_lower_bound, normalized, project, ratios, AttackEffort,
};

/// f32 forward passes: a difference of outputs of size ~1e-2 carries ~1e-5 relative rounding, so a
/// measured ratio may exceed an exact bound by that much and no more.
const ROUNDING: f64 = 1e-3;

/// Fails unless `measured` is within the certified bound (up to f32 rounding).
fn within_bound(case: &str, measured: f64, certified: f64) {
    assert!(
        measured <= certified * (1.0 + ROUNDING),
        "{case}: a pair at ratio {measured} exceeds the certified {certified}"
    );
}

fn tiny_shape() -> GptShape {
    GptShape {
        vocab: 11,
        d_model: 16,
        blocks: 2,
        heads: 4,
        seq_len: 6,
        mlp_ratio: 4,
        blocks_mass: 16.0,
        softmax_scale: 1.0,
        final_scale: 1.0,
    }
}

/// Attacks the body and the token inputs of `gpt`; asserts the bounds hold and returns the body's
/// tightness.
fn attack_gpt(case: &str, gpt: &LipschitzGpt, rng: &mut SpectraRng) -> f64 {
    let cert = gpt.certificate().unwrap();
    let found = gpt
        .lower_bounds(&cert, &AttackEffort::default(), rng)
        .unwrap();
    let (body, tokens) = (found.body, found.inputs.unwrap());
    eprintln!(
        "{case}: body {body:.4} / certified {:.4} (tightness {:.3}; published formula {:.4}); \
         tokens {tokens:.4} / certified {:.4} (tightness {:.3})",
        cert.body_bound,
        body / cert.body_bound,
        cert.reference_bound / cert.input_rms,
        cert.bound,
        tokens / cert.bound
    );
    assert!(
        body > 0.0 && tokens > 0.0,
        "{case}: the attack found nothing"
    );
    within_bound(&format!("{case}, body inputs"), body, cert.body_bound);
    within_bound(&format!("{case}, token sequences"), tokens, cert.bound);
    body / cert.body_bound
}

#[test]
fn random_gpts_never_exceed_their_certificate() {
    let mut rng = SpectraRng::seed_from_u64(19);
    // (largest σ, softmax scale, final scale): the paper's scale, sharper and flatter attention, and a
    // final scale up or down.
    for (top, softmax_scale, final_scale) in [
        (1.0, 1.0, 1.0),
        (2.0, 1.0, 1.0),
        (3.0, 1.0, 1.0),
        (1.0, 8.0, 3.0),
        (2.0, 0.25, 0.5),
    ] {
        let shape = GptShape {
            softmax_scale,
            final_scale,
            ..tiny_shape()
        };
        let gpt = LipschitzGpt::new(shape, &Device::Cpu, &mut rng).unwrap();
        randomize(&gpt, top, &mut rng);
        let case = format!(
            "random GPT, σ ≤ {top}, softmax scale {softmax_scale}, final scale {final_scale}"
        );
        attack_gpt(&case, &gpt, &mut rng);
    }
}

/// Trains through the runner, then loads the checkpoint's weights into a fresh model.
fn trained_weights(
    config: impl Fn(&std::path::Path, &std::path::Path) -> String,
    params: &[spectra_core::Param],
) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    train_support::run(&config(dir.path(), &out), &train_support::quiet());
    let ck = checkpoint::load(&checkpoint::path_in(&out), &Device::Cpu).unwrap();
    for p in params {
        p.var
            .set(&ck.tensors[&format!("param/{}", p.name)])
            .unwrap();
    }
}

/// The runner's tiny GPT (train_support::gpt_config: d 16, 1 block, 2 heads, seq 8, vocab 9)
/// after 60 steps of Muon and the soft cap on the cycling corpus.
fn trained_tiny_gpt(rng: &mut SpectraRng) -> LipschitzGpt {
    let shape = GptShape {
        vocab: 9,
        blocks: 1,
        heads: 2,
        seq_len: 8,
        ..tiny_shape()
    };
    let gpt = LipschitzGpt::new(shape, &Device::Cpu, rng).unwrap();
    trained_weights(
        |dir, out| {
            let corpus = train_support::write_cycle_corpus(dir);
            train_support::gpt_config(&corpus, out, train_support::MUON_SOFT_CAP, 60, "")
        },
        gpt.params(),
    );
    gpt
}

#[test]
fn trained_gpt_and_mlp_never_exceed_their_certificate() {
    let mut rng = SpectraRng::seed_from_u64(20);
    let gpt = trained_tiny_gpt(&mut rng);
    let tightness = attack_gpt("GPT trained 60 steps (Muon + soft cap 2)", &gpt, &mut rng);
    assert!(tightness < 1.0);

    let mlp = LipschitzMlp::new(16, 16, 4, 3, &Device::Cpu, &mut rng).unwrap();
    trained_weights(
        |dir, out| {
            let data = train_support::write_idx_set(dir, 64);
            train_support::mlp_config(&data, out, train_support::MLP_MUON_SOFT_CAP, 40, 16)
        },
        mlp.params(),
    );
    attack_mlp("MLP trained 40 steps (Muon + soft cap 4)", &mlp, &mut rng);
}

/// Each window's own certificate holds on its ball: gradient ascent on pairs within `ε` of a
/// trained GPT's embedding outputs never exceeds the per-input bound (the blocks' local constant
/// times the head's norm), which is never above the global bound at that radius.
#[test]
fn per_input_bounds_hold_on_their_balls() {
    let mut rng = SpectraRng::seed_from_u64(24);
    let gpt = trained_tiny_gpt(&mut rng);
    attack_balls("trained GPT", &gpt, &[0.05, 0.3], 9, &mut rng);
}

/// The same on random GPTs whose attention is sharp (large scores: weights near 0 and 1, where the
/// per-input bound relies on how far a small ball can tilt them) and on small balls.
#[test]
fn per_input_bounds_hold_where_attention_is_sharp() {
    let mut rng = SpectraRng::seed_from_u64(26);
    for (top, softmax_scale) in [(1.0, 4.0), (0.7, 16.0)] {
        let shape = GptShape {
            softmax_scale,
            ..tiny_shape()
        };
        let gpt = LipschitzGpt::new(shape, &Device::Cpu, &mut rng).unwrap();
        randomize(&gpt, top, &mut rng);
        let case = format!("random GPT, σ ≤ {top}, softmax scale {softmax_scale}");
        attack_balls(&case, &gpt, &[0.001, 0.01], 11, &mut rng);
    }
}

/// Attacks `gpt`'s per-input bounds at each radius on three random windows of tokens below
/// `vocab`: the whole output against the bound at the last position, and the stream entering the
/// head at positions 0, 3 and the last against each position's own bound (the causal refinement:
/// positions after t cannot move it).
fn attack_balls(case: &str, gpt: &LipschitzGpt, radii: &[f64], vocab: u32, rng: &mut SpectraRng) {
    let head = gpt.certificate().unwrap().norms.last().unwrap().1;
    let seq = gpt.shape().seq_len;
    let effort = AttackEffort {
        restarts: 6,
        steps: 40,
        ..AttackEffort::default()
    };
    for &radius in radii {
        let cert = gpt.certificate_at(&[radius]).unwrap();
        for window in 0..3 {
            let tokens: Vec<u32> = (0..seq).map(|_| rng.random_range(0..vocab)).collect();
            let tokens = Tensor::from_vec(tokens, (1, seq), &Device::Cpu).unwrap();
            let h = gpt.embed(&tokens).unwrap();
            let per_position = gpt.local_block_bounds(&h, radius).unwrap().remove(0);
            let local = per_position.iter().fold(0f64, |m, &l| m.max(l)) * head;
            let global = cert.robust_bounds[0].1;
            assert!(local <= global * (1.0 + 1e-12), "{local} vs {global}");
            let found = ball_lower_bound(&|x| gpt.body(x), &h, radius, &effort, rng).unwrap();
            eprintln!(
                "{case}, window {window}, ε = {radius}: attack {found:.4} / own bound {local:.4} (tightness {:.3}), global {global:.4}",
                found / local
            );
            assert!(found > 0.0);
            within_bound(
                &format!("{case}, window {window} at ε = {radius}"),
                found,
                local,
            );
            for t in [0, 3, seq - 1] {
                let at_t = |x: &Tensor| Ok(gpt.stream(x)?.narrow(1, t, 1)?);
                let found = ball_lower_bound(&at_t, &h, radius, &effort, rng).unwrap();
                within_bound(
                    &format!("{case}, window {window}, position {t}, ε = {radius}"),
                    found,
                    per_position[t],
                );
            }
        }
    }
}

/// A target its own certificate certifies at `ε` keeps its prediction under every perturbation of
/// its window's embedding output within `ε`: gradient descent on its margin (against the runner-up
/// of the moment) never brings the margin to 0.
#[test]
fn certified_targets_cannot_be_overturned_within_their_radius() {
    let mut rng = SpectraRng::seed_from_u64(25);
    let gpt = trained_tiny_gpt(&mut rng);
    // The corpus cycles through the vocabulary, so the next token is the current one plus 1.
    let tokens: Vec<u32> = (0..8).map(|i| (i % 9) as u32).collect();
    let targets: Vec<u32> = (1..9).map(|i| (i % 9) as u32).collect();
    let tokens = Tensor::from_vec(tokens, (1, 8), &Device::Cpu).unwrap();
    let mut checked = 0;
    for radius in [0.01, 0.03, 0.1] {
        checked += attack_certified_targets(&gpt, &tokens, &targets, radius, usize::MAX, &mut rng);
    }
    eprintln!("certified targets attacked within their radius: {checked}, none overturned");
    assert!(checked > 0, "nothing was certified to attack");
}

/// The paper's GPT as `spectra train experiments/shakespeare_softcap.ron` leaves it (in
/// `runs/shakespeare-softcap`, or the folder `SPECTRA_PAPER_GPT_RUN` names; d 256, 3 blocks, 4
/// heads): 8 targets of the first validation window that their own certificates certify at
/// ε = 0.01, spread along it, keep their predictions under attack. Minutes of work on a trained
/// run of its own, so it runs on request; it skips, saying why, where no such run exists.
#[test]
#[ignore = "needs a trained paper GPT: `cargo test --release --test certificate_attack -- --ignored`"]
fn the_paper_gpts_certified_targets_hold_under_attack() {
    let run = std::env::var("SPECTRA_PAPER_GPT_RUN").unwrap_or("runs/shakespeare-softcap".into());
    let corpus_file = std::path::Path::new("data/tinyshakespeare.txt");
    let checkpoint_file = checkpoint::path_in(std::path::Path::new(&run));
    if !checkpoint_file.is_file() || !corpus_file.is_file() {
        eprintln!(
            "skipped: needs a trained paper GPT in {run} (`spectra train experiments/shakespeare_softcap.ron \
             --stop-at 300`) and data/tinyshakespeare.txt (`scripts/get-data.sh`)"
        );
        return;
    }
    let corpus = TextCorpus::open(corpus_file, 256).unwrap();
    let shape = GptShape {
        vocab: corpus.vocab().len(),
        d_model: 256,
        blocks: 3,
        heads: 4,
        seq_len: 256,
        mlp_ratio: 4,
        blocks_mass: 16.0,
        softmax_scale: 1.0,
        final_scale: 1.0,
    };
    let mut rng = SpectraRng::seed_from_u64(27);
    let gpt = LipschitzGpt::new(shape, &Device::Cpu, &mut rng).unwrap();
    let ck = checkpoint::load(&checkpoint_file, &Device::Cpu).unwrap();
    ck.restore_params(gpt.params(), &checkpoint_file).unwrap();
    let batch = corpus.validation_batch(0, 1, &Device::Cpu).unwrap();
    let targets = batch
        .targets
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec1::<u32>()
        .unwrap();
    let checked = attack_certified_targets(&gpt, &batch.inputs, &targets, 0.01, 8, &mut rng);
    eprintln!("the paper's GPT: {checked} certified targets attacked at ε = 0.01, none overturned");
    assert!(checked > 0, "nothing was certified to attack");
}

/// Attacks at most `limit` of the targets that `gpt`'s per-input certificates certify at `radius`
/// (evenly spaced among them) in one window of `tokens` (`[1, seq]`): gradient descent on each margin (against the runner-up of
/// the moment) from three starts must never bring it to 0. Returns how many were attacked.
fn attack_certified_targets(
    gpt: &LipschitzGpt,
    tokens: &Tensor,
    targets: &[u32],
    radius: f64,
    limit: usize,
    rng: &mut SpectraRng,
) -> usize {
    let h = gpt.embed(tokens).unwrap();
    let targets_t = Tensor::from_slice(targets, targets.len(), &Device::Cpu).unwrap();
    let certified = gpt
        .certified_targets(tokens, &targets_t, &[radius])
        .unwrap()
        .unwrap()
        .remove(0);
    let certified: Vec<usize> = (0..certified.len()).filter(|&t| certified[t]).collect();
    let mut checked = 0;
    let spacing = certified.len().div_ceil(limit.max(1)).max(1);
    for &t in certified.iter().step_by(spacing) {
        let y = targets[t] as usize;
        let mut worst = f64::INFINITY;
        for restart in 0..3 {
            let mut delta = random_start(&h, radius, restart, rng);
            for step in 0..40 {
                let dv = Var::from_tensor(&delta).unwrap();
                let z = gpt.body(&(&h + dv.as_tensor()).unwrap()).unwrap();
                let row = z.get(0).unwrap().get(t).unwrap();
                let values = row.to_vec1::<f32>().unwrap();
                let rival = (0..values.len())
                    .filter(|&j| j != y)
                    .max_by(|&a, &b| values[a].total_cmp(&values[b]))
                    .unwrap();
                let margin = (row.get(y).unwrap() - row.get(rival).unwrap()).unwrap();
                worst = worst.min(margin.to_scalar::<f32>().unwrap() as f64);
                let g = margin.backward().unwrap().get(&dv).unwrap().clone();
                let decay = 1.0 - step as f64 / 40.0;
                let moved =
                    (&delta - (normalized(&g).unwrap() * (0.3 * radius * decay)).unwrap()).unwrap();
                delta = project(&moved, radius).unwrap();
            }
        }
        assert!(
            worst > 0.0,
            "position {t} at ε = {radius}: margin driven to {worst}"
        );
        checked += 1;
    }
    checked
}

/// A random perturbation of every position of `h` with RMS up to `r` (none on the first restart).
fn random_start(h: &Tensor, r: f64, restart: usize, rng: &mut SpectraRng) -> Tensor {
    if restart == 0 {
        return h.zeros_like().unwrap();
    }
    let dims = h.dims3().unwrap();
    spectra::models::attack::random_inputs(dims, r, rng, &Device::Cpu).unwrap()
}

fn attack_mlp(case: &str, mlp: &LipschitzMlp, rng: &mut SpectraRng) -> f64 {
    let cert = mlp.certificate().unwrap();
    let effort = AttackEffort {
        restarts: 6,
        ..AttackEffort::default()
    };
    let best = mlp.lower_bounds(&cert, &effort, rng).unwrap().body;
    eprintln!(
        "{case}: {best:.4} / certified {:.4} (tightness {:.3})",
        cert.bound,
        best / cert.bound
    );
    assert!(best > 0.0, "{case}: the attack found nothing");
    within_bound(case, best, cert.bound);
    best / cert.bound
}

#[test]
fn random_mlps_never_exceed_their_certificate() {
    let mut rng = SpectraRng::seed_from_u64(21);
    for top in [0.8, 2.0] {
        let mlp = LipschitzMlp::new(20, 16, 5, 3, &Device::Cpu, &mut rng).unwrap();
        for p in mlp.params() {
            let (rows, cols) = p.var.dims2().unwrap();
            let sigma = top * (rows as f64 / cols as f64).sqrt();
            let sigmas: Vec<f64> = (0..rows.min(cols))
                .map(|i| sigma / (1.0 + i as f64))
                .collect();
            let w = with_singular_values(rows, cols, &sigmas, &mut rng, DType::F32, &Device::Cpu)
                .unwrap();
            p.var.set(&w).unwrap();
        }
        attack_mlp(&format!("random MLP, σ ≤ {top}"), &mlp, &mut rng);
    }
}

/// A one-block GPT whose weights are the given matrices (`None`: zero), embedding columns unit RMS.
fn constructed_gpt(
    shape: GptShape,
    weights: &[(&str, Option<Tensor>)],
) -> (LipschitzGpt, Certificate) {
    let gpt = LipschitzGpt::new(shape, &Device::Cpu, &mut SpectraRng::seed_from_u64(0)).unwrap();
    for p in gpt.params() {
        if let Some((_, w)) = weights.iter().find(|(n, _)| *n == p.name) {
            let w = match w {
                Some(w) => w.clone(),
                None => p.var.zeros_like().unwrap(),
            };
            p.var.set(&w).unwrap();
        }
    }
    let cert = gpt.certificate().unwrap();
    (gpt, cert)
}

/// `scale · u vᵀ` for unit vectors along `u` and `v` (given unnormalised).
fn rank_one(u: &[f32], v: &[f32], scale: f64) -> Tensor {
    let norm = |x: &[f32]| x.iter().map(|a| a * a).sum::<f32>().sqrt();
    let (nu, nv) = (norm(u), norm(v));
    let u = Tensor::from_vec(
        u.iter().map(|a| a / nu).collect(),
        (u.len(), 1),
        &Device::Cpu,
    )
    .unwrap();
    let v = Tensor::from_vec(
        v.iter().map(|a| a / nv).collect(),
        (1, v.len()),
        &Device::Cpu,
    )
    .unwrap();
    (u.matmul(&v).unwrap() * scale).unwrap()
}

#[test]
fn an_mlp_at_the_steepest_gelu_slope_exceeds_the_published_formula_but_not_the_certificate() {
    // Attention off (W_o = 0), so the block is (1 − a)·x, then the MLP residual; a = 1/2. W_in = s·u vᵀ
    // and W_out = s'·v uᵀ with u the all-ones hidden direction: along v every hidden unit sits at the
    // same pre-activation, chosen as GELU's steepest point 1.4185, where the scaled GELU's slope is
    // 1.1289930/1.1289 > 1. The published formula divides the MLP's Lipschitz constant by 1.1289.
    let shape = GptShape {
        vocab: 16,
        blocks: 1,
        heads: 2,
        seq_len: 2,
        ..tiny_shape()
    };
    let (d, hidden) = (16usize, 64usize);
    let v: Vec<f32> = (0..d)
        .map(|i| if i % 3 == 0 { 1.0 } else { -0.5 })
        .collect();
    let ones = vec![1f32; hidden];
    let x_rms = 0.5; // an input of RMS 1 after the attention residual's (1 − a)
    let steepest = 1.418_504_f64;
    // W_in's RMS→RMS norm is √(d/hidden)·s; a pre-activation is s·‖x‖₂/√hidden = s·x_rms·√(d/hidden).
    let s_in = steepest / (x_rms * (d as f64 / hidden as f64).sqrt());
    let s_out = 2.0;
    let head_basis: Vec<f32> = (0..16).map(|i| if i == 0 { 1.0 } else { 0.0 }).collect();
    let (gpt, cert) = constructed_gpt(
        shape,
        &[
            ("blocks.0.attn.o", None),
            ("blocks.0.mlp.in", Some(rank_one(&ones, &v, s_in))),
            ("blocks.0.mlp.out", Some(rank_one(&v, &ones, s_out))),
            ("head", Some(rank_one(&head_basis, &v, 4.0))),
        ],
    );
    // Along v, from RMS 0.998 to 1 (the edge of the domain the body bound covers).
    let unit: Vec<f32> = {
        let rms = (v.iter().map(|a| a * a).sum::<f32>() / d as f32).sqrt();
        v.iter().map(|a| a / rms).collect()
    };
    let at = |c: f64| {
        let row: Vec<f32> = unit.iter().map(|a| a * c as f32).collect();
        Tensor::from_vec([row.clone(), row].concat(), (1, 2, d), &Device::Cpu).unwrap()
    };
    let (x, y) = (at(1.0 - 2e-3), at(1.0));
    let diff = (gpt.body(&y).unwrap() - gpt.body(&x).unwrap()).unwrap();
    let measured = ratios(&diff, &(&y - &x).unwrap()).unwrap()[0];
    let published = cert.reference_bound / cert.input_rms;
    eprintln!(
        "steepest-GELU MLP: measured {measured:.5}, certified {:.5}, published formula {published:.5}",
        cert.body_bound
    );
    assert!(
        measured > published * 1.05,
        "the construction should beat the published formula: {measured} vs {published}"
    );
    within_bound("steepest-GELU MLP", measured, cert.body_bound);
    // The certificate is tight here: the block is exactly as steep as its bound says.
    assert!(
        measured > 0.999 * cert.body_bound,
        "{measured} vs {}",
        cert.body_bound
    );
}

#[test]
fn attention_with_one_head_carrying_all_the_energy_exceeds_the_published_formula_but_not_the_certificate(
) {
    // q = k = v = o = I, MLP off, 4 heads: an input confined to one head's 4 coordinates has ‖q_h‖₂ =
    // √d·r rather than √d_head·r, so that head's scores move H = 4 times faster than the published
    // formula's 2r²‖Wq‖‖Wk‖ allows.
    let shape = GptShape {
        vocab: 16,
        blocks: 1,
        heads: 4,
        seq_len: 4,
        ..tiny_shape()
    };
    let eye = Tensor::eye(16, DType::F32, &Device::Cpu).unwrap();
    let (gpt, cert) = constructed_gpt(
        shape,
        &[
            ("blocks.0.attn.q", Some(eye.clone())),
            ("blocks.0.attn.k", Some(eye.clone())),
            ("blocks.0.attn.v", Some(eye.clone())),
            ("blocks.0.attn.o", Some(eye.clone())),
            ("blocks.0.mlp.out", None),
            ("head", Some(eye)),
        ],
    );
    let mut rng = SpectraRng::seed_from_u64(23);
    let effort = AttackEffort {
        restarts: 12,
        steps: 60,
        batch: 16,
        token_rounds: 0,
    };
    let best = body_lower_bound(
        &|x| gpt.body(x),
        (16, 4, 16),
        4,
        cert.input_rms,
        &effort,
        &mut rng,
        &Device::Cpu,
    )
    .unwrap();
    let published = cert.reference_bound / cert.input_rms;
    eprintln!(
        "one-head attention: attack {best:.4}, certified {:.4} (tightness {:.3}), published formula {published:.4}",
        cert.body_bound,
        best / cert.body_bound
    );
    assert!(
        best > published * 1.05,
        "the attack should beat the published formula: {best} vs {published}"
    );
    within_bound("one-head attention", best, cert.body_bound);
}
