//! The blocked product in the manner of BLIS, for a register tile [`Tile`]: operands packed into
//! panels that stay in L1 and L2, 256-deep blocks of the shared dimension, each block of the result
//! read and written once per span of several blocks, and the threads splitting the larger side of
//! the result once instead of meeting at barriers inside the product.

use std::arch::x86_64::*;
use std::cell::RefCell;

use rayon::prelude::*;

use super::tiles::{Panel, Tile};
use super::{Dst, Operand, Threads};

/// Depth of one block: a 256 × 16 panel of `b` is 16 KiB, half of L1 (a 256 × 64 panel of the
/// AVX-512 tile is 64 KiB, in L2, which streams it at a sixth of the rate the tile could take).
const KC: usize = 256;
/// Rows of `a` packed at a time (a multiple of every tile's rows): 72 × 256 floats are 72 KiB, in L2 beside the `b` panel's block.
const MC: usize = 72;
/// How many depths ahead packing a column-major `a` prefetches.
const AHEAD: usize = 8;
/// Columns of `b` packed at a time (a multiple of every tile's columns).
const NC: usize = 1024;
/// Floats of `b` packed at a time, several blocks deep: 2 MiB, in L3.
const SPAN_FLOATS: usize = 1 << 19;

thread_local! {
    /// Each thread's packing buffers, kept between products.
    static PACKED: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

pub(super) unsafe fn run<T: Tile>(
    (m, n, k): (usize, usize, usize),
    out: Dst,
    a: Operand,
    b: Operand,
    threads: Threads,
) {
    let threads = match threads {
        Threads::One => 1,
        Threads::All => rayon::current_num_threads(),
    };
    if threads > 1 && k >= DEEP * m.max(n) {
        split_depth::<T>((m, n, k), out, a, b, threads);
        return;
    }
    // One part per thread, each packing its own copy of the operand all parts read: split the
    // side whose shared operand is the smaller one to pack again.
    let split_rows = m >= n;
    let (len, unit) = if split_rows { (m, T::MR) } else { (n, T::NR) };
    let parts = threads.min(len / unit).max(1);
    if parts == 1 {
        part::<T>((0, m), (0, n), k, out, a, b);
        return;
    }
    let step = len.div_ceil(parts).div_ceil(unit) * unit;
    (0..len.div_ceil(step)).into_par_iter().for_each(|p| {
        let range = (p * step, ((p + 1) * step).min(len));
        if split_rows {
            part::<T>(range, (0, n), k, out, a, b);
        } else {
            part::<T>((0, m), range, k, out, a, b);
        }
    });
}

/// How many times deeper than wide a product is split along its depth.
const DEEP: usize = 8;

/// A product much deeper than wide (a weight's gradient, a sum over every token of a batch) split
/// along its depth: each thread packs only its share of both operands, where splitting the rows or
/// columns would have every thread pack the whole of one operand, and the partial products (the
/// size of the small result) are added at the end.
unsafe fn split_depth<T: Tile>(
    (m, n, k): (usize, usize, usize),
    out: Dst,
    a: Operand,
    b: Operand,
    threads: usize,
) {
    let step = k.div_ceil(threads).div_ceil(KC) * KC;
    let spans: Vec<(usize, usize)> = (0..k)
        .step_by(step)
        .map(|d| (d, (d + step).min(k)))
        .collect();
    // The first span goes to the destination itself; each other span to a partial product.
    let mut partials: Vec<Vec<f32>> = spans[1..]
        .iter()
        .map(|_| Vec::with_capacity(m * n))
        .collect();
    let targets: Vec<Dst> = std::iter::once(out)
        .chain(partials.iter_mut().map(|p| Dst {
            ptr: p.as_mut_ptr(),
            rs: n,
            scale: out.scale,
            accumulate: false,
        }))
        .collect();
    spans
        .par_iter()
        .zip(&targets)
        .for_each(|(&(d0, d1), &target)| {
            part::<T>((0, m), (0, n), d1 - d0, target, a.at(0, d0), b.at(d0, 0));
        });
    for partial in &mut partials {
        // SAFETY: `part` without `accumulate` wrote all m·n elements.
        partial.set_len(m * n);
        for (i, row) in partial.chunks_exact(n).enumerate() {
            let dst = std::slice::from_raw_parts_mut(out.ptr.add(i * out.rs), n);
            for (d, &p) in dst.iter_mut().zip(row) {
                *d += p;
            }
        }
    }
}

/// Rows `rows` × columns `cols` of the destination, on the calling thread.
unsafe fn part<T: Tile>(
    rows: (usize, usize),
    cols: (usize, usize),
    k: usize,
    out: Dst,
    a: Operand,
    b: Operand,
) {
    let with_buffers = |(packed_a, packed_b): &mut (Vec<f32>, Vec<f32>)| {
        let width = NC.min((cols.1 - cols.0).div_ceil(T::NR) * T::NR);
        let span = (SPAN_FLOATS / width / KC).max(1) * KC;
        packed_b.resize(span.min(k.div_ceil(KC) * KC).max(KC) * width, 0.0);
        packed_a.resize(KC * MC, 0.0);
        blocks::<T>(rows, cols, k, out, a, b, packed_a, packed_b);
    };
    // A rayon worker that steals work while waiting would find the buffers in use: it then uses
    // buffers of its own.
    PACKED.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffers) => with_buffers(&mut buffers),
        Err(_) => with_buffers(&mut (Vec::new(), Vec::new())),
    });
}

