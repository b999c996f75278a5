//! Weight constraints (and the matrix routines under them) on f32 256×256, 1024×1024 and 4096×1024,
//! each against a plain matmul or memory copy of the same shape measured in the same run; then a study
//! of how many power iterations a persistent start vector saves over consecutive training-like steps.

mod roofline;

use candle_core::{Device, Tensor, Var};
use rand::SeedableRng;
use roofline::{init_weight, Op, Roofline, Work, SHAPES};
use spectra::plugins::{
    EmbeddingColumnCap, HardCapMode, SpectralHammer, SpectralHardCap, SpectralNormalize,
    SpectralSoftCap, SpectralWeightDecay, Stiefel, SvdClip, WeightDecay,
};
use spectra_core::linalg::svd::sigma_max;
use spectra_core::linalg::{orthogonalize, power_iterate, Orthogonalizer, StartVector};
use spectra_core::{ConstraintContext, ConstraintState, ParamRole, SpectraRng, WeightConstraint};

/// One constraint applied repeatedly to the same weight, as after every training step.
fn constraint_op<'a>(
    c: Box<dyn WeightConstraint>,
    role: ParamRole,
    m: usize,
    n: usize,
    work: Work,
) -> Op<'a> {
    let var = Var::from_tensor(&init_weight(m, n)).unwrap();
    let mut rng = SpectraRng::seed_from_u64(0);
    let mut state = ConstraintState::new();
    let id = spectra_core::registry::to_ron(&c);
    let routine = move || {
        let mut ctx = ConstraintContext {
            step: 0,
            lr: 0.01,
            target_norm: 1.0,
            update_norm_bound: Some(0.01),
            role,
            name: "w",
            rng: &mut rng,
            state: &mut state,
        };
        c.apply(&var, &mut ctx).unwrap();
    };
    (id, work, Box::new(routine))
}

fn ops<'a>(m: usize, n: usize) -> Vec<Op<'a>> {
    let (mf, nf) = (m as f64, n as f64);
    let quintic_step = 4.0 * mf * nf * nf + 2.0 * nf * nf * nf;
    // Power iteration: 16 rounds of two matrix–vector products plus the final one, each reading W once.
    let power_bytes = 33.0 * 4.0 * mf * nf;
    let elementwise = 8.0 * mf * nf;
    let hidden = ParamRole::Hidden;
    let a = init_weight(m, n);
    let b = a.clone();
    let mut rng = SpectraRng::seed_from_u64(1);
    vec![
        (
            "linalg: power iteration, 16 rounds".into(),
            Work::Bytes(power_bytes),
            Box::new(move || drop(power_iterate(&a, StartVector::Random(&mut rng), 16).unwrap())),
        ),
        (
            "linalg: Newton-Schulz NS6 (JAX)".into(),
            Work::Flops(6.0 * quintic_step),
            Box::new(move || drop(orthogonalize(&b, Orthogonalizer::JaxNs6, 1e-12).unwrap())),
        ),
        constraint_op(
            Box::new(WeightDecay::default()),
            hidden,
            m,
            n,
            Work::Bytes(elementwise),
        ),
        constraint_op(
            Box::new(EmbeddingColumnCap::default()),
            ParamRole::Embedding,
            m,
            n,
            Work::Bytes(elementwise),
        ),
        constraint_op(
            Box::new(SpectralWeightDecay::default()),
            hidden,
            m,
            n,
            Work::Bytes(power_bytes),
        ),
        constraint_op(
            Box::new(SpectralNormalize::default()),
            hidden,
            m,
            n,
            Work::Bytes(power_bytes),
        ),
        constraint_op(
            Box::new(SpectralHammer::default()),
            hidden,
            m,
            n,
            Work::Bytes(power_bytes),
        ),
        constraint_op(
            Box::new(SpectralSoftCap::default()),
            hidden,
            m,
            n,
            Work::Flops(8.0 * mf * nf * nf),
        ),
        constraint_op(
            Box::new(SpectralHardCap::default()),
            hidden,
            m,
            n,
            Work::Flops(4.0 * quintic_step),
        ),
        constraint_op(
            Box::new(SpectralHardCap {
                mode: HardCapMode::ExactClip,
                ..SpectralHardCap::default()
            }),
            hidden,
            m,
            n,
            Work::Time,
        ),
        constraint_op(
            Box::new(Stiefel::default()),
            hidden,
            m,
            n,
            Work::Flops(6.0 * quintic_step),
        ),
        constraint_op(Box::new(SvdClip::default()), hidden, m, n, Work::Time),
    ]
}

