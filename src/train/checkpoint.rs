//! Checkpoints in safetensors: weights, optimizer state, constraint state, the constraint RNG and the
//! step, written atomically (temporary file, fsync, rename) so that a crash mid-write leaves the
//! previous checkpoint intact. Every tensor and the metadata carry a CRC-32, checked on load: a
//! damaged file is refused, naming the damaged entry, and the checkpoint before it is kept beside it.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use safetensors::View;
use spectra_core::{Error, Param, Result, SpectraRng};

/// The file name inside a run's output folder.
pub const FILE_NAME: &str = "checkpoint.safetensors";
/// The checkpoint before the latest, kept in case the latest is damaged.
pub const PREVIOUS_FILE_NAME: &str = "checkpoint.previous.safetensors";
const FORMAT: &str = "spectra-train-checkpoint-2";
/// Written before checksums existed: loaded without them.
const FORMAT_UNCHECKED: &str = "spectra-train-checkpoint-1";
/// Metadata keys: one checksum per tensor, and one over every other metadata entry.
const TENSOR_CHECKSUM: &str = "crc32/";
const METADATA_CHECKSUM: &str = "crc32_metadata";

/// Everything needed to continue a run exactly where it stopped.
#[derive(Debug)]
pub struct Checkpoint {
    /// Optimizer steps completed: the next step to run.
    pub step: u64,
    /// `param/NAME`, `optim/GROUP/KEY`, `constraint/GROUP/INDEX/PARAM/KEY` ([`param_key`],
    /// [`optimizer_prefix`], [`constraint_prefix`]).
    pub tensors: HashMap<String, Tensor>,
    pub rng: SpectraRng,
    /// What the run must agree with to resume from it (model, data and groups, as RON).
    pub fingerprint: String,
    /// What the run was set to do; `None` in checkpoints written before it was recorded.
    pub plan: Option<RunPlan>,
}

/// What a run was set to do, so that a resumed run does the same: its learning-rate schedule spans
/// `steps`, and its evaluations read `eval_windows` validation windows (all of them when `None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunPlan {
    pub steps: u64,
    pub eval_windows: Option<usize>,
}

/// The key of parameter `name`'s values.
pub fn param_key(name: &str) -> String {
    format!("param/{name}")
}

/// What every key of group `group`'s optimizer state starts with.
pub fn optimizer_prefix(group: &str) -> String {
    format!("optim/{group}/")
}

/// What every key of the state of group `group`'s constraint number `index` for parameter `param`
/// starts with.
pub fn constraint_prefix(group: &str, index: usize, param: &str) -> String {
    format!("constraint/{group}/{index}/{param}/")
}

pub fn path_in(output: &Path) -> PathBuf {
    output.join(FILE_NAME)
}

/// Where the checkpoint before the one at `path` is kept.
pub fn previous_of(path: &Path) -> PathBuf {
    path.with_file_name(PREVIOUS_FILE_NAME)
}

/// A tensor's checksum: its dtype, shape and bytes, as stored.
fn tensor_checksum(dtype: safetensors::Dtype, shape: &[usize], data: &[u8]) -> String {
    let mut h = crc32fast::Hasher::new();
    h.update(format!("{dtype:?}{shape:?}").as_bytes());
    h.update(data);
    format!("{:08x}", h.finalize())
}

/// The checksum of every metadata entry but its own, in key order.
fn metadata_checksum(metadata: &HashMap<String, String>) -> String {
    let mut entries: Vec<_> = metadata
        .iter()
        .filter(|(k, _)| k.as_str() != METADATA_CHECKSUM)
        .collect();
    entries.sort();
    let mut h = crc32fast::Hasher::new();
    for (k, v) in entries {
        // Lengths first: no two different lists of entries hash the same bytes.
        h.update(&(k.len() as u64).to_le_bytes());
        h.update(k.as_bytes());
        h.update(&(v.len() as u64).to_le_bytes());
        h.update(v.as_bytes());
    }
    format!("{:08x}", h.finalize())
}

