//! Character-level text: the vocabulary is the corpus's distinct characters, sorted; the first 90% of
//! the characters train, the last 10% validate (the nanoGPT Shakespeare recipe, as the paper's code
//! has it; docs/lipschitz.md §8.1).

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use rand::Rng;
use spectra_core::{Error, Result};

use super::{read_data_file, step_rng, Batch, Dataset, InputKind};

const HOW_TO_GET: &str = "run `scripts/get-data.sh` to put tiny Shakespeare in data/, or point `data: Text(path: ...)` at any UTF-8 text file";

pub struct TextCorpus {
    path: PathBuf,
    vocab: Vec<char>,
    train: Vec<u32>,
    validation: Vec<u32>,
    seq_len: usize,
}

impl TextCorpus {
    pub fn open(path: &Path, seq_len: usize) -> Result<Self> {
        let bytes = read_data_file(path, HOW_TO_GET)?;
        let text = String::from_utf8(bytes)
            .map_err(|e| Error::file(path, format!("not UTF-8 text ({e}); {HOW_TO_GET}")))?;
        Self::from_text(path, &text, seq_len)
    }

    pub fn from_text(path: &Path, text: &str, seq_len: usize) -> Result<Self> {
        let chars: Vec<char> = text.chars().collect();
        let mut vocab = chars.clone();
        vocab.sort_unstable();
        vocab.dedup();
        let ids: Vec<u32> = chars
            .iter()
            .map(|c| vocab.binary_search(c).expect("vocab holds every char") as u32)
            .collect();
        let split = ids.len() * 9 / 10;
        let (train, validation) = (ids[..split].to_vec(), ids[split..].to_vec());
        // A window needs seq_len inputs plus the next character as the last target.
        if train.len() <= seq_len || validation.len() <= seq_len {
            return Err(Error::file(
                path,
                format!(
                    "{} characters are too few for windows of {seq_len}: each 90%/10% split needs more than {seq_len}; \
                     use a longer corpus or a smaller seq_len",
                    ids.len()
                ),
            ));
        }
        Ok(TextCorpus {
            path: path.to_path_buf(),
            vocab,
            train,
            validation,
            seq_len,
        })
    }

    pub fn vocab(&self) -> &[char] {
        &self.vocab
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn batch(&self, source: &[u32], starts: &[usize], device: &Device) -> Result<Batch> {
        let t = self.seq_len;
        let mut x = Vec::with_capacity(starts.len() * t);
        let mut y = Vec::with_capacity(starts.len() * t);
        for &s in starts {
            x.extend_from_slice(&source[s..s + t]);
            y.extend_from_slice(&source[s + 1..s + t + 1]);
        }
        Ok(Batch {
            inputs: Tensor::from_vec(x, (starts.len(), t), device)?,
            targets: Tensor::from_vec(y, starts.len() * t, device)?,
        })
    }
}

impl Dataset for TextCorpus {
    fn input_kind(&self) -> InputKind {
        InputKind::Tokens {
            vocab: self.vocab.len(),
        }
    }

    /// Windows starting uniformly at random in the training split, drawn independently per step.
    fn train_batch(
        &self,
        seed: u64,
        step: u64,
        batch_size: usize,
        device: &Device,
    ) -> Result<Batch> {
        let mut rng = step_rng(seed, step);
        let last_start = self.train.len() - self.seq_len - 1;
        let starts: Vec<usize> = (0..batch_size)
            .map(|_| rng.random_range(0..=last_start))
            .collect();
        self.batch(&self.train, &starts, device)
    }

    /// Non-overlapping windows tiling the validation split: every character but the few after the last
    /// full window is predicted exactly once.
    fn validation_items(&self) -> usize {
        (self.validation.len() - 1) / self.seq_len
    }

    fn validation_batch(&self, start: usize, count: usize, device: &Device) -> Result<Batch> {
        let starts: Vec<usize> = (start..start + count).map(|w| w * self.seq_len).collect();
        self.batch(&self.validation, &starts, device)
    }

    fn targets_per_item(&self) -> usize {
        self.seq_len
    }

    fn describe_validation(&self) -> String {
        format!(
            "non-overlapping {}-character windows of the last 10% of {}",
            self.seq_len,
            self.path.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus() -> TextCorpus {
        let text: String = (0..200)
            .map(|i| ['a', 'b', 'c', 'd', '\n'][i % 5])
            .collect();
        TextCorpus::from_text(Path::new("mem"), &text, 8).unwrap()
    }

    #[test]
    fn vocabulary_is_sorted_and_split_is_ninety_ten() {
        let c = corpus();
        assert_eq!(c.vocab(), &['\n', 'a', 'b', 'c', 'd']);
        assert_eq!((c.train.len(), c.validation.len()), (180, 20));
        assert_eq!(c.validation_items(), 2);
    }

    #[test]
    fn targets_are_inputs_shifted_by_one() {
        let c = corpus();
        let b = c.train_batch(3, 7, 4, &Device::Cpu).unwrap();
        let x = b.inputs.to_vec2::<u32>().unwrap();
        let y = b.targets.to_vec1::<u32>().unwrap();
        for (w, row) in x.iter().enumerate() {
            assert_eq!(&row[1..], &y[w * 8..w * 8 + 7]);
            // The corpus cycles a b c d \n (ids 1 2 3 4 0): the next id follows the pattern.
            assert_eq!(y[w * 8 + 7], [1, 2, 3, 4, 0][row[7] as usize]);
        }
    }

    #[test]
    fn a_steps_batch_depends_only_on_seed_and_step() {
        let c = corpus();
        let a = c
            .train_batch(1, 5, 4, &Device::Cpu)
            .unwrap()
            .inputs
            .to_vec2::<u32>()
            .unwrap();
        let b = c
            .train_batch(1, 5, 4, &Device::Cpu)
            .unwrap()
            .inputs
            .to_vec2::<u32>()
            .unwrap();
        let other = c
            .train_batch(1, 6, 4, &Device::Cpu)
            .unwrap()
            .inputs
            .to_vec2::<u32>()
            .unwrap();
        assert_eq!(a, b);
        assert_ne!(a, other);
    }

    #[test]
    fn short_or_missing_corpora_are_clear_errors() {
        let err = TextCorpus::from_text(Path::new("tiny.txt"), "abc", 8)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("too few"), "{err}");
        let err = TextCorpus::open(Path::new("/nonexistent/shakespeare.txt"), 8)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("scripts/get-data.sh"), "{err}");
    }
}
