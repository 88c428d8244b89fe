//! Anthropic's Messages API on the wire, translated to and from the OpenAI
//! shapes the rest of the edge speaks: a tier of kind `anthropic` takes the
//! same [`ChatCompletionRequest`] as any other remote tier, and its replies,
//! whole or streamed, come back as [`ChatCompletionResponse`] and
//! [`ChatCompletionChunk`]s, so budgets, breakers, retries, the agent loop
//! and the gateway treat both providers alike.
//!
//! The differences the translation absorbs: system prompts are a top-level
//! field; a conversation alternates `user` and `assistant` turns made of
//! content blocks, so consecutive messages of one role are merged; tool calls
//! are `tool_use` blocks whose `input` is a JSON object (not text) and their
//! results are `tool_result` blocks in the next user turn; `max_tokens` is
//! required; a streamed reply is a sequence of typed events (`message_start`,
//! `content_block_*`, `message_delta`, `message_stop`) with no `[DONE]`.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::openai::{
    ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, Choice, ChunkChoice, Delta, ResponseFormat,
    ResponseMessage, Usage,
};
use super::tools::{WireFunctionCall, WireFunctionDelta, WireToolCall, WireToolCallDelta};

/// The API version every request names (`anthropic-version`).
pub const API_VERSION: &str = "2023-06-01";

/// `max_tokens` when the caller set none (the API requires one).
pub const DEFAULT_MAX_TOKENS: u32 = 1024;

/// `POST /v1/messages` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessagesRequest {
    /// The model.
    pub model: String,
    /// Most tokens to generate.
    pub max_tokens: u32,
    /// The system prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The turns, alternating user and assistant, starting with user.
    pub messages: Vec<Turn>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Nucleus sampling mass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// Stop sequences.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop_sequences: Vec<String>,
    /// Tools the model may use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<Tool>,
    /// `{"type": "auto" | "any" | "none"}` or `{"type": "tool", "name": ...}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    /// Stream the reply as events.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
}

/// One turn of the conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    /// `user` or `assistant`.
    pub role: String,
    /// Its blocks.
    pub content: Vec<Block>,
}

/// A content block of a turn or a reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Block {
    /// Text.
    Text {
        /// The text.
        text: String,
    },
    /// A call the model made.
    ToolUse {
        /// The call's id, echoed by its result.
        id: String,
        /// The tool.
        name: String,
        /// The arguments, a JSON object.
        input: Value,
    },
    /// The result of a call, sent back in a user turn.
    ToolResult {
        /// The call it answers.
        tool_use_id: String,
        /// The observation.
        content: String,
    },
    /// Blocks aios neither sends nor uses (thinking, images, ...).
    #[serde(other)]
    Other,
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    /// Its name.
    pub name: String,
    /// What it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON Schema of its input.
    pub input_schema: Value,
}

/// A whole reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessagesResponse {
    /// `msg_...`.
    pub id: String,
    /// The model that answered.
    pub model: String,
    /// The reply's blocks.
    pub content: Vec<Block>,
    /// `end_turn`, `max_tokens`, `stop_sequence`, `tool_use`, `refusal`, ...
    #[serde(default)]
    pub stop_reason: Option<String>,
    /// Token usage.
    #[serde(default)]
    pub usage: MessagesUsage,
}

/// Token usage as Anthropic reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessagesUsage {
    /// Prompt tokens not read from or written to the prompt cache.
    #[serde(default)]
    pub input_tokens: u64,
    /// Generated tokens (in a stream, the count so far).
    #[serde(default)]
    pub output_tokens: u64,
    /// Prompt tokens written to the cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_creation_input_tokens: Option<u64>,
    /// Prompt tokens read from the cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_input_tokens: Option<u64>,
}

impl MessagesUsage {
    /// Every prompt token, cached or not (what a budget is charged for).
    fn prompt_tokens(&self) -> u64 {
        self.input_tokens + self.cache_creation_input_tokens.unwrap_or(0) + self.cache_read_input_tokens.unwrap_or(0)
    }
}

