//! Optimizer steps on one f32 matrix of 256×256, 1024×1024 and 4096×1024, each against a plain
//! matmul (Muon) or memory copy (AdamW, SGD) of the same shape measured in the same run. AdamW's step
//! runs the fused update (`spectra_plugins::optimizers::fused::adamw`); the update alone is measured too, to separate it
//! from the step's gradient and result checks and its write into the parameter.

mod roofline;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use roofline::{init_weight, Op, Roofline, Work, SHAPES};
use spectra::plugins::optimizers::fused::adamw::{adamw_update, AdamWScalars};
use spectra::plugins::{AdamW, Muon, Sgd};
use spectra_core::linalg::Orthogonalizer;
use spectra_core::{Optimizer, OptimizerStep, Param, ParamRole};

/// Repeated steps of `opt` on one parameter with a fixed gradient.
fn step_op<'a>(id: &str, mut opt: Box<dyn Optimizer>, m: usize, n: usize, work: Work) -> Op<'a> {
    let param = Param::new(
        "w",
        Var::from_tensor(&init_weight(m, n)).unwrap(),
        ParamRole::Hidden,
    );
    let mut grads = GradStore::default();
    grads.insert(
        param.var.as_tensor(),
        Tensor::randn(0f32, 1.0, (m, n), &Device::Cpu).unwrap(),
    );
    let mut step = 0;
    let routine = move || {
        opt.step(
            std::slice::from_ref(&param),
            &grads,
            &OptimizerStep {
                step,
                lr_factor: 1.0,
            },
        )
        .unwrap();
        step += 1;
    };
    (id.to_string(), work, Box::new(routine))
}

/// The fused AdamW update alone, on fixed inputs (its outputs are dropped).
fn adamw_op<'a>(m: usize, n: usize) -> Op<'a> {
    let gaussian = |std: f32| Tensor::randn(0f32, std, (m, n), &Device::Cpu).unwrap();
    let (w, g, mom, v) = (
        init_weight(m, n),
        gaussian(1.0),
        gaussian(0.1),
        gaussian(0.1).sqr().unwrap(),
    );
    let (m_correction, v_correction) = AdamWScalars::corrections(0.9, 0.999, 10, true);
    let scalars = AdamWScalars {
        beta1: 0.9,
        beta2: 0.999,
        m_correction,
        v_correction,
        eps: 1e-8,
        lr: 1e-3,
        weight_scale: 1.0,
    };
    let routine = move || drop(adamw_update(&w, &g, &mom, &v, &scalars).unwrap());
    (
        "AdamW fused update alone".to_string(),
        Work::Bytes(28.0 * (m * n) as f64),
        Box::new(routine),
    )
}

fn muon(orthogonalizer: Orthogonalizer) -> Box<dyn Optimizer> {
    let mut muon = Muon::new(0.01);
    muon.orthogonalizer = orthogonalizer;
    Box::new(muon)
}

fn ops<'a>(m: usize, n: usize) -> Vec<Op<'a>> {
    let (mf, nf) = (m as f64, n as f64);
    let quintic_step = 4.0 * mf * nf * nf + 2.0 * nf * nf * nf;
    // Minimal traffic: AdamW reads W, g, m, v and writes W, m, v; SGD reads W, g, b and writes W, b.
    vec![
        step_op(
            "AdamW step",
            Box::new(AdamW::new(1e-3)),
            m,
            n,
            Work::Bytes(28.0 * mf * nf),
        ),
        adamw_op(m, n),
        step_op(
            "Sgd step (momentum 0.9)",
            Box::new(Sgd::default()),
            m,
            n,
            Work::Bytes(20.0 * mf * nf),
        ),
        step_op(
            "Muon step, JaxNs6",
            muon(Orthogonalizer::JaxNs6),
            m,
            n,
            Work::Flops(6.0 * quintic_step),
        ),
        step_op(
            "Muon step, LipschitzNs5",
            muon(Orthogonalizer::LipschitzNs5),
            m,
            n,
            Work::Flops(5.0 * quintic_step),
        ),
    ]
}

fn main() {
    let mut roofline = Roofline::new();
    for (m, n) in SHAPES {
        roofline.shape("optimizers", (m, n), ops(m, n));
    }
    roofline.report();
}
