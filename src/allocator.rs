//! How the process allocator treats the large, short-lived buffers of tensor work.
//!
//! candle allocates a fresh buffer for every op's output. glibc serves blocks above its mmap threshold
//! (32 MiB at most) with their own mappings and unmaps them when freed, so the next op faults in and
//! zeroes the same pages again: a CPU training step of the paper's Shakespeare GPT (batch 64 × 256)
//! took 7.6 s that way and 5.4 s with the blocks reused. Serving every block from the heap and never
//! trimming it makes the freed buffers reusable; the process keeps its peak memory until it exits.

/// Keeps freed memory in the process for reuse (glibc on Linux; elsewhere nothing changes). The
/// `spectra` command calls it first thing; a program embedding spectra decides for itself.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters, under the allocator's own locks; an option
    // glibc refuses stays at its default, which is correct, only slower.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}