/// The Messages request for an OpenAI-shaped one. `Err` says what cannot be
/// expressed (a response format, several choices, a tool result without
/// its call's id).
pub fn request(openai: &ChatCompletionRequest) -> Result<MessagesRequest, String> {
    if matches!(openai.response_format, Some(ResponseFormat::JsonObject | ResponseFormat::JsonSchema { .. })) {
        return Err("an anthropic tier takes no response_format".to_owned());
    }
    if openai.n.is_some_and(|n| n > 1) {
        return Err("an anthropic tier returns one choice".to_owned());
    }
    let mut system = Vec::new();
    let mut turns: Vec<Turn> = Vec::new();
    for message in &openai.messages {
        let text = message.text()?;
        let (role, blocks) = match message.role.as_str() {
            "system" | "developer" => {
                system.push(text);
                continue;
            }
            "user" => ("user", vec![Block::Text { text }]),
            "assistant" => {
                let mut blocks = Vec::with_capacity(1 + message.tool_calls.len());
                if !text.is_empty() {
                    blocks.push(Block::Text { text });
                }
                blocks.extend(message.tool_calls.iter().map(tool_use));
                ("assistant", blocks)
            }
            "tool" => {
                let tool_use_id =
                    message.tool_call_id.clone().ok_or("a tool message has no tool_call_id".to_owned())?;
                ("user", vec![Block::ToolResult { tool_use_id, content: text }])
            }
            other => return Err(format!("message role `{other}` has no Messages equivalent")),
        };
        // The API refuses empty text blocks and empty turns: a message with
        // nothing left adds nothing, and turns of one role merge.
        let blocks: Vec<Block> =
            blocks.into_iter().filter(|block| !matches!(block, Block::Text { text } if text.is_empty())).collect();
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some(last) if last.role == role => last.content.extend(blocks),
            _ => turns.push(Turn { role: role.to_owned(), content: blocks }),
        }
    }
    let tools: Vec<Tool> = openai
        .tools
        .iter()
        .map(|tool| Tool {
            name: tool.function.name.clone(),
            description: tool.function.description.clone(),
            input_schema: tool.function.parameters.clone().unwrap_or_else(|| json!({ "type": "object" })),
        })
        .collect();
    let tool_choice = match (&openai.tool_choice, tools.is_empty()) {
        (_, true) | (None, false) => None,
        (Some(choice), false) => Some(tool_choice(choice)?),
    };
    Ok(MessagesRequest {
        model: openai.model.clone(),
        max_tokens: openai.token_limit().unwrap_or(DEFAULT_MAX_TOKENS),
        system: (!system.is_empty()).then(|| system.join("\n\n")),
        messages: turns,
        temperature: openai.temperature,
        top_p: openai.top_p,
        stop_sequences: openai.stop.clone().map(|stop| stop.into_vec()).unwrap_or_default(),
        tools,
        tool_choice,
        stream: openai.stream,
    })
}

/// An assistant's call as a `tool_use` block. Arguments that are not a JSON
/// object (a model's malformed call, already answered with the reason) go
/// as `{"unparsed_arguments": text}`, since `input` must be an object.
fn tool_use(call: &WireToolCall) -> Block {
    let input = match serde_json::from_str::<Value>(&call.function.arguments) {
        Ok(Value::Object(object)) => Value::Object(object),
        _ => json!({ "unparsed_arguments": call.function.arguments }),
    };
    Block::ToolUse { id: call.id.clone(), name: call.function.name.clone(), input }
}

fn tool_choice(choice: &Value) -> Result<Value, String> {
    match choice {
        Value::String(mode) => match mode.as_str() {
            "auto" => Ok(json!({ "type": "auto" })),
            "required" => Ok(json!({ "type": "any" })),
            "none" => Ok(json!({ "type": "none" })),
            other => Err(format!("tool_choice `{other}` has no Messages equivalent")),
        },
        named => match named["function"]["name"].as_str() {
            Some(name) => Ok(json!({ "type": "tool", "name": name })),
            None => Err("tool_choice must be auto, required, none or a named function".to_owned()),
        },
    }
}

/// The OpenAI finish reason for an Anthropic stop reason.
fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// A whole reply in OpenAI's shape.
pub fn response(reply: MessagesResponse) -> ChatCompletionResponse {
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in reply.content {
        match block {
            Block::Text { text: piece } => text.push_str(&piece),
            Block::ToolUse { id, name, input } => tool_calls.push(WireToolCall {
                id,
                kind: "function".to_owned(),
                function: WireFunctionCall { name, arguments: input.to_string() },
            }),
            Block::ToolResult { .. } | Block::Other => {}
        }
    }
    let refused = reply.stop_reason.as_deref() == Some("refusal");
    let refusal = refused.then(|| if text.is_empty() { "the model declined".to_owned() } else { text.clone() });
    ChatCompletionResponse {
        id: reply.id,
        object: "chat.completion".to_owned(),
        created: 0,
        model: reply.model,
        choices: vec![Choice {
            index: 0,
            message: ResponseMessage {
                role: "assistant".to_owned(),
                content: (!refused).then_some(text),
                tool_calls,
                refusal,
            },
            finish_reason: reply.stop_reason.as_deref().map(|reason| finish_reason(reason).to_owned()),
        }],
        usage: Some(Usage::new(reply.usage.prompt_tokens(), reply.usage.output_tokens)),
    }
}

