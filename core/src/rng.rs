//! The one seeded RNG type spectra uses, so that a run's randomness can be checkpointed and resumed.

use rand::SeedableRng;

/// ChaCha8: reproducible across platforms, and its full state (seed, stream, word position) can be
/// written to a checkpoint and restored.
pub type SpectraRng = rand_chacha::ChaCha8Rng;

/// A generator for one purpose (`stream`) derived from the experiment's seed, so that adding a consumer
/// of randomness in one place does not shift the numbers drawn in another.
pub fn derived_rng(seed: u64, stream: u64) -> SpectraRng {
    let mut rng = SpectraRng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}
