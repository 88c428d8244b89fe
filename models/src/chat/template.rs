//! Renders a model's chat template (the Jinja text in the GGUF key
//! `tokenizer.chat_template`) with `minijinja`, the way Hugging Face
//! `transformers` does: `trim_blocks` and `lstrip_blocks` on, Python string
//! methods available (`pycompat`), and the variables `messages`,
//! `add_generation_prompt`, `bos_token` and `eos_token`.

use serde::{Deserialize, Serialize};

use crate::error::ModelError;

/// Who wrote a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The model's reply.
    Assistant,
    /// Instructions that frame the conversation.
    System,
    /// The human or calling agent.
    User,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who wrote it.
    pub role: Role,
    /// What it says.
    pub content: String,
}

impl ChatMessage {
    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self { role: Role::System, content: content.into() }
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self { role: Role::User, content: content.into() }
    }

    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self { role: Role::Assistant, content: content.into() }
    }
}

/// A compiled chat template.
#[derive(Debug)]
pub struct ChatTemplate {
    /// Environment holding the one template, named `chat`.
    env: minijinja::Environment<'static>,
    /// Text bound to `bos_token`.
    bos_token: String,
    /// Text bound to `eos_token`.
    eos_token: String,
}

/// Used when a model's metadata carries no template: ChatML.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

impl ChatTemplate {
    /// Compiles `source`; syntax errors are reported here, not at render time.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, ModelError> {
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, message))
        });
        env.add_function("strftime_now", |_format: String| -> String { String::new() });
        env.add_template_owned("chat", source.to_owned()).map_err(|e| ModelError::Template(e.to_string()))?;
        Ok(Self { env, bos_token: bos_token.to_owned(), eos_token: eos_token.to_owned() })
    }

    /// Renders the conversation; with `add_generation_prompt` the text ends
    /// where the assistant's reply begins.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String, ModelError> {
        let template = self.env.get_template("chat").map_err(|e| ModelError::Template(e.to_string()))?;
        template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            })
            .map_err(|e| ModelError::Template(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_smollm2_default_system_prompt() {
        let template = ChatTemplate::new(SMOLLM2, "<|im_start|>", "<|im_end|>").expect("compiles");
        let text = template.render(&[ChatMessage::user("What is the capital of France?")], true).expect("renders");
        assert_eq!(
            text,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_methods_and_bos_and_trim_blocks() {
        let source = "{{ bos_token }}{% for m in messages %}\n{{ m['role'].upper() }}: {{ m['content'].strip() }}\n{% endfor %}{% if add_generation_prompt %}A:{% endif %}";
        let template = ChatTemplate::new(source, "<s>", "</s>").expect("compiles");
        let text =
            template.render(&[ChatMessage::system("  be brief "), ChatMessage::user("hi")], true).expect("renders");
        assert_eq!(text, "<s>SYSTEM: be brief\nUSER: hi\nA:");
    }

    #[test]
    fn raise_exception_is_an_error_not_a_panic() {
        let source = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first message must be from the user') }}{% endif %}";
        let template = ChatTemplate::new(source, "", "").expect("compiles");
        let error = template.render(&[ChatMessage::assistant("x")], true).unwrap_err();
        assert!(error.to_string().contains("first message must be from the user"));
    }

    #[test]
    fn syntax_error_is_reported_at_compile_time() {
        assert!(matches!(ChatTemplate::new("{% for %}", "", ""), Err(ModelError::Template(_))));
    }
}