/// One event of a streamed reply.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StreamEvent {
    MessageStart {
        message: StartedMessage,
    },
    ContentBlockStart {
        index: u32,
        content_block: Block,
    },
    ContentBlockDelta {
        index: u32,
        delta: BlockDelta,
    },
    MessageDelta {
        delta: MessageDeltaBody,
        usage: Option<MessagesUsage>,
    },
    MessageStop,
    /// `ping`, `content_block_stop`, and event types added later.
    #[serde(other)]
    Ignored,
}

#[derive(Debug, Clone, Deserialize)]
struct StartedMessage {
    id: String,
    model: String,
    #[serde(default)]
    usage: MessagesUsage,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    #[serde(other)]
    Ignored,
}

#[derive(Debug, Clone, Deserialize)]
struct MessageDeltaBody {
    #[serde(default)]
    stop_reason: Option<String>,
}

/// What one streamed event amounts to.
#[derive(Debug, Clone, PartialEq)]
pub enum Translated {
    /// An OpenAI chunk to apply.
    Chunk(ChatCompletionChunk),
    /// Nothing to apply (a ping, the end of a block).
    Nothing,
    /// `message_stop`: the reply is complete.
    Done,
}

/// Turns a Messages event stream into OpenAI chunks. Each `tool_use` block
/// becomes the next tool call; its `input_json_delta`s become pieces of
/// that call's arguments.
#[derive(Debug, Default)]
pub struct StreamTranslator {
    id: String,
    model: String,
    prompt_tokens: u64,
    /// The call index of each `tool_use` block, by block index.
    calls: Vec<(u32, u32)>,
}

impl StreamTranslator {
    /// Translates one event's data. `Err` is a malformed event; an `error`
    /// event is left to the caller (it parses as an OpenAI error body).
    pub fn translate(&mut self, data: &str) -> Result<Translated, String> {
        let event: StreamEvent = serde_json::from_str(data).map_err(|e| e.to_string())?;
        let delta = match event {
            StreamEvent::MessageStart { message } => {
                self.id = message.id;
                self.model = message.model;
                self.prompt_tokens = message.usage.prompt_tokens();
                Delta { role: Some("assistant".to_owned()), ..Delta::default() }
            }
            StreamEvent::ContentBlockStart { index, content_block } => match content_block {
                Block::ToolUse { id, name, input } => {
                    let call = self.calls.len() as u32;
                    self.calls.push((index, call));
                    // The input arrives as deltas; a start that carries a
                    // whole non-empty object (no deltas follow) is kept.
                    let arguments = match input {
                        Value::Object(object) if !object.is_empty() => Some(Value::Object(object).to_string()),
                        _ => None,
                    };
                    let piece = WireToolCallDelta {
                        index: call,
                        id: Some(id),
                        kind: Some("function".to_owned()),
                        function: Some(WireFunctionDelta { name: Some(name), arguments }),
                    };
                    Delta { tool_calls: vec![piece], ..Delta::default() }
                }
                Block::Text { text } if !text.is_empty() => Delta { content: Some(text), ..Delta::default() },
                _ => return Ok(Translated::Nothing),
            },
            StreamEvent::ContentBlockDelta { index, delta } => match delta {
                BlockDelta::TextDelta { text } => Delta { content: Some(text), ..Delta::default() },
                BlockDelta::InputJsonDelta { partial_json } => {
                    let call = self
                        .calls
                        .iter()
                        .find(|(block, _)| *block == index)
                        .map(|(_, call)| *call)
                        .ok_or_else(|| format!("input for block {index}, which is not a tool_use block"))?;
                    let piece = WireToolCallDelta {
                        index: call,
                        function: Some(WireFunctionDelta { name: None, arguments: Some(partial_json) }),
                        ..WireToolCallDelta::default()
                    };
                    Delta { tool_calls: vec![piece], ..Delta::default() }
                }
                BlockDelta::Ignored => return Ok(Translated::Nothing),
            },
            StreamEvent::MessageDelta { delta, usage } => {
                let mut chunk = self.chunk(Delta::default(), delta.stop_reason.as_deref().map(finish_reason));
                if let Some(usage) = usage {
                    chunk.usage = Some(Usage::new(self.prompt_tokens.max(usage.prompt_tokens()), usage.output_tokens));
                }
                return Ok(Translated::Chunk(chunk));
            }
            StreamEvent::MessageStop => return Ok(Translated::Done),
            StreamEvent::Ignored => return Ok(Translated::Nothing),
        };
        Ok(Translated::Chunk(self.chunk(delta, None)))
    }

    fn chunk(&self, delta: Delta, finish: Option<&str>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".to_owned(),
            created: 0,
            model: self.model.clone(),
            choices: vec![ChunkChoice { index: 0, delta, finish_reason: finish.map(str::to_owned) }],
            usage: None,
        }
    }
}

#[cfg(test)]
mod tests;
