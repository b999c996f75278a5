//! The launch geometry of the fused CUDA kernels. Computed without the `cuda` feature, so that the
//! kernels run on the CPU under emulation (tests/emulated_kernels.rs) with the grids the GPU path
//! launches.

/// Threads per block of the elementwise kernels; their reductions' shared arrays are sized for it.
pub const BLOCK: u32 = 256;
/// At most this many blocks: the kernels loop over the rest (grid-stride), and a reduction's
/// per-block partial sums stay few enough to add up in one more pass.
pub const MAX_BLOCKS: u32 = 1024;

/// A one-dimensional launch: `blocks` blocks of `threads` threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid {
    pub blocks: u32,
    pub threads: u32,
}

/// One thread per element up to [`MAX_BLOCKS`] blocks of [`BLOCK`].
pub fn elementwise(n: usize) -> Grid {
    grid_stride(n, BLOCK)
}

/// One thread per element up to [`MAX_BLOCKS`] blocks of `threads`; the kernel loops over the
/// rest.
pub fn grid_stride(n: usize, threads: u32) -> Grid {
    blocks_of(
        n.div_ceil(threads as usize).clamp(1, MAX_BLOCKS as usize),
        threads,
    )
}

/// `blocks` blocks of `threads` each (one per row, head or tile).
pub fn blocks_of(blocks: usize, threads: u32) -> Grid {
    Grid {
        blocks: blocks as u32,
        threads,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grid_stride_launch_covers_every_element_with_at_most_max_blocks() {
        for n in [0, 1, 255, 256, 257, 262_144, 262_145, 10_000_000] {
            let grid = elementwise(n);
            assert_eq!(grid.threads, BLOCK);
            assert!((1..=MAX_BLOCKS).contains(&grid.blocks), "{n}: {grid:?}");
            let covered = grid.blocks as usize * BLOCK as usize;
            assert!(covered >= n || grid.blocks == MAX_BLOCKS, "{n}: {grid:?}");
        }
    }
}
