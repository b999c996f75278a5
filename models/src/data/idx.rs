//! IDX image files (the MNIST layout): `train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`,
//! `t10k-images-idx3-ubyte[.gz]`, `t10k-labels-idx1-ubyte[.gz]`. The test set validates.
//! Pixels are divided by 255, nothing else, as the paper's code does (docs/lipschitz.md §8.2).

use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use spectra_core::{Error, Result};

use super::{read_data_file, step_rng, Batch, Dataset, InputKind};

const HOW_TO_GET: &str = "Fashion-MNIST comes with Debian's `dataset-fashion-mnist` package: \
     `apt-get install dataset-fashion-mnist` puts it in /usr/share/datasets/fashion-mnist/ \
     (`scripts/get-data.sh` checks for it)";

/// Images as u8 rows of `pixels`, and their labels.
#[derive(Clone, Debug)]
pub struct ImageSet {
    pub pixels: usize,
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
}

impl ImageSet {
    fn len(&self) -> usize {
        self.labels.len()
    }
}

pub struct IdxImages {
    dir: PathBuf,
    train: ImageSet,
    test: ImageSet,
    classes: usize,
}

impl IdxImages {
    pub fn open(dir: &Path) -> Result<Self> {
        let train = load_pair(dir, "train")?;
        let test = load_pair(dir, "t10k")?;
        if train.pixels != test.pixels {
            return Err(Error::file(
                dir,
                format!(
                    "train images have {} pixels, test images {}",
                    train.pixels, test.pixels
                ),
            ));
        }
        let classes = train
            .labels
            .iter()
            .chain(&test.labels)
            .copied()
            .max()
            .map_or(0, |m| m as usize + 1);
        Ok(IdxImages {
            dir: dir.to_path_buf(),
            train,
            test,
            classes,
        })
    }

    pub fn sizes(&self) -> (usize, usize) {
        (self.train.len(), self.test.len())
    }

    fn batch(&self, set: &ImageSet, indices: &[usize], device: &Device) -> Result<Batch> {
        let mut x = Vec::with_capacity(indices.len() * set.pixels);
        for &i in indices {
            x.extend(
                set.images[i * set.pixels..(i + 1) * set.pixels]
                    .iter()
                    .map(|&p| p as f32 / 255.0),
            );
        }
        let y: Vec<u32> = indices.iter().map(|&i| set.labels[i] as u32).collect();
        Ok(Batch {
            inputs: Tensor::from_vec(x, (indices.len(), set.pixels), device)?,
            targets: Tensor::from_vec(y, indices.len(), device)?,
        })
    }
}

impl Dataset for IdxImages {
    fn input_kind(&self) -> InputKind {
        InputKind::Images {
            pixels: self.train.pixels,
            classes: self.classes,
        }
    }

    /// Epochs of a fresh shuffle each (seeded by the run's seed and the epoch), last partial batch dropped.
    fn train_batch(
        &self,
        seed: u64,
        step: u64,
        batch_size: usize,
        device: &Device,
    ) -> Result<Batch> {
        let n = self.train.len();
        if batch_size > n {
            return Err(Error::invalid(
                "batch_size",
                format!("{batch_size} is larger than the {n} training images"),
            ));
        }
        let per_epoch = (n / batch_size) as u64;
        let (epoch, index) = (step / per_epoch, (step % per_epoch) as usize);
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut step_rng(seed, epoch));
        self.batch(
            &self.train,
            &order[index * batch_size..(index + 1) * batch_size],
            device,
        )
    }

    fn validation_items(&self) -> usize {
        self.test.len()
    }

    fn validation_batch(&self, start: usize, count: usize, device: &Device) -> Result<Batch> {
        let indices: Vec<usize> = (start..start + count).collect();
        self.batch(&self.test, &indices, device)
    }

    fn targets_per_item(&self) -> usize {
        1
    }

    fn describe_validation(&self) -> String {
        format!("the test images of {}", self.dir.display())
    }
}

/// Reads `{prefix}-images-idx3-ubyte` and `{prefix}-labels-idx1-ubyte`, each optionally gzipped.
fn load_pair(dir: &Path, prefix: &str) -> Result<ImageSet> {
    let images_path = find(dir, &format!("{prefix}-images-idx3-ubyte"));
    let labels_path = find(dir, &format!("{prefix}-labels-idx1-ubyte"));
    let (pixels, images) = read_idx_images(&images_path)?;
    let labels = read_idx_labels(&labels_path)?;
    if images.len() / pixels != labels.len() {
        return Err(Error::file(
            &labels_path,
            format!(
                "{} labels for {} images in {}",
                labels.len(),
                images.len() / pixels,
                images_path.display()
            ),
        ));
    }
    Ok(ImageSet {
        pixels,
        images,
        labels,
    })
}

