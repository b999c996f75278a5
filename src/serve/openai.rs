//! The requests of OpenAI's chat and text completions, read with errors that name the field, and
//! turned into the generation API's settings.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use spectra_core::Error;
use spectra_inference::{GenerationParams, SamplingParams};

use super::error::ApiError;
use crate::chat_template::Message;

/// Fields both endpoints take.
#[derive(Debug, Default, Deserialize)]
pub struct Common {
    pub max_tokens: Option<usize>,
    pub max_completion_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// An extension (as vLLM's): 0 or less keeps every token.
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<Stop>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub n: Option<u64>,
    /// An extension (vLLM's and llama-server's name): generate past the end-of-sequence token, to
    /// `max_tokens` (load tests use it to fix the answer's length).
    pub ignore_eos: Option<bool>,
    /// spectra's extension: the KV policy and budget of this request.
    pub kv: Option<KvRequest>,
    // Features not offered, refused when asked for rather than ignored.
    pub logprobs: Option<serde_json::Value>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub logit_bias: Option<serde_json::Map<String, serde_json::Value>>,
    pub tools: Option<Vec<serde_json::Value>>,
    pub echo: Option<bool>,
    pub best_of: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "expected a text or a list of texts")]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// `"kv": {"policy": "preset" | {"type": ..., "cfg": {...}}, "budget": N}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvRequest {
    pub policy: Option<serde_json::Value>,
    pub budget: Option<usize>,
}

#[derive(Debug)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    pub common: Common,
}

#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

/// A message's content: text, or parts of which the text ones are taken.
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "expected a text or a list of parts such as {\"type\": \"text\", \"text\": ...}"
)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Debug)]
pub struct CompletionRequest {
    pub prompt: PromptInput,
    pub common: Common,
}

/// A completion's prompt: text, one text in a list, or token ids.
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "expected a text, a list of one text, or a list of token ids"
)]
pub enum PromptInput {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
}

/// A request body as JSON: UTF-8, well formed, an object; or a 400 saying which and where.
fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    if let Err(e) = std::str::from_utf8(body) {
        return Err(ApiError::invalid(
            "body",
            format!(
                "the request body is not UTF-8 (byte {} is not); send the JSON encoded as UTF-8",
                e.valid_up_to()
            ),
        ));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid("body", format!("the request body is not valid JSON: {e}"))
    })?;
    if !value.is_object() {
        return Err(ApiError::invalid(
            "body",
            "the request body is not a JSON object; send the request as OpenAI's API documents it",
        ));
    }
    Ok(value)
}

/// `T` from `value`, which sits at `at` in the request (`""` for the whole body); a type error
/// names the field's path (`max_tokens`, `messages[2].content`).
fn field<T: DeserializeOwned>(value: Value, at: &str) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let path = match (at, inner.as_str()) {
            (_, ".") => at.to_string(),
            ("", p) => p.to_string(),
            (a, p) if p.starts_with('[') => format!("{a}{p}"),
            (a, p) => format!("{a}.{p}"),
        };
        let path = if path.is_empty() {
            "body".to_string()
        } else {
            path
        };
        ApiError::invalid(path.clone(), format!("`{path}`: {}", e.into_inner()))
    })
}

/// The member `name` of a request object, or a 400 saying it is missing.
fn member(value: &Value, name: &str, what: &str) -> Result<Value, ApiError> {
    value
        .get(name)
        .cloned()
        .ok_or_else(|| ApiError::invalid(name, format!("`{name}` is missing; give {what}")))
}

impl ChatRequest {
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let value = parse_json(body)?;
        let messages = member(
            &value,
            "messages",
            "the conversation as [{\"role\", \"content\"}, ...]",
        )?;
        Ok(ChatRequest {
            messages: field(messages, "messages")?,
            common: field(value, "")?,
        })
    }
}

impl CompletionRequest {
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let value = parse_json(body)?;
        let prompt = member(&value, "prompt", "a text, one text in a list, or token ids")?;
        Ok(CompletionRequest {
            prompt: field(prompt, "prompt")?,
            common: field(value, "")?,
        })
    }
}

