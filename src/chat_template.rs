//! Chat messages as the model's prompt, by the Jinja template its file carries (GGUF
//! `tokenizer.chat_template`), rendered by minijinja with Python's string methods, as mistral.rs
//! does; ChatML where the file has none.

use minijinja::{context, Environment, ErrorKind};
use serde::Serialize;
use spectra_core::{Error, Result};
use spectra_models::llama::TextTokenizer;

/// ChatML, for models whose file carries no template.
const CHATML: &str = "{% for message in messages %}<|im_start|>{{ message.role }}\n\
                      {{ message.content }}<|im_end|>\n{% endfor %}\
                      {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// One message as templates read it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// The model's template (ChatML when `None`), with the texts of its BOS and EOS tokens.
    pub fn new(template: Option<&str>, bos_token: String, eos_token: String) -> Result<Self> {
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned("chat", template.unwrap_or(CHATML).to_string())
            .map_err(|e| {
                Error::invalid(
                    "chat template",
                    format!("the model's chat template does not compile: {e}"),
                )
            })?;
        Ok(ChatTemplate {
            env,
            bos_token,
            eos_token,
        })
    }

    /// The template of the tokenizer's file (ChatML where it has none), with its BOS and EOS texts.
    pub fn of(tokenizer: &TextTokenizer) -> Result<Self> {
        let token_text = |id: Option<u32>| {
            id.and_then(|id| tokenizer.token_text(id))
                .unwrap_or_default()
        };
        ChatTemplate::new(
            tokenizer.chat_template.as_deref(),
            token_text(tokenizer.bos),
            token_text(tokenizer.eos),
        )
    }

    /// The prompt for `messages`, ending where the assistant's answer begins. A template that refuses
    /// the messages (`raise_exception`, say, for roles out of order) is an error naming `messages`.
    pub fn render(&self, messages: &[Message]) -> Result<String> {
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| Error::invalid("chat template", e.to_string()))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => true,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            })
            .map_err(|e| {
                let detail = e
                    .detail()
                    .map(str::to_string)
                    .unwrap_or_else(|| e.to_string());
                Error::invalid(
                    "messages",
                    format!("the model's chat template refuses them: {detail}"),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }

    #[test]
    fn without_a_template_messages_are_chatml() {
        let t = ChatTemplate::new(None, "<s>".into(), "</s>".into()).unwrap();
        let prompt = t
            .render(&[message("system", "Be brief."), message("user", "Hi")])
            .unwrap();
        assert_eq!(
            prompt,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    /// SmolLM2's template (from its GGUF): a default system message, Python-style indexing.
    #[test]
    fn a_model_template_with_python_idioms_renders() {
        let smollm = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'].strip() + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
        let t = ChatTemplate::new(Some(smollm), String::new(), "<|im_end|>".into()).unwrap();
        let prompt = t.render(&[message("user", " Hi ")]).unwrap();
        assert!(prompt.starts_with("<|im_start|>system\nYou are a helpful AI assistant"));
        assert!(prompt.ends_with("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"));
    }

    #[test]
    fn a_template_that_raises_is_an_error_naming_the_messages() {
        let strict = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation roles must start with user') }}{% endif %}";
        let t = ChatTemplate::new(Some(strict), String::new(), String::new()).unwrap();
        let e = t
            .render(&[message("assistant", "x")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("messages") && e.contains("must start with user"),
            "{e}"
        );
        assert!(ChatTemplate::new(Some("{% if %}"), String::new(), String::new()).is_err());
    }
}
