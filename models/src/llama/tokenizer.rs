//! The GPT-2-style byte-level BPE tokenizer stored in GGUF metadata (tokens and merges).

use candle_core::quantized::gguf_file::Value;
use spectra_core::{Error, Result};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::PreTokenizerWrapper;
use tokenizers::SplitDelimiterBehavior;
use tokenizers::{AddedToken, Tokenizer};

use super::gguf::GgufFile;

/// GGUF token types (llama.cpp's `llama_token_type`).
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;

pub struct TextTokenizer {
    inner: Tokenizer,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// The Jinja template that turns chat messages into the model's prompt, where the file has one
    /// (GGUF `tokenizer.chat_template`, or `chat_template` in a Hugging Face `tokenizer_config.json`).
    pub chat_template: Option<String>,
}

fn strings(file: &GgufFile, key: &str) -> Result<Vec<String>> {
    match file.metadata(key)? {
        Value::Array(items) => items
            .iter()
            .map(|v| {
                v.to_string()
                    .cloned()
                    .map_err(|e| Error::file(file.path(), format!("`{key}`: {e}")))
            })
            .collect(),
        _ => Err(Error::file(
            file.path(),
            format!("GGUF metadata `{key}` is not a list of strings"),
        )),
    }
}

/// Qwen2's split of text into words before the byte-level BPE (llama.cpp's `qwen2` pre-tokenizer,
/// Hugging Face's `Split` pattern): single digits, letters with one leading mark, punctuation runs
/// with their newlines, and whitespace.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Llama 3's split (`llama-bpe`): as Qwen2's, with numbers in runs of up to three digits.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer GGUF's `tokenizer.ggml.pre` names.
fn pre_tokenizer(pre: Option<&str>) -> std::result::Result<PreTokenizerWrapper, String> {
    let split = |pattern: &str| -> std::result::Result<PreTokenizerWrapper, String> {
        let split = Split::new(
            SplitPattern::Regex(pattern.into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| format!("cannot build the pre-tokenizer: {e}"))?;
        // The split has made the words; the byte-level step only maps bytes to symbols.
        let bytes = PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false));
        Ok(Sequence::new(vec![PreTokenizerWrapper::Split(split), bytes]).into())
    };
    let gpt2 = PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true));
    match pre {
        None | Some("default" | "gpt2") => Ok(gpt2),
        // SmolLM splits numbers into single digits before GPT-2's split.
        Some("smollm") => {
            let digits = PreTokenizerWrapper::Digits(Digits::new(true));
            Ok(Sequence::new(vec![digits, gpt2]).into())
        }
        Some("qwen2") => split(QWEN2_SPLIT),
        Some("llama-bpe" | "llama3") => split(LLAMA3_SPLIT),
        Some(other) => Err(format!(
            "pre-tokenizer `{other}` (tokenizer.ggml.pre) is not supported; known: default, gpt2, \
             smollm, qwen2, llama-bpe"
        )),
    }
}

impl TextTokenizer {
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let model = file
            .metadata("tokenizer.ggml.model")?
            .to_string()
            .map_err(|e| Error::file(file.path(), e.to_string()))?;
        if model != "gpt2" {
            return Err(Error::file(
                file.path(),
                format!("tokenizer `{model}` is not supported (GPT-2-style BPE is)"),
            ));
        }
        let tokens = strings(file, "tokenizer.ggml.tokens")?;
        let merges = strings(file, "tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| Error::file(file.path(), format!("malformed BPE merge `{m}`")))
            })
            .collect::<Result<Vec<_>>>()?;
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| {
                Error::file(file.path(), format!("cannot build the BPE tokenizer: {e}"))
            })?;
        let mut inner = Tokenizer::new(bpe);
        let pre = file
            .metadata("tokenizer.ggml.pre")
            .ok()
            .and_then(|v| v.to_string().ok().cloned());
        inner.with_pre_tokenizer(Some(
            pre_tokenizer(pre.as_deref()).map_err(|m| Error::file(file.path(), m))?,
        ));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        // Control and user-defined tokens (`<|im_start|>`, `<|endoftext|>`, …) are matched whole in
        // text, as llama.cpp does; otherwise a chat template would be spelled out byte by byte.
        if let Ok(Value::Array(types)) = file.metadata("tokenizer.ggml.token_type") {
            let special: Vec<AddedToken> = types
                .iter()
                .zip(&tokens)
                .filter(|(t, _)| matches!(t.to_i32(), Ok(CONTROL | USER_DEFINED)))
                .map(|(_, token)| AddedToken::from(token.clone(), true))
                .collect();
            inner.add_special_tokens(&special);
        }
        let id = |key: &str| file.metadata(key).ok().and_then(|v| v.to_u32().ok());
        let chat_template = file
            .metadata("tokenizer.chat_template")
            .ok()
            .and_then(|v| v.to_string().ok().cloned());
        Ok(TextTokenizer {
            inner,
            bos: id("tokenizer.ggml.bos_token_id"),
            eos: id("tokenizer.ggml.eos_token_id"),
            chat_template,
        })
    }

    /// A Hugging Face `tokenizer.json`; `bos`/`eos` are looked up by their usual names.
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let inner = Tokenizer::from_file(path)
            .map_err(|e| Error::file(path, format!("not a readable tokenizer.json: {e}")))?;
        let id = |names: &[&str]| names.iter().find_map(|n| inner.token_to_id(n));
        let bos = id(&["<|endoftext|>", "<s>", "<|begin_of_text|>"]);
        let eos = id(&["<|im_end|>", "</s>", "<|end_of_text|>", "<|endoftext|>"]);
        // The template sits beside the tokenizer, in `tokenizer_config.json`, where there is one.
        let chat_template = path
            .parent()
            .map(|dir| dir.join("tokenizer_config.json"))
            .and_then(|config| std::fs::read_to_string(config).ok())
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .and_then(|config| config.get("chat_template")?.as_str().map(str::to_string));
        Ok(TextTokenizer {
            inner,
            bos,
            eos,
            chat_template,
        })
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::invalid("text", format!("cannot tokenize: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| Error::invalid("token ids", format!("cannot decode: {e}")))
    }

    /// The text of one token as the vocabulary spells it (`<|im_end|>`), for chat templates.
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

impl spectra_inference::Detokenize for TextTokenizer {
    fn decode(&self, tokens: &[u32]) -> Result<String> {
        TextTokenizer::decode(self, tokens)
    }
}