impl ChatRequest {
    /// The messages as the chat template reads them.
    pub fn messages(&self) -> Result<Vec<Message>, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid(
                "messages",
                "`messages` is empty; send at least one message",
            ));
        }
        self.messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let content = match &m.content {
                    None => String::new(),
                    Some(Content::Text(t)) => t.clone(),
                    Some(Content::Parts(parts)) => {
                        if let Some(p) = parts.iter().find(|p| p.kind != "text") {
                            return Err(ApiError::invalid(
                                format!("messages[{i}].content"),
                                format!(
                                    "`messages[{i}].content` has a `{}` part; this server reads \
                                     text parts only",
                                    p.kind
                                ),
                            ));
                        }
                        parts.iter().filter_map(|p| p.text.as_deref()).collect()
                    }
                };
                Ok(Message {
                    role: m.role.clone(),
                    content,
                })
            })
            .collect()
    }
}

impl Common {
    /// The generation's settings for a prompt (the request's `prompt_field`) of `prompt_len` tokens
    /// on a model of `context_len` positions; `default_max_tokens` where the request gives none (else
    /// the room left).
    pub fn generation(
        &self,
        prompt_field: &str,
        prompt_len: usize,
        context_len: usize,
        default_max_tokens: Option<usize>,
        stop_tokens: Vec<u32>,
    ) -> Result<GenerationParams, ApiError> {
        self.refuse_unsupported()?;
        if prompt_len >= context_len {
            return Err(ApiError::invalid(
                prompt_field,
                format!(
                    "`{prompt_field}` is {prompt_len} tokens, and the model's context holds \
                     {context_len} positions, prompt and answer together; shorten it"
                ),
            ));
        }
        let room = context_len.saturating_sub(prompt_len);
        let max_tokens = self
            .max_completion_tokens
            .or(self.max_tokens)
            .or(default_max_tokens.map(|d| d.min(room)))
            .unwrap_or(room);
        let field = if self.max_completion_tokens.is_some() {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        if max_tokens == 0 {
            return Err(ApiError::invalid(
                field,
                format!("`{field}` is 0; ask for 1 to {room} tokens"),
            ));
        }
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.iter().any(String::is_empty) {
            return Err(ApiError::invalid(
                "stop",
                "holds an empty string; remove it",
            ));
        }
        let params = GenerationParams {
            max_tokens,
            sampling: SamplingParams {
                // OpenAI's default: draw at temperature 1.
                temperature: self.temperature.unwrap_or(1.0),
                top_k: self.top_k.map_or(0, |k| k.max(0) as usize),
                top_p: self.top_p.unwrap_or(1.0),
                min_p: self.min_p.unwrap_or(0.0),
                seed: self.seed.map(|s| s as u64),
            },
            stop,
            stop_tokens,
            ignore_stop_tokens: self.ignore_eos.unwrap_or(false),
        };
        params.check(prompt_len, context_len).map_err(|e| match e {
            Error::InvalidInput { name, message } => {
                let name = if name == "max_tokens" {
                    field.to_string()
                } else {
                    name
                };
                ApiError::invalid(name.clone(), format!("`{name}`: {message}"))
            }
            other => ApiError::invalid("body", other.to_string()),
        })?;
        Ok(params)
    }

    fn refuse_unsupported(&self) -> Result<(), ApiError> {
        let refuse =
            |field: &str, why: &str| Err(ApiError::invalid(field, format!("`{field}`: {why}")));
        if self.n.is_some_and(|n| n != 1) {
            return refuse(
                "n",
                "only 1 choice per request is supported; send n requests instead",
            );
        }
        if self.best_of.is_some_and(|n| n != 1) {
            return refuse("best_of", "only 1 is supported");
        }
        if self
            .logprobs
            .as_ref()
            .is_some_and(|l| !l.is_null() && l != &serde_json::Value::Bool(false))
        {
            return refuse("logprobs", "log-probabilities are not offered");
        }
        for (field, value) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if value.is_some_and(|v| v != 0.0) {
                return refuse(field, "penalties are not offered; leave it out or 0");
            }
        }
        if self.logit_bias.as_ref().is_some_and(|b| !b.is_empty()) {
            return refuse("logit_bias", "is not offered; leave it out");
        }
        if self.tools.as_ref().is_some_and(|t| !t.is_empty()) {
            return refuse("tools", "tool calls are not offered");
        }
        if self.echo == Some(true) {
            return refuse("echo", "is not offered");
        }
        Ok(())
    }
}
