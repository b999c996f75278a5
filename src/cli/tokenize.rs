//! `spectra tokenize --model M (--file F | TEXT)`: a text's token ids as the model's tokenizer gives
//! them, printed as llama.cpp's `llama-tokenize --ids` prints them, to compare the two.

use std::path::PathBuf;

use clap::Args;
use spectra::models::llama::{GgufFile, TextTokenizer};
use spectra_core::Error;

#[derive(Args)]
pub struct TokenizeArgs {
    /// A GGUF file (only its tokenizer is read).
    #[arg(long, default_value = "data/models/SmolLM2-135M-Instruct.Q4_1.gguf")]
    model: PathBuf,
    /// Read the text from this file.
    #[arg(long, conflicts_with = "text")]
    file: Option<PathBuf>,
    /// The text.
    text: Option<String>,
}

pub fn run(args: TokenizeArgs) -> Result<(), Error> {
    let text = match (&args.file, args.text) {
        (Some(file), _) => std::fs::read_to_string(file)
            .map_err(|e| Error::file(file, format!("cannot read the text: {e}")))?,
        (None, Some(text)) => text,
        (None, None) => {
            return Err(Error::invalid(
                "text",
                "give the text as an argument or --file FILE",
            ))
        }
    };
    let tokenizer = TextTokenizer::from_gguf(&GgufFile::open(&args.model)?)?;
    let ids = tokenizer.encode(&text)?;
    let list: Vec<String> = ids.iter().map(u32::to_string).collect();
    println!("[{}]", list.join(", "));
    Ok(())
}