/// Iterations from `start` until the estimate is within `tol` (relative) of `exact`, and the iterate.
fn iterations_to(w: &Tensor, start: Tensor, exact: f64, tol: f64) -> (usize, Tensor) {
    const MAX: usize = 2000;
    let mut x = start;
    for i in 1..=MAX {
        let top = power_iterate(w, StartVector::Given(&x), 1).unwrap();
        x = top.iterate;
        if (exact - top.sigma) / exact <= tol {
            return (i, x);
        }
    }
    (MAX, x)
}

/// Over consecutive Muon-like steps W ← W + 0.02·scale·orthogonalize(G), how many power iterations
/// reach 1e-3 relative error from a fresh Gaussian start and from the previous step's vector.
fn persistent_vector_study() {
    const STEPS: usize = 12;
    const TOL: f64 = 1e-3;
    println!(
        "\nPower iterations to reach {TOL} relative error in σ_max, mean over steps 2..{STEPS}:"
    );
    println!("| shape | spectrum | fresh start | persistent vector |");
    println!("|---|---|---|---|");
    let mut rng = SpectraRng::seed_from_u64(7);
    for (m, n) in [(256, 256), (1024, 1024), (4096, 1024)] {
        let decaying: Vec<f64> = (0..n).map(|i| 2.0 / (1.0 + i as f64).sqrt()).collect();
        let spectra = [
            ("Gaussian (init)", init_weight(m, n)),
            (
                "σᵢ = 2/√i (trained-like)",
                spectra_core::linalg::svd::with_singular_values(
                    m,
                    n,
                    &decaying,
                    &mut rng,
                    candle_core::DType::F32,
                    &Device::Cpu,
                )
                .unwrap(),
            ),
        ];
        for (name, mut w) in spectra {
            let scale = (m as f64 / n as f64).sqrt();
            let (mut fresh_total, mut persistent_total) = (0, 0);
            let mut kept: Option<Tensor> = None;
            for step in 0..STEPS {
                let g = Tensor::randn(0f32, 1.0, (m, n), &Device::Cpu).unwrap();
                let update = orthogonalize(&g, Orthogonalizer::JaxNs6, 1e-12)
                    .unwrap()
                    .affine(0.02 * scale, 0.0)
                    .unwrap();
                w = (w + update).unwrap();
                let exact = sigma_max(&w).unwrap();
                let fresh_start = Tensor::randn(0f32, 1.0, n, &Device::Cpu).unwrap();
                let (fresh, fresh_end) = iterations_to(&w, fresh_start, exact, TOL);
                let (persistent, end) = match kept.take() {
                    Some(v) => iterations_to(&w, v, exact, TOL),
                    None => (fresh, fresh_end),
                };
                kept = Some(end);
                if step > 0 {
                    fresh_total += fresh;
                    persistent_total += persistent;
                }
            }
            let steps = (STEPS - 1) as f64;
            println!(
                "| {m}×{n} | {name} | {:.1} | {:.1} |",
                fresh_total as f64 / steps,
                persistent_total as f64 / steps
            );
        }
    }
}

fn main() {
    let mut roofline = Roofline::new();
    for (m, n) in SHAPES {
        roofline.shape("constraints", (m, n), ops(m, n));
    }
    roofline.report();
    persistent_vector_study();
}