#[allow(clippy::too_many_arguments)]
unsafe fn blocks<T: Tile>(
    (m0, m1): (usize, usize),
    (n0, n1): (usize, usize),
    k: usize,
    out: Dst,
    a: Operand,
    b: Operand,
    packed_a: &mut [f32],
    packed_b: &mut [f32],
) {
    for j0 in (n0..n1).step_by(NC) {
        let nc = NC.min(n1 - j0);
        if k == 0 {
            // An empty sum: the destination is zero (or unchanged).
            if !out.accumulate {
                for i in m0..m1 {
                    std::ptr::write_bytes(out.ptr.add(i * out.rs + j0), 0, nc);
                }
            }
            continue;
        }
        // Depth in spans of several blocks, every block of a span packed first: each row block
        // of the destination is then read and written once per span, in L2 meanwhile, rather
        // than once per block from memory.
        // Rows of a row-major `a` are read in place: an MR × kc panel is 6 KiB, in L1 while
        // the tile walks the `b` panels. Other layouts are packed.
        let direct = a.cs == 1;
        let width = nc.div_ceil(T::NR) * T::NR;
        let span = (SPAN_FLOATS / width / KC).max(1) * KC;
        for q0 in (0..k).step_by(span) {
            let q1 = (q0 + span).min(k);
            for p0 in (q0..q1).step_by(KC) {
                let kc = KC.min(q1 - p0);
                pack_b::<T>(b, (p0, kc), (j0, nc), &mut packed_b[(p0 - q0) * width..]);
            }
            for i0 in (m0..m1).step_by(MC) {
                let mc = MC.min(m1 - i0);
                for p0 in (q0..q1).step_by(KC) {
                    let kc = KC.min(q1 - p0);
                    let accumulate = out.accumulate || p0 > 0;
                    if !direct {
                        pack_a::<T>(a, (i0, mc), (p0, kc), packed_a);
                    }
                    let packed_b = &packed_b[(p0 - q0) * width..];
                    for jr in (0..nc).step_by(T::NR) {
                        for ir in (0..mc).step_by(T::MR) {
                            let panel = if direct {
                                Panel {
                                    ptr: a.ptr.offset((i0 + ir) as isize * a.rs + p0 as isize),
                                    rs: a.rs,
                                    ks: 1,
                                }
                            } else {
                                Panel {
                                    ptr: packed_a.as_ptr().add(ir * kc),
                                    rs: 1,
                                    ks: T::MR as isize,
                                }
                            };
                            (T::TILE)(
                                kc,
                                panel,
                                packed_b.as_ptr().add(jr * kc),
                                out.ptr.add((i0 + ir) * out.rs + j0 + jr),
                                (out.rs, T::MR.min(mc - ir), T::NR.min(nc - jr)),
                                out.scale,
                                accumulate,
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Rows `i0..i0+mc` × depth `p0..p0+kc` of `a`, as MR-row panels (depth-major inside a panel),
/// the last one padded with zeros.
unsafe fn pack_a<T: Tile>(
    a: Operand,
    (i0, mc): (usize, usize),
    (p0, kc): (usize, usize),
    buf: &mut [f32],
) {
    let panels = mc.div_ceil(T::MR);
    // Depth outermost: a column-major `a` (a transposed gradient) is then read along its
    // contiguous columns, each of its cache lines once; panel-outermost reads kc lines a few
    // floats at a time, lines that a power-of-two row length maps into the same L1 sets.
    for p in 0..kc {
        let src = a.ptr.offset((p0 + p) as isize * a.cs + i0 as isize * a.rs);
        if a.rs == 1 && p + AHEAD < kc {
            // The column AHEAD depths on, one cache line at a time: the columns are far apart
            // and streamed from memory, and the hardware does not fetch far enough ahead.
            let next = src.offset(AHEAD as isize * a.cs);
            for l in (0..mc).step_by(16) {
                _mm_prefetch::<_MM_HINT_T0>(next.add(l) as *const i8);
            }
        }
        for panel in 0..panels {
            let rows = T::MR.min(mc - panel * T::MR);
            let (dst, padding) = buf[panel * T::MR * kc + p * T::MR..][..T::MR].split_at_mut(rows);
            let first = src.offset((panel * T::MR) as isize * a.rs);
            if a.rs == 1 {
                // A loop, not `copy_nonoverlapping`: a call to memcpy for every few floats cost
                // more than the copy.
                let column = std::slice::from_raw_parts(first, rows);
                for (v, &x) in dst.iter_mut().zip(column) {
                    *v = x;
                }
            } else {
                for (r, v) in dst.iter_mut().enumerate() {
                    *v = *first.offset(r as isize * a.rs);
                }
            }
            padding.fill(0.0);
        }
    }
}

/// Depth `p0..p0+kc` × columns `j0..j0+nc` of `b`, as NR-column panels (depth-major inside a
/// panel), the last one padded with zeros.
unsafe fn pack_b<T: Tile>(
    b: Operand,
    (p0, kc): (usize, usize),
    (j0, nc): (usize, usize),
    buf: &mut [f32],
) {
    let mut o = 0;
    for jr in (0..nc).step_by(T::NR) {
        let cols = T::NR.min(nc - jr);
        for p in 0..kc {
            let src = b
                .ptr
                .offset((p0 + p) as isize * b.rs + (j0 + jr) as isize * b.cs);
            let panel = &mut buf[o..o + T::NR];
            if b.cs == 1 && cols == T::NR {
                std::ptr::copy_nonoverlapping(src, panel.as_mut_ptr(), T::NR);
            } else {
                for (c, v) in panel.iter_mut().enumerate() {
                    *v = if c < cols {
                        *src.offset(c as isize * b.cs)
                    } else {
                        0.0
                    };
                }
            }
            o += T::NR;
        }
    }
}
