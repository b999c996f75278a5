//! Output folders are checked before any work whose results they would receive: an unwritable folder
//! found only at the end loses an evaluation's or a run's results.

use std::path::Path;

use spectra_core::{Error, Result};

/// Makes `dir` (with its parents) and checks that a file can be written in it.
pub fn prepare(dir: &Path) -> Result<()> {
    prepare_advising(dir, FIX)
}

/// [`prepare`] for a command whose output is set another way: `fix` says how, after "; ".
pub fn prepare_advising(dir: &Path, fix: &str) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::file(dir, format!("cannot create the output folder: {e}{fix}")))?;
    probe(dir, fix)
}

/// An output folder's lock, held by the one process writing there: released when dropped, and by
/// the system when the process ends, however it ends.
pub struct OutputLock {
    _file: std::fs::File,
}

/// Takes `dir`'s lock (`dir/.spectra.lock`, an advisory lock on the file), or refuses when another
/// process holds it: two writers interleave their metrics and reports line by line.
pub fn lock(dir: &Path) -> Result<OutputLock> {
    let path = dir.join(LOCK);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::file(&path, format!("cannot open the output folder's lock: {e}")))?;
    match file.try_lock() {
        Ok(()) => Ok(OutputLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::file(
            dir,
            "another spectra process is writing to this output folder; wait for it to end, or \
             choose another output",
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::file(
            &path,
            format!("cannot lock the output folder: {e}"),
        )),
    }
}

/// The lock file's name inside an output folder.
const LOCK: &str = ".spectra.lock";

/// Checks, creating nothing that stays, that `dir` could be made and written: its nearest existing
/// ancestor must be a folder in which a file can be written.
pub fn check(dir: &Path) -> Result<()> {
    let mut existing = dir;
    while !existing.exists() {
        match existing.parent() {
            Some(p) if !p.as_os_str().is_empty() => existing = p,
            _ => {
                existing = Path::new(".");
                break;
            }
        }
    }
    if !existing.is_dir() {
        return Err(Error::file(
            dir,
            format!(
                "cannot be the output folder: {} is not a folder{FIX}",
                existing.display()
            ),
        ));
    }
    probe(existing, FIX).map_err(|_| {
        Error::file(
            dir,
            format!(
                "cannot be the output folder: {} is not writable{FIX}",
                existing.display()
            ),
        )
    })
}

const FIX: &str = "; choose another output (`output:` in the config, or --output DIR)";

/// Writes and removes a small file in `dir`.
fn probe(dir: &Path, fix: &str) -> Result<()> {
    let path = dir.join(format!(".spectra-write-check-{}", std::process::id()));
    std::fs::write(&path, b"")
        .map_err(|e| Error::file(dir, format!("cannot write in the output folder: {e}{fix}")))?;
    std::fs::remove_file(&path).ok();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_under_a_file_is_refused_before_anything_is_made() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, "x").unwrap();
        let inside = file.join("out");
        let e = check(&inside).unwrap_err().to_string();
        assert!(
            e.contains("is not a folder") && e.contains("--output"),
            "{e}"
        );
        assert!(prepare(&inside).is_err());
        let fine = dir.path().join("new/deeper");
        check(&fine).unwrap();
        assert!(!fine.exists(), "check makes nothing");
        prepare(&fine).unwrap();
        assert!(fine.is_dir());
        assert_eq!(
            std::fs::read_dir(&fine).unwrap().count(),
            0,
            "the probe is removed"
        );
    }
}
