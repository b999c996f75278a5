//! Timing against a roofline measured in the same run: every operation is reported next to a plain
//! matmul (compute-bound work, GFLOP/s) or a plain memory copy (bandwidth-bound work, GB/s) of the same
//! shape, because the machine is shared and absolute numbers drift from run to run.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, SamplingMode};

/// f32 weight shapes (fan_out, fan_in), tall or square so that the Gram side is fan_in.
pub const SHAPES: [(usize, usize); 3] = [(256, 256), (1024, 1024), (4096, 1024)];

/// What an operation's speed is measured in.
#[derive(Clone, Copy)]
pub enum Work {
    /// Nominal floating-point operations, compared with the matmul's GFLOP/s.
    Flops(f64),
    /// Minimal bytes moved (each array read or written once), compared with the copy's GB/s.
    Bytes(f64),
    /// Adaptive or library work without a fixed count: reported as a multiple of the matmul's time.
    #[allow(dead_code)] // only the constraints bench has such work
    Time,
}

/// A named operation, its work, and the routine that performs it once.
pub type Op<'a> = (String, Work, Box<dyn FnMut() + 'a>);

struct Row {
    shape: (usize, usize),
    id: String,
    work: Work,
}

/// Records the per-iteration time of every benchmark (the median of criterion's samples) and prints the
/// comparison table at the end.
pub struct Roofline {
    criterion: Criterion,
    samples: RefCell<BTreeMap<String, Vec<f64>>>,
    rows: Vec<Row>,
}

fn key(shape: (usize, usize), id: &str) -> String {
    format!("{}x{}/{id}", shape.0, shape.1)
}

const MATMUL: &str = "plain matmul W·B (B n×n)";
const COPY: &str = "plain memory copy of W";

impl Roofline {
    /// Criterion with settings that keep a full run of the slowest operations (seconds per call at
    /// 4096×1024) to a few minutes: 10 flat samples after a short warm-up.
    pub fn new() -> Self {
        let criterion = Criterion::default()
            .sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(2))
            .without_plots()
            .configure_from_args();
        Roofline {
            criterion,
            samples: RefCell::default(),
            rows: Vec::new(),
        }
    }

    /// Benchmarks the operations of one shape, preceded by the matmul and copy rooflines.
    pub fn shape(&mut self, family: &str, shape: (usize, usize), ops: Vec<Op<'_>>) {
        let (m, n) = shape;
        let w = Tensor::randn(0f32, 1.0, (m, n), &Device::Cpu).unwrap();
        let b = Tensor::randn(0f32, 1.0, (n, n), &Device::Cpu).unwrap();
        let mut all: Vec<Op<'_>> = vec![
            (
                MATMUL.into(),
                Work::Flops(2.0 * (m * n * n) as f64),
                Box::new(move || drop(w.matmul(&b).unwrap())),
            ),
            (COPY.into(), Work::Bytes(8.0 * (m * n) as f64), {
                let w = Tensor::randn(0f32, 1.0, (m, n), &Device::Cpu).unwrap();
                Box::new(move || drop(w.copy().unwrap()))
            }),
        ];
        all.extend(ops);
        let mut group: BenchmarkGroup<'_, WallTime> =
            self.criterion.benchmark_group(format!("{family}/{m}x{n}"));
        group.sampling_mode(SamplingMode::Flat);
        for (id, work, mut routine) in all {
            let samples = &self.samples;
            let k = key(shape, &id);
            group.bench_function(&id, |bencher| {
                bencher.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        routine();
                    }
                    let elapsed = start.elapsed();
                    samples
                        .borrow_mut()
                        .entry(k.clone())
                        .or_default()
                        .push(elapsed.as_secs_f64() / iters as f64);
                    elapsed
                })
            });
            self.rows.push(Row { shape, id, work });
        }
        group.finish();
    }

    fn median(&self, shape: (usize, usize), id: &str) -> f64 {
        let mut v = self
            .samples
            .borrow()
            .get(&key(shape, id))
            .cloned()
            .unwrap_or_default();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    }

    /// Prints the table (Markdown) of every operation against its roofline.
    pub fn report(self) {
        self.criterion.final_summary();
        println!("\n| shape | operation | time | speed | roofline (same run) | fraction |");
        println!("|---|---|---|---|---|---|");
        for row in &self.rows {
            let t = self.median(row.shape, &row.id);
            let matmul_t = self.median(row.shape, MATMUL);
            let (speed, roof, fraction) = match row.work {
                Work::Flops(f) => {
                    let roof = 2.0 * (row.shape.0 * row.shape.1 * row.shape.1) as f64 / matmul_t;
                    let fraction = format!("{:.0}%", 100.0 * f / t / roof);
                    (
                        format!("{:.1} GFLOP/s", f / t / 1e9),
                        format!("matmul {:.1} GFLOP/s", roof / 1e9),
                        fraction,
                    )
                }
                Work::Bytes(b) => {
                    let roof =
                        8.0 * (row.shape.0 * row.shape.1) as f64 / self.median(row.shape, COPY);
                    let fraction = format!("{:.0}%", 100.0 * b / t / roof);
                    (
                        format!("{:.1} GB/s", b / t / 1e9),
                        format!("copy {:.1} GB/s", roof / 1e9),
                        fraction,
                    )
                }
                Work::Time => (
                    "–".into(),
                    format!("matmul {:.2} ms", matmul_t * 1e3),
                    format!("{:.0}× matmul time", t / matmul_t),
                ),
            };
            println!(
                "| {}×{} | {} | {:.3} ms | {speed} | {roof} | {fraction} |",
                row.shape.0,
                row.shape.1,
                row.id,
                t * 1e3
            );
        }
    }
}

/// A Gaussian f32 matrix with RMS→RMS norm of order 1 (entries of variance 1/fan_in), as at init.
pub fn init_weight(m: usize, n: usize) -> Tensor {
    Tensor::randn(0f32, (1.0 / n as f64).sqrt() as f32, (m, n), &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
}
