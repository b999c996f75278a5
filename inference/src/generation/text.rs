//! Generated tokens as text, as they arrive: a token that ends inside a multi-byte character waits
//! for the token that completes it, and text that may be the start of a stop string is held back
//! until it is known not to be.

use spectra_core::Result;

/// Turns token ids into text.
pub trait Detokenize: Send + Sync {
    /// The text of `tokens`; bytes that do not form a whole character come out as U+FFFD.
    fn decode(&self, tokens: &[u32]) -> Result<String>;
}

/// The text of a growing list of tokens, handed out in pieces that never split a character: each
/// piece is the text of the tokens since the last whole character, less what came out before (the
/// way Hugging Face's text-generation-inference streams).
#[derive(Clone, Debug, Default)]
pub struct TextStream {
    tokens: Vec<u32>,
    /// Where the tokens of text not yet handed out begin, and where that text's emitted part ends.
    start: usize,
    emitted: usize,
}

impl TextStream {
    /// Adds `token`; returns the text it completes (empty while a character is still open).
    pub fn push(&mut self, detokenizer: &dyn Detokenize, token: u32) -> Result<String> {
        self.tokens.push(token);
        let pending = detokenizer.decode(&self.tokens[self.start..])?;
        if pending.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        let new = pending.get(self.emitted..).unwrap_or_default().to_string();
        // Restart from the last token, so that decoding never grows with the whole text, but keep
        // one token of context: tokenizers drop or add a leading space by what precedes.
        self.start = self.tokens.len() - 1;
        self.emitted = detokenizer.decode(&self.tokens[self.start..])?.len();
        Ok(new)
    }

    /// What is left when the sequence ends: an unfinished character's replacement.
    pub fn finish(&mut self, detokenizer: &dyn Detokenize) -> Result<String> {
        let pending = detokenizer.decode(&self.tokens[self.start..])?;
        let rest = pending.get(self.emitted..).unwrap_or_default().to_string();
        self.start = self.tokens.len();
        self.emitted = 0;
        Ok(rest)
    }
}

/// Watches the text for stop strings: text is released only once no stop string can begin in it,
/// and a stop string ends the text just before it (as OpenAI's `stop` does).
#[derive(Clone, Debug, Default)]
pub struct StopStrings {
    stops: Vec<String>,
    held: String,
}

impl StopStrings {
    pub fn new(stops: Vec<String>) -> Self {
        StopStrings {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    /// Takes new text; returns the text now safe to release and whether a stop string was met
    /// (then the text up to it is released and the rest dropped).
    pub fn push(&mut self, text: &str) -> (String, bool) {
        self.held.push_str(text);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let out = self.held[..at].to_string();
            self.held.clear();
            return (out, true);
        }
        // Hold the longest tail that begins some stop string.
        let keep = self
            .stops
            .iter()
            .flat_map(|s| {
                (1..s.len().min(self.held.len() + 1))
                    .rev()
                    .filter(|&n| s.is_char_boundary(n))
                    .find(|&n| self.held.ends_with(&s[..n]))
            })
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        (out, false)
    }

    /// The text held back when the sequence ends for another reason.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte-level tokens: token `b` is the byte `b`, as a GPT-2 tokenizer's byte fallback.
    struct Bytes;

    impl Detokenize for Bytes {
        fn decode(&self, tokens: &[u32]) -> Result<String> {
            let bytes: Vec<u8> = tokens.iter().map(|&t| t as u8).collect();
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        }
    }

    fn stream(text: &str) -> Vec<String> {
        let mut s = TextStream::default();
        let mut pieces: Vec<String> = text
            .bytes()
            .map(|b| s.push(&Bytes, u32::from(b)).unwrap())
            .collect();
        pieces.push(s.finish(&Bytes).unwrap());
        pieces
    }

    #[test]
    fn a_character_split_over_tokens_comes_out_whole_and_once() {
        let text = "né → 日本 🦀!";
        let pieces = stream(text);
        assert_eq!(pieces.concat(), text);
        assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
        // The crab's four bytes: three empty pieces, then the whole character.
        let crab = pieces.iter().position(|p| p == "🦀").unwrap();
        assert_eq!(&pieces[crab - 3..crab], ["", "", ""]);
    }

    #[test]
    fn an_unfinished_character_ends_as_a_replacement() {
        let mut s = TextStream::default();
        assert_eq!(s.push(&Bytes, u32::from(b'a')).unwrap(), "a");
        assert_eq!(s.push(&Bytes, 0xE6).unwrap(), "");
        assert_eq!(s.finish(&Bytes).unwrap(), "\u{FFFD}");
    }

    #[test]
    fn a_stop_string_ends_the_text_before_it_even_across_pieces() {
        let mut stops = StopStrings::new(vec!["</end>".into(), "STOP".into()]);
        let mut out = String::new();
        let mut stopped = false;
        for piece in ["Hello </", "en", "d> never"] {
            let (text, hit) = stops.push(piece);
            out.push_str(&text);
            if hit {
                stopped = true;
                break;
            }
        }
        assert!(stopped);
        assert_eq!(out, "Hello ");
    }

    #[test]
    fn text_that_only_looks_like_a_stop_string_is_released_when_it_is_not() {
        let mut stops = StopStrings::new(vec!["STOP".into()]);
        assert_eq!(stops.push("ab ST"), ("ab ".to_string(), false));
        assert_eq!(stops.push("ep"), ("STep".to_string(), false));
        assert_eq!(stops.push("ST"), (String::new(), false));
        assert_eq!(stops.finish(), "ST");
    }
}
