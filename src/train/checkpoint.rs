//! Checkpoints in safetensors: weights, optimizer state, constraint state, the constraint RNG and the
//! step, written atomically (temporary file, fsync, rename) so that a crash mid-write leaves the
//! previous checkpoint intact.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use spectra_core::{Error, Result, SpectraRng};

/// The file name inside a run's output folder.
pub const FILE_NAME: &str = "checkpoint.safetensors";
const FORMAT: &str = "spectra-train-checkpoint-1";

/// Everything needed to continue a run exactly where it stopped.
#[derive(Debug)]
pub struct Checkpoint {
    /// Optimizer steps completed: the next step to run.
    pub step: u64,
    /// `param/NAME`, `optim/GROUP/KEY`, `constraint/GROUP/INDEX/PARAM/KEY`.
    pub tensors: HashMap<String, Tensor>,
    pub rng: SpectraRng,
    /// What the run must agree with to resume from it (model, data and groups, as RON).
    pub fingerprint: String,
}

pub fn path_in(output: &Path) -> PathBuf {
    output.join(FILE_NAME)
}

/// Writes `checkpoint` to `path` atomically.
pub fn save(path: &Path, checkpoint: &Checkpoint) -> Result<()> {
    let rng = &checkpoint.rng;
    let metadata = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("step".to_string(), checkpoint.step.to_string()),
        (
            "rng_seed".to_string(),
            rng.get_seed().iter().map(|b| format!("{b:02x}")).collect(),
        ),
        ("rng_stream".to_string(), rng.get_stream().to_string()),
        ("rng_word_pos".to_string(), rng.get_word_pos().to_string()),
        ("fingerprint".to_string(), checkpoint.fingerprint.clone()),
    ]);
    let mut sorted: Vec<(&String, &Tensor)> = checkpoint.tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let bytes = safetensors::serialize(sorted, Some(metadata))
        .map_err(|e| Error::file(path, format!("cannot serialize the checkpoint: {e}")))?;
    let tmp = path.with_extension("safetensors.tmp");
    let io = |e: std::io::Error| Error::file(path, format!("cannot write the checkpoint: {e}"));
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(&bytes)?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        // A full disk leaves a partial file: it is no checkpoint, and it holds the space.
        std::fs::remove_file(&tmp).ok();
        return Err(io(e));
    }
    // The rename itself is durable only once the folder's entry is on disk.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    Ok(())
}

/// Reads a checkpoint written by `save`, its tensors on `device`.
pub fn load(path: &Path, device: &Device) -> Result<Checkpoint> {
    let bytes = std::fs::read(path).map_err(|e| {
        Error::file(
            path,
            format!("cannot read the checkpoint ({e}); run without --resume to start afresh"),
        )
    })?;
    let bad = |what: &str| Error::file(path, format!("not a spectra training checkpoint: {what}"));
    let (_, header) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(&e.to_string()))?;
    let meta = header
        .metadata()
        .clone()
        .ok_or_else(|| bad("no metadata"))?;
    let get = |key: &str| {
        meta.get(key)
            .ok_or_else(|| bad(&format!("no `{key}` entry")))
    };
    if get("format")? != FORMAT {
        return Err(bad(&format!(
            "format `{}`, expected `{FORMAT}`",
            get("format")?
        )));
    }
    let step = get("step")?
        .parse()
        .map_err(|_| bad("step is not a number"))?;
    let seed_hex = get("rng_seed")?;
    if seed_hex.len() != 64 {
        return Err(bad("rng_seed is not 32 bytes"));
    }
    let mut seed = [0u8; 32];
    for (i, byte) in seed.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&seed_hex[2 * i..2 * i + 2], 16)
            .map_err(|_| bad("rng_seed is not hex"))?;
    }
    let mut rng = SpectraRng::from_seed(seed);
    rng.set_stream(
        get("rng_stream")?
            .parse()
            .map_err(|_| bad("rng_stream is not a number"))?,
    );
    rng.set_word_pos(
        get("rng_word_pos")?
            .parse()
            .map_err(|_| bad("rng_word_pos is not a number"))?,
    );
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)?;
    Ok(Checkpoint {
        step,
        tensors,
        rng,
        fingerprint: get("fingerprint")?.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn round_trip_keeps_tensors_step_and_rng_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        let mut rng = spectra_core::rng::derived_rng(5, 2);
        let _: u64 = rng.random();
        let t = Tensor::new(&[[1f32, -2.0], [3.5, f32::MIN_POSITIVE]], &Device::Cpu).unwrap();
        let ck = Checkpoint {
            step: 17,
            tensors: HashMap::from([("param/w".to_string(), t.clone())]),
            rng: rng.clone(),
            fingerprint: "model".into(),
        };
        save(&path, &ck).unwrap();
        let back = load(&path, &Device::Cpu).unwrap();
        assert_eq!(back.step, 17);
        assert_eq!(back.fingerprint, "model");
        assert_eq!(
            back.tensors["param/w"].to_vec2::<f32>().unwrap(),
            t.to_vec2::<f32>().unwrap()
        );
        let (mut a, mut b) = (rng, back.rng);
        assert_eq!(a.random::<u64>(), b.random::<u64>());
        assert!(!path.with_extension("safetensors.tmp").exists());
    }

    /// A write that fails part way (here the final rename, onto a folder in the way) leaves no partial
    /// file behind.
    #[test]
    fn a_failed_write_leaves_no_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("in-the-way"), b"x").unwrap();
        let ck = Checkpoint {
            step: 1,
            tensors: HashMap::from([(
                "param/w".to_string(),
                Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap(),
            )]),
            rng: spectra_core::rng::derived_rng(0, 0),
            fingerprint: "model".into(),
        };
        let err = save(&path, &ck).unwrap_err().to_string();
        assert!(err.contains("cannot write the checkpoint"), "{err}");
        assert!(!path.with_extension("safetensors.tmp").exists());
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        std::fs::write(&path, b"not a checkpoint").unwrap();
        let err = load(&path, &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("not a spectra training checkpoint"), "{err}");
    }
}