/// The gzipped file when it exists, else the plain one (whose absence the reader reports).
fn find(dir: &Path, name: &str) -> PathBuf {
    let gz = dir.join(format!("{name}.gz"));
    if gz.exists() {
        gz
    } else {
        dir.join(name)
    }
}

fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = read_data_file(path, HOW_TO_GET)?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| Error::file(path, format!("corrupt gzip data ({e}); {HOW_TO_GET}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// The header's dimensions after checking the magic number (`0x0000 08 <rank>`: unsigned bytes).
fn header(path: &Path, bytes: &[u8], rank: usize) -> Result<Vec<usize>> {
    let malformed = |what: String| {
        Error::file(
            path,
            format!("not an IDX file of rank {rank}: {what}; {HOW_TO_GET}"),
        )
    };
    if bytes.len() < 4 + 4 * rank {
        return Err(malformed(format!("only {} bytes", bytes.len())));
    }
    if bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 || bytes[3] as usize != rank {
        return Err(malformed(format!("magic bytes {:02x?}", &bytes[..4])));
    }
    let dims: Vec<usize> = (0..rank)
        .map(|i| {
            u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize
        })
        .collect();
    let expected = 4 + 4 * rank + dims.iter().product::<usize>();
    if bytes.len() != expected {
        return Err(malformed(format!(
            "header {dims:?} promises {expected} bytes, the file has {}",
            bytes.len()
        )));
    }
    Ok(dims)
}

/// `(pixels per image, all pixels)` of an idx3 file.
pub fn read_idx_images(path: &Path) -> Result<(usize, Vec<u8>)> {
    let bytes = read_maybe_gz(path)?;
    let dims = header(path, &bytes, 3)?;
    let pixels = dims[1] * dims[2];
    if pixels == 0 {
        return Err(Error::file(path, "images of zero pixels"));
    }
    Ok((pixels, bytes[16..].to_vec()))
}

pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>> {
    let bytes = read_maybe_gz(path)?;
    header(path, &bytes, 1)?;
    Ok(bytes[8..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) {
        std::fs::write(dir.join(name), bytes).unwrap();
    }

    fn idx(rank: u8, dims: &[u32], body: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, 8, rank];
        for d in dims {
            v.extend(d.to_be_bytes());
        }
        v.extend_from_slice(body);
        v
    }

    fn tiny_set(dir: &Path) {
        // Two 2×2 training images, one test image.
        write(
            dir,
            "train-images-idx3-ubyte",
            &idx(3, &[2, 2, 2], &[0, 255, 51, 102, 1, 2, 3, 4]),
        );
        write(dir, "train-labels-idx1-ubyte", &idx(1, &[2], &[3, 1]));
        write(
            dir,
            "t10k-images-idx3-ubyte",
            &idx(3, &[1, 2, 2], &[255, 255, 0, 0]),
        );
        write(dir, "t10k-labels-idx1-ubyte", &idx(1, &[1], &[0]));
    }

    #[test]
    fn reads_a_hand_made_set() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        tiny_set(&dir);
        let set = IdxImages::open(&dir).unwrap();
        assert_eq!(
            set.input_kind(),
            InputKind::Images {
                pixels: 4,
                classes: 4
            }
        );
        let b = set.validation_batch(0, 1, &Device::Cpu).unwrap();
        assert_eq!(
            b.inputs.to_vec2::<f32>().unwrap(),
            vec![vec![1.0, 1.0, 0.0, 0.0]]
        );
        assert_eq!(b.targets.to_vec1::<u32>().unwrap(), vec![0]);
        // One epoch of batch 1 visits both training images once.
        let mut seen: Vec<u32> = (0..2)
            .map(|s| {
                set.train_batch(9, s, 1, &Device::Cpu)
                    .unwrap()
                    .targets
                    .to_vec1::<u32>()
                    .unwrap()[0]
            })
            .collect();
        seen.sort();
        assert_eq!(seen, vec![1, 3]);
    }

    #[test]
    fn malformed_and_missing_files_say_how_to_get_them() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        tiny_set(&dir);
        write(&dir, "t10k-labels-idx1-ubyte", &[0, 0, 8, 1, 0, 0, 0, 5, 1]);
        let err = IdxImages::open(&dir).err().unwrap().to_string();
        assert!(
            err.contains("promises") && err.contains("dataset-fashion-mnist"),
            "{err}"
        );
        let err = IdxImages::open(&dir.join("missing"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("not found") && err.contains("apt-get install"),
            "{err}"
        );
    }
}
