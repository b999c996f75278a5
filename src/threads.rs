//! How many threads tensor work uses, decided once.
//!
//! candle asks for its thread count at every matrix product and, unless `RAYON_NUM_THREADS` is set,
//! counts physical cores by reading `/proc/cpuinfo` each time: decoding one token of SmolLM2-135M
//! opened it ~180 times, a quarter of the decoding time. rayon sizes its pool from the same variable.

/// Sets `RAYON_NUM_THREADS` to the number of threads the process may run (CPU affinity and cgroup
/// quotas included) when it is not set already. Call it before any thread starts: the `spectra`
/// command does, first thing; a program embedding spectra decides for itself.
pub fn decide_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return;
    }
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
}
