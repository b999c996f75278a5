//! Options that several commands share: which model to load and how, and which KV policy to run.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::DType;
use clap::Args;
use spectra_core::config::parse_ron;
use spectra_core::{Budget, DeviceSpec, Error, KvEvictionPolicy};
use spectra_models::llama::{Llama, TextTokenizer, WeightFormat};

#[derive(Args)]
pub struct ModelArgs {
    /// A GGUF file or a Hugging Face folder (config.json, *.safetensors, tokenizer.json).
    #[arg(long, default_value = "data/models/SmolLM2-135M-Instruct.Q4_1.gguf")]
    pub model: PathBuf,
    /// Expand quantized weights to f32 when loading: exact products, 4–7× the memory, slower.
    #[arg(long)]
    pub f32_weights: bool,
    /// How the KV cache stores keys and values: f16 or bf16 halve its bytes.
    #[arg(long, value_enum, default_value_t = KvDtype::F32)]
    pub kv_dtype: KvDtype,
    #[arg(long, default_value = "Auto")]
    pub device: String,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum KvDtype {
    F32,
    F16,
    Bf16,
}

impl ModelArgs {
    /// The model, shared, with its tokenizer.
    pub fn load(&self) -> Result<(Arc<Llama>, TextTokenizer), Error> {
        let device: DeviceSpec = parse_ron(&self.device, Path::new("--device"))?;
        let device = device.resolve()?;
        let format = if self.f32_weights {
            WeightFormat::F32
        } else {
            WeightFormat::AsStored
        };
        let (model, tokenizer) = Llama::load(&self.model, &device, format)?;
        let model = model.with_kv_dtype(match self.kv_dtype {
            KvDtype::F32 => DType::F32,
            KvDtype::F16 => DType::F16,
            KvDtype::Bf16 => DType::BF16,
        })?;
        Ok((Arc::new(model), tokenizer))
    }
}

#[derive(Args)]
pub struct PolicyArgs {
    /// A KV eviction policy as RON, inline or a file, e.g. '(type: "StreamingLlm", cfg: (sinks: 4))'.
    #[arg(long)]
    pub policy: Option<String>,
    /// KV entries kept per head (with --policy) [default: 512].
    #[arg(long, value_parser = at_least_one)]
    pub budget: Option<NonZeroUsize>,
}

/// A count of at least 1, for clap: 0 is refused saying so (clap's own parse of `NonZeroUsize` says
/// "number would be zero for non-zero type").
pub fn at_least_one(text: &str) -> Result<NonZeroUsize, String> {
    let n: usize = text.parse().map_err(|e| format!("{e}"))?;
    NonZeroUsize::new(n).ok_or_else(|| "must be at least 1".into())
}

/// The budget of a policy given without `--budget`.
const DEFAULT_BUDGET: usize = 512;

impl PolicyArgs {
    /// The policy, checked against the budget. A budget without a policy is refused: nothing would
    /// be evicted, which the user did not ask for.
    pub fn read(&self) -> Result<(Option<Arc<dyn KvEvictionPolicy>>, Budget), Error> {
        let tokens = self.budget.map_or(DEFAULT_BUDGET, NonZeroUsize::get);
        let budget = Budget::Tokens(tokens);
        let Some(text) = &self.policy else {
            if self.budget.is_some() {
                return Err(Error::invalid(
                    "--budget",
                    format!(
                        "is {tokens}, but without --policy the cache keeps every entry; give a \
                         --policy to evict by, or leave --budget out"
                    ),
                ));
            }
            return Ok((None, budget));
        };
        let policy = read_policy(text)?;
        policy
            .validate(&budget)
            .map_err(|m| Error::invalid(format!("--policy at --budget {tokens}"), m))?;
        Ok((Some(policy), budget))
    }
}

fn read_policy(text: &str) -> Result<Arc<dyn KvEvictionPolicy>, Error> {
    let path = Path::new(text);
    if path.is_dir() {
        return Err(Error::file(
            path,
            "is a folder; --policy takes a RON file or inline RON, e.g. '(type: \"StreamingLlm\", cfg: (sinks: 4))'",
        ));
    }
    if path.is_file() {
        let body = std::fs::read_to_string(path).map_err(|e| Error::file(path, e.to_string()))?;
        return Ok(parse_ron(&body, path)?);
    }
    // Inline RON opens with a parenthesis; a word ending in `.ron` is a file that is not there,
    // whose name would otherwise be reported as a RON syntax error at 1:1.
    if !text.trim_start().starts_with('(') && text.trim_end().ends_with(".ron") {
        return Err(Error::file(
            path,
            "does not exist; --policy takes a RON file or inline RON, e.g. '(type: \"StreamingLlm\", cfg: (sinks: 4))'",
        ));
    }
    Ok(parse_ron(text, Path::new("--policy"))?)
}

/// A byte count with an optional binary suffix: `1048576`, `512MiB`, `2GiB` (also `K`, `M`, `G`).
pub fn parse_bytes(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}`; give bytes, or KiB, MiB or GiB"
            ))
        }
    };
    let n: usize = number
        .parse()
        .map_err(|_| format!("`{text}` is not a byte count such as 536870912 or 512MiB"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("`{text}` is more bytes than this machine can count"))
}

/// For a command that reads a model with exact (f32) products and writes a file to `out`: checks
/// first that `out`'s folder can be written (so a long run does not end unable to save), then
/// resolves `device` and loads `model` there.
pub fn load_exact_for(
    model: &Path,
    device: &str,
    out: &Path,
) -> Result<(Llama, TextTokenizer), Error> {
    let folder = out.parent().filter(|p| !p.as_os_str().is_empty());
    spectra::output::prepare_advising(
        folder.unwrap_or(Path::new(".")),
        "; choose another path for --out",
    )?;
    let device: DeviceSpec = parse_ron(device, Path::new("--device"))?;
    Llama::load(model, &device.resolve()?, WeightFormat::F32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_take_binary_suffixes_and_refuse_the_rest() {
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("2 GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("3k"), Ok(3072));
        assert!(parse_bytes("12 parsecs").unwrap_err().contains("unit"));
        assert!(parse_bytes("MiB").is_err());
        assert!(parse_bytes("99999999999999999999GiB").is_err());
    }
}
