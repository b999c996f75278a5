//! Parallel sections for decoding, whose matrix-vector products take 30–3000 µs each, hundreds per
//! token. Waking a sleeping thread costs about as long as a product on these machines: with rayon's
//! pool, whose idle workers fall asleep within microseconds, two threads decoded SmolLM2-135M no
//! faster than one. This pool's helpers spin between sections and park only after a millisecond
//! without work, as llama.cpp's threads do.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// How long a helper spins without work before it parks.
const SPIN: Duration = Duration::from_millis(1);

/// A section: `f(part, parts)`.
type Section<'a> = &'a (dyn Fn(usize, usize) + Sync);

/// Runs `f(part, parts)` for every `part` in `0..parts`, where `parts` is the pool's thread count (the
/// caller's thread and the helpers): part 0 on the calling thread, the others on the helpers, each
/// exactly once. When another thread is using the pool, every part runs on the calling thread.
pub fn run_parts(f: impl Fn(usize, usize) + Sync) {
    let pool = pool();
    let parts = parts();
    let Ok(mut generation) = pool.submit.try_lock() else {
        (0..parts).for_each(|p| f(p, parts));
        return;
    };
    if parts == 1 {
        f(0, 1);
        return;
    }
    *generation += 1;
    let g = *generation;
    let section: Section<'_> = &f;
    // SAFETY: helpers read the section only after seeing generation `g` below, and `Wait` keeps the
    // caller here (so `f` alive) until every helper has finished it, even if part 0 panics.
    unsafe {
        *pool.section.0.get() = Some(std::mem::transmute::<Section<'_>, Section<'static>>(
            section,
        ));
    }
    for helper in &pool.helpers {
        helper.generation.store(g, Ordering::SeqCst);
        if helper.parked.load(Ordering::SeqCst) {
            helper.thread.unpark();
        }
    }
    let wait = Wait {
        pool,
        generation: g,
    };
    f(0, parts);
    drop(wait);
    if pool
        .helpers
        .iter()
        .any(|h| h.panicked.swap(false, Ordering::SeqCst))
    {
        panic!("a part of a parallel section panicked on a helper thread");
    }
}

/// How many parts every section has: the pool's threads.
pub fn parts() -> usize {
    pool().helpers.len() + 1
}

/// A buffer that the parts of a section write at disjoint elements.
#[derive(Clone, Copy)]
pub struct DisjointWrites(*mut f32);

// SAFETY: parts write disjoint elements of a buffer that outlives the section (see `at`).
unsafe impl Send for DisjointWrites {}
unsafe impl Sync for DisjointWrites {}

impl DisjointWrites {
    pub fn new(buffer: &mut [f32]) -> Self {
        DisjointWrites(buffer.as_mut_ptr())
    }

    /// # Safety
    /// `i` must be inside the buffer, the buffer must outlive the section, and no other thread may
    /// access element `i` meanwhile.
    pub unsafe fn at(self, i: usize) -> *mut f32 {
        self.0.add(i)
    }
}

/// Waits, when dropped, until every helper has finished generation `generation`.
struct Wait {
    pool: &'static Pool,
    generation: usize,
}

impl Drop for Wait {
    fn drop(&mut self) {
        for helper in &self.pool.helpers {
            let mut spins = 0u32;
            while helper.done.load(Ordering::Acquire) != self.generation {
                spins = spins.wrapping_add(1);
                if spins.is_multiple_of(256) {
                    // The helper may be waiting for this core.
                    thread::yield_now();
                }
                std::hint::spin_loop();
            }
        }
    }
}

struct Pool {
    /// Held while a section runs; counts sections.
    submit: Mutex<usize>,
    section: SectionSlot,
    helpers: Vec<Helper>,
}

/// The running section, written only while no helper runs one.
struct SectionSlot(UnsafeCell<Option<Section<'static>>>);

// SAFETY: written by the submitting thread (holding `submit`) before it publishes a generation, read
// by helpers after they see it; see `run_parts`.
unsafe impl Sync for SectionSlot {}

struct Helper {
    /// The last section submitted to this helper, and the last it finished.
    generation: AtomicUsize,
    done: AtomicUsize,
    parked: AtomicBool,
    panicked: AtomicBool,
    thread: Thread,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let count = rayon::current_num_threads().saturating_sub(1);
        let helpers = (0..count)
            .map(|index| {
                let thread = thread::Builder::new()
                    .name(format!("spectra-decode-{}", index + 1))
                    .spawn(move || work(index))
                    .expect("spawning a decoding thread")
                    .thread()
                    .clone();
                Helper {
                    generation: AtomicUsize::new(0),
                    done: AtomicUsize::new(0),
                    parked: AtomicBool::new(false),
                    panicked: AtomicBool::new(false),
                    thread,
                }
            })
            .collect();
        Pool {
            submit: Mutex::new(0),
            section: SectionSlot(UnsafeCell::new(None)),
            helpers,
        }
    })
}

/// Helper `index`'s loop: wait for a section, run part `index + 1`, say it is done.
fn work(index: usize) {
    let pool = pool();
    let me = &pool.helpers[index];
    let mut seen = 0;
    loop {
        let mut idle_since = Instant::now();
        let mut spins = 0u32;
        let g = loop {
            let g = me.generation.load(Ordering::Acquire);
            if g != seen {
                break g;
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(256) {
                if idle_since.elapsed() > SPIN {
                    me.parked.store(true, Ordering::SeqCst);
                    if me.generation.load(Ordering::SeqCst) == seen {
                        thread::park();
                    }
                    me.parked.store(false, Ordering::SeqCst);
                    idle_since = Instant::now();
                } else {
                    // Leaves the core to any other runnable thread (rayon's, another process's).
                    thread::yield_now();
                }
            }
            std::hint::spin_loop();
        };
        seen = g;
        // SAFETY: the submitter wrote the section before publishing `g`, and waits for `done == g`.
        let section = unsafe { (*pool.section.0.get()).expect("a section is set") };
        let parts = pool.helpers.len() + 1;
        if catch_unwind(AssertUnwindSafe(|| section(index + 1, parts))).is_err() {
            me.panicked.store(true, Ordering::SeqCst);
        }
        me.done.store(g, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_runs_once_per_section() {
        let counts: Vec<AtomicUsize> = (0..64).map(|_| AtomicUsize::new(0)).collect();
        for _ in 0..2000 {
            run_parts(|part, parts| {
                assert!(part < parts);
                counts[part].fetch_add(1, Ordering::Relaxed);
            });
        }
        let parts = pool().helpers.len() + 1;
        for (p, c) in counts.iter().enumerate() {
            let expected = if p < parts { 2000 } else { 0 };
            assert_eq!(c.load(Ordering::Relaxed), expected, "part {p}");
        }
    }

    #[test]
    fn sections_from_several_threads_all_complete() {
        let total = AtomicUsize::new(0);
        thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..500 {
                        run_parts(|_, parts| {
                            total.fetch_add(1, Ordering::Relaxed);
                            let _ = parts;
                        });
                    }
                });
            }
        });
        let parts = pool().helpers.len() + 1;
        assert_eq!(total.load(Ordering::Relaxed), 4 * 500 * parts);
    }
}