/// Writes `checkpoint` to `path` atomically; the checkpoint that was there moves to
/// [`previous_of`]`(path)`.
pub fn save(path: &Path, checkpoint: &Checkpoint) -> Result<()> {
    let rng = &checkpoint.rng;
    let mut metadata = HashMap::from([
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
    if let Some(plan) = checkpoint.plan {
        metadata.insert("plan_steps".to_string(), plan.steps.to_string());
        metadata.insert(
            "plan_eval_windows".to_string(),
            plan.eval_windows
                .map_or_else(|| "all".to_string(), |w| w.to_string()),
        );
    }
    let mut sorted: Vec<(&String, &Tensor)> = checkpoint.tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    for (name, t) in &sorted {
        metadata.insert(
            format!("{TENSOR_CHECKSUM}{name}"),
            tensor_checksum(t.dtype(), t.shape(), &t.data()),
        );
    }
    metadata.insert(METADATA_CHECKSUM.to_string(), metadata_checksum(&metadata));
    let bytes = safetensors::serialize(sorted, Some(metadata))
        .map_err(|e| Error::file(path, format!("cannot serialize the checkpoint: {e}")))?;
    let tmp = path.with_extension("safetensors.tmp");
    let io = |e: std::io::Error| Error::file(path, format!("cannot write the checkpoint: {e}"));
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(&bytes)?;
        f.sync_all()
    });
    let keep_previous = || match std::fs::rename(path, previous_of(path)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    };
    // Between the two renames a crash leaves only the previous checkpoint, which `--resume` names.
    if let Err(e) = written
        .and_then(|()| keep_previous())
        .and_then(|()| std::fs::rename(&tmp, path))
    {
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

impl Checkpoint {
    /// Sets every parameter of `params` to its tensor here; a missing one, or one of another
    /// shape, is an error naming it (`path` names the file).
    pub fn restore_params(&self, params: &[Param], path: &Path) -> Result<()> {
        for p in params {
            let key = param_key(&p.name);
            let t = self
                .tensors
                .get(&key)
                .ok_or_else(|| Error::file(path, format!("the checkpoint has no `{key}`")))?;
            if t.shape() != p.var.shape() {
                return Err(Error::file(
                    path,
                    format!(
                        "`{key}` has shape {:?}, the model {:?}",
                        t.shape(),
                        p.var.shape()
                    ),
                ));
            }
            p.var.set(t)?;
        }
        Ok(())
    }
}

/// Reads a checkpoint written by `save`, its tensors on `device`.
pub fn load(path: &Path, device: &Device) -> Result<Checkpoint> {
    let bytes = std::fs::read(path).map_err(|e| {
        Error::file(
            path,
            format!("cannot read the checkpoint ({e}); {}", afresh(path)),
        )
    })?;
    from_bytes(&bytes, device).map_err(|what| {
        Error::file(
            path,
            format!(
                "damaged, or not a spectra training checkpoint: {what}; {}",
                previous_hint(path)
            ),
        )
    })
}

/// A checkpoint from a file's bytes, or what is wrong with them.
fn from_bytes(bytes: &[u8], device: &Device) -> std::result::Result<Checkpoint, String> {
    let bad = |what: &str| what.to_string();
    let file = safetensors::SafeTensors::deserialize(bytes).map_err(|e| bad(&e.to_string()))?;
    let (_, header) =
        safetensors::SafeTensors::read_metadata(bytes).map_err(|e| bad(&e.to_string()))?;
    let meta = header
        .metadata()
        .clone()
        .ok_or_else(|| bad("no metadata"))?;
    let get = |key: &str| {
        meta.get(key)
            .ok_or_else(|| bad(&format!("no `{key}` entry")))
    };
    let format = get("format")?.as_str();
    if format != FORMAT && format != FORMAT_UNCHECKED {
        return Err(bad(&format!("format `{format}`, expected `{FORMAT}`")));
    }
    // Checksums present are checked whatever the format says: a damaged format entry must not
    // switch them off.
    if format == FORMAT || meta.contains_key(METADATA_CHECKSUM) {
        verify(&file, &meta).map_err(|damage| bad(&damage))?;
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
    let plan = match meta.get("plan_steps") {
        None => None,
        Some(steps) => Some(RunPlan {
            steps: steps
                .parse()
                .map_err(|_| bad("plan_steps is not a number"))?,
            eval_windows: match get("plan_eval_windows")?.as_str() {
                "all" => None,
                w => Some(
                    w.parse()
                        .map_err(|_| bad("plan_eval_windows is not a number"))?,
                ),
            },
        }),
    };
    let tensors =
        candle_core::safetensors::load_buffer(bytes, device).map_err(|e| bad(&e.to_string()))?;
    Ok(Checkpoint {
        step,
        tensors,
        rng,
        fingerprint: get("fingerprint")?.clone(),
        plan,
    })
}

/// The first entry whose checksum does not match, if any, described.
fn verify(
    file: &safetensors::SafeTensors,
    meta: &HashMap<String, String>,
) -> std::result::Result<(), String> {
    if meta.get(METADATA_CHECKSUM) != Some(&metadata_checksum(meta)) {
        return Err(
            "the metadata (step, random-number state, fingerprint) fails its checksum".into(),
        );
    }
    let names = file.names();
    let stored = meta.keys().filter_map(|k| k.strip_prefix(TENSOR_CHECKSUM));
    if let Some(lost) = stored.into_iter().find(|n| !names.contains(n)) {
        return Err(format!("tensor `{lost}` is missing"));
    }
    for name in names {
        let damaged = || format!("tensor `{name}` fails its checksum");
        let view = file.tensor(name).map_err(|_| damaged())?;
        let want = meta.get(&format!("{TENSOR_CHECKSUM}{name}"));
        if want != Some(&tensor_checksum(view.dtype(), view.shape(), view.data())) {
            return Err(damaged());
        }
    }
    Ok(())
}

/// What to do about a damaged checkpoint at `path`: use the previous one, if it is there.
fn previous_hint(path: &Path) -> String {
    let previous = previous_of(path);
    if !previous.exists() {
        return format!("no earlier checkpoint is kept; {}", afresh(path));
    }
    // Advice to move a damaged file into place would only lead to the same error.
    let intact = std::fs::read(&previous)
        .map_err(|e| e.to_string())
        .and_then(|bytes| from_bytes(&bytes, &Device::Cpu).map(drop));
    match intact {
        Ok(()) => format!(
            "the checkpoint before it is {}: move it to {} to resume from it",
            previous.display(),
            path.display()
        ),
        Err(what) => format!(
            "the checkpoint before it, {}, is damaged too ({what}); {}",
            previous.display(),
            afresh(path)
        ),
    }
}

/// How to start afresh where the checkpoint at `path` cannot be resumed: a run without `--resume`
/// refuses to write over a checkpoint, so the advice names what to move (or another folder).
fn afresh(path: &Path) -> String {
    let folder = path.parent().unwrap_or(Path::new("."));
    format!(
        "to start afresh, train into another folder (--output DIR), or move {} and {} out of {} \
         and run without --resume",
        Path::new(path.file_name().unwrap_or(path.as_os_str())).display(),
        PREVIOUS_FILE_NAME,
        folder.display()
    )
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
            plan: Some(RunPlan {
                steps: 40,
                eval_windows: Some(3),
            }),
        };
        save(&path, &ck).unwrap();
        let back = load(&path, &Device::Cpu).unwrap();
        assert_eq!(back.step, 17);
        assert_eq!(back.fingerprint, "model");
        assert_eq!(back.plan, ck.plan);
        assert_eq!(
            back.tensors["param/w"].to_vec2::<f32>().unwrap(),
            t.to_vec2::<f32>().unwrap()
        );
        let (mut a, mut b) = (rng, back.rng);
        assert_eq!(a.random::<u64>(), b.random::<u64>());
        assert!(!path.with_extension("safetensors.tmp").exists());
    }

    /// A write that fails part way (here the move of the checkpoint before it, onto a folder in the
    /// way) leaves no partial file behind, and the checkpoint already there intact.
    #[test]
    fn a_failed_write_leaves_no_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        save(&path, &checkpoint_at(100)).unwrap();
        std::fs::create_dir(previous_of(&path)).unwrap();
        std::fs::write(previous_of(&path).join("in-the-way"), b"x").unwrap();
        let err = save(&path, &checkpoint_at(200)).unwrap_err().to_string();
        assert!(err.contains("cannot write the checkpoint"), "{err}");
        assert!(!path.with_extension("safetensors.tmp").exists());
        assert_eq!(load(&path, &Device::Cpu).unwrap().step, 100);
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        std::fs::write(&path, b"not a checkpoint").unwrap();
        let err = load(&path, &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("not a spectra training checkpoint"), "{err}");
        assert!(err.contains("no earlier checkpoint is kept"), "{err}");
    }

    fn checkpoint_at(step: u64) -> Checkpoint {
        let values: Vec<f32> = (0..4096).map(|i| (i as f32 * 0.37).sin()).collect();
        Checkpoint {
            step,
            tensors: HashMap::from([
                (
                    "param/w".to_string(),
                    Tensor::from_vec(values, (64, 64), &Device::Cpu).unwrap(),
                ),
                (
                    "optim/g/m".to_string(),
                    Tensor::new(&[0.5f32, 0.25], &Device::Cpu).unwrap(),
                ),
            ]),
            rng: spectra_core::rng::derived_rng(3, 1),
            plan: None,
            fingerprint: "model".into(),
        }
    }

    /// The file's bytes with `f` applied, written back.
    fn damage(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
        let mut bytes = std::fs::read(path).unwrap();
        f(&mut bytes);
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn each_save_keeps_the_checkpoint_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        save(&path, &checkpoint_at(100)).unwrap();
        assert!(!previous_of(&path).exists());
        save(&path, &checkpoint_at(200)).unwrap();
        save(&path, &checkpoint_at(300)).unwrap();
        assert_eq!(load(&path, &Device::Cpu).unwrap().step, 300);
        assert_eq!(load(&previous_of(&path), &Device::Cpu).unwrap().step, 200);
    }

    /// Sixteen bytes flipped in the middle of the file (inside `param/w`'s data) resumed silently
    /// before checksums; now the damaged tensor is named, and the previous checkpoint offered.
    #[test]
    fn flipped_bytes_in_a_tensor_are_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        save(&path, &checkpoint_at(100)).unwrap();
        save(&path, &checkpoint_at(200)).unwrap();
        damage(&path, |b| {
            let mid = b.len() / 2;
            b[mid..mid + 16].iter_mut().for_each(|x| *x ^= 0xA5);
        });
        let err = load(&path, &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("tensor `param/w` fails its checksum"), "{err}");
        assert!(err.contains(PREVIOUS_FILE_NAME), "{err}");
        // One bit is enough.
        save(&path, &checkpoint_at(200)).unwrap();
        damage(&path, |b| {
            let last = b.len() - 1;
            b[last] ^= 1;
        });
        let err = load(&path, &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("fails its checksum"), "{err}");
    }

    /// With the checkpoint before it damaged too, the advice is to start afresh, not to move a
    /// damaged file into place (which used to be offered, and led to the same error).
    #[test]
    fn both_damaged_advises_starting_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        save(&path, &checkpoint_at(100)).unwrap();
        save(&path, &checkpoint_at(200)).unwrap();
        damage(&previous_of(&path), |b| b.truncate(b.len() / 2));
        damage(&path, |b| b[12] = b'#');
        let err = load(&path, &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("is damaged too"), "{err}");
        assert!(err.contains("to start afresh"), "{err}");
        assert!(!err.contains("to resume from it"), "{err}");
    }

    /// A metadata value changed in place (the step, same length, so the header still parses) is
    /// caught by the metadata's own checksum.
    #[test]
    fn a_changed_metadata_entry_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        save(&path, &checkpoint_at(100)).unwrap();
        damage(&path, |b| {
            let key = br#""step":"1"#;
            let at = b
                .windows(key.len())
                .position(|w| w == key)
                .expect("the step entry");
            b[at + key.len() - 1] = b'9';
        });
        let err = load(&path, &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("the metadata"), "{err}");
        assert!(err.contains("no earlier checkpoint is kept"), "{err}");
    }

    /// A format entry damaged into the format before checksums does not switch them off.
    #[test]
    fn a_format_entry_damaged_into_the_old_one_keeps_the_checks() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        save(&path, &checkpoint_at(100)).unwrap();
        damage(&path, |b| {
            let at = b
                .windows(FORMAT.len())
                .position(|w| w == FORMAT.as_bytes())
                .unwrap();
            b[at + FORMAT.len() - 1] = b'1';
        });
        let err = load(&path, &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("the metadata"), "{err}");
    }

    /// A damaged header (its JSON no longer parses) is refused as damaged.
    #[test]
    fn a_damaged_header_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        save(&path, &checkpoint_at(100)).unwrap();
        damage(&path, |b| b[12] = b'#');
        let err = load(&path, &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("damaged"), "{err}");
    }
}
