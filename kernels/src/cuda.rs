//! The CUDA C of spectra's fused kernels (`kernels/cuda/*.cu`), compiled at run time by NVRTC
//! (`spectra_core::ops::nvrtc`). NVRTC is given no include path, so each module's source is the
//! shared prelude (`cuda/prelude.cuh`: correctly rounded arithmetic, `u64`, the grid-stride loop)
//! followed by its own file. `scripts/check-cuda.sh` compiles every module with nvcc, so that a
//! mistake in one is found without a GPU, and tests/emulated_kernels.rs runs every module on the CPU
//! (HIP-CPU) against the ops' CPU paths.

macro_rules! module {
    ($file:literal) => {
        concat!(
            include_str!("../cuda/prelude.cuh"),
            include_str!(concat!("../cuda/", $file))
        )
    };
}

/// AdamW's update (weight, gradient and both moments in; weight and moments out).
pub const ADAMW: &str = module!("adamw.cu");
/// Muon's momentum (and Nesterov look-ahead) with the partial sums of the update's squared norm.
pub const MUON_MOMENTUM: &str = module!("muon_momentum.cu");
/// The per-head top-k that KV policies keep.
pub const KEEP_TOP_K: &str = module!("keep_top_k.cu");
/// SnapKV's votes of the observation window and their pooling.
pub const SNAP_KV_VOTES: &str = module!("snap_kv_votes.cu");
/// TriAttention's key scores.
pub const TRI_ATTENTION_KEY_SCORES: &str = module!("tri_attention_key_scores.cu");
/// TriAttention's score normalisation and reduction.
pub const TRI_ATTENTION_FINISH: &str = module!("tri_attention_finish.cu");

/// Every module, by the file that holds it.
pub const MODULES: [(&str, &str); 6] = [
    ("adamw.cu", ADAMW),
    ("muon_momentum.cu", MUON_MOMENTUM),
    ("keep_top_k.cu", KEEP_TOP_K),
    ("snap_kv_votes.cu", SNAP_KV_VOTES),
    ("tri_attention_key_scores.cu", TRI_ATTENTION_KEY_SCORES),
    ("tri_attention_finish.cu", TRI_ATTENTION_FINISH),
];

#[cfg(test)]
mod tests {
    use super::MODULES;

    /// Every `.cu` file is a module, and every module starts with the prelude.
    #[test]
    fn every_file_is_a_module_with_the_prelude() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cuda");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|f| f.ends_with(".cu"))
            .collect();
        files.sort();
        let mut named: Vec<String> = MODULES.iter().map(|(f, _)| f.to_string()).collect();
        named.sort();
        assert_eq!(files, named);
        let prelude = std::fs::read_to_string(dir.join("prelude.cuh")).unwrap();
        for (file, source) in MODULES {
            assert!(source.starts_with(&prelude), "{file}");
            assert!(source.contains("extern \"C\" __global__"), "{file}");
        }
    }
}
