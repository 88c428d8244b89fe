//! OpenAI's tool-calling wire format (`tools`, `tool_calls`, `tool`
//! messages, streamed tool-call deltas) and its translation to and from the
//! agent loop's provider-neutral types ([`aios_shared::agent::tool_loop`]).
//!
//! A streamed reply sends each call in pieces: the first delta of a call
//! carries its `index`, `id` and function name, later ones append to its
//! `arguments` text. [`ToolCallAssembler`] puts them back together, and
//! refuses a stream that would grow without bound.

use aios_shared::agent::tool_loop::{Message, ModelReply, ProposedCall, Role, ToolDefinition};
use serde::{Deserialize, Serialize};

use super::openai::{MessageContent, ResponseMessage, WireMessage};

/// One entry of a request's `tools`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireTool {
    /// `function`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The function.
    pub function: WireFunction,
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireFunction {
    /// Its name.
    pub name: String,
    /// What it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON Schema of its arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<serde_json::Value>,
}

impl From<&ToolDefinition> for WireTool {
    fn from(tool: &ToolDefinition) -> WireTool {
        WireTool {
            kind: "function".to_owned(),
            function: WireFunction {
                name: tool.name.clone(),
                description: Some(tool.description.clone()),
                parameters: Some(tool.parameters.clone()),
            },
        }
    }
}

/// A call in an assistant message or a whole completion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireToolCall {
    /// The call's id, echoed by the `tool` message that answers it.
    pub id: String,
    /// `function`.
    #[serde(rename = "type", default = "function_kind")]
    pub kind: String,
    /// What is called, with what.
    pub function: WireFunctionCall,
}

fn function_kind() -> String {
    "function".to_owned()
}

/// The function and its arguments as JSON text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireFunctionCall {
    /// The function's name.
    pub name: String,
    /// The arguments: JSON text as the model wrote it.
    #[serde(default)]
    pub arguments: String,
}

/// A piece of a streamed call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireToolCallDelta {
    /// Which call of the reply this piece belongs to.
    pub index: u32,
    /// The call's id, on its first piece.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `function`, on its first piece.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The name (first piece) and more of the arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<WireFunctionDelta>,
}

/// A piece of a streamed call's function.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireFunctionDelta {
    /// The name, on the first piece.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// More of the arguments' text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

/// Most calls one streamed reply may carry.
pub const MAX_STREAMED_CALLS: usize = 64;
/// Most bytes of arguments all of a reply's calls together may carry.
pub const MAX_STREAMED_ARGUMENT_BYTES: usize = 1 << 20;

/// Puts a streamed reply's tool calls back together.
#[derive(Debug, Default)]
pub struct ToolCallAssembler {
    calls: Vec<WireToolCall>,
    bytes: usize,
}

/// A stream whose tool calls cannot be assembled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssembleError {
    /// A piece names a call after one that never started.
    #[error("tool call {index} arrived before call {expected}")]
    OutOfOrder {
        /// The piece's index.
        index: u32,
        /// The next index that could start.
        expected: u32,
    },
    /// More calls or argument bytes than a reply may carry.
    #[error("the streamed tool calls exceed {0}")]
    TooLarge(&'static str),
    /// A call ended without an id or a name.
    #[error("tool call {0} has no id or no name")]
    Incomplete(u32),
}

impl ToolCallAssembler {
    /// Adds one piece.
    pub fn push(&mut self, delta: &WireToolCallDelta) -> Result<(), AssembleError> {
        let index = delta.index as usize;
        if index > self.calls.len() {
            return Err(AssembleError::OutOfOrder { index: delta.index, expected: self.calls.len() as u32 });
        }
        if index == self.calls.len() {
            if self.calls.len() >= MAX_STREAMED_CALLS {
                return Err(AssembleError::TooLarge("64 calls"));
            }
            self.calls.push(WireToolCall {
                id: String::new(),
                kind: function_kind(),
                function: WireFunctionCall { name: String::new(), arguments: String::new() },
            });
        }
        let call = &mut self.calls[index];
        if let Some(id) = &delta.id {
            call.id.clone_from(id);
        }
        if let Some(function) = &delta.function {
            if let Some(name) = &function.name {
                call.function.name.push_str(name);
            }
            if let Some(arguments) = &function.arguments {
                self.bytes += arguments.len() + function.name.as_ref().map_or(0, String::len);
                if self.bytes > MAX_STREAMED_ARGUMENT_BYTES {
                    return Err(AssembleError::TooLarge("1 MiB of arguments"));
                }
                call.function.arguments.push_str(arguments);
            }
        }
        Ok(())
    }

    /// The calls, each with its id and name.
    pub fn finish(self) -> Result<Vec<WireToolCall>, AssembleError> {
        for (index, call) in self.calls.iter().enumerate() {
            if call.id.is_empty() || call.function.name.is_empty() {
                return Err(AssembleError::Incomplete(index as u32));
            }
        }
        Ok(self.calls)
    }
}

/// The agent loop's conversation as request messages.
pub fn wire_messages(messages: &[Message]) -> Vec<WireMessage> {
    messages
        .iter()
        .map(|message| WireMessage {
            role: match message.role {
                Role::System => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
                Role::Tool => "tool",
            }
            .to_owned(),
            content: message.content.clone().map(MessageContent::Text),
            tool_calls: message
                .calls
                .iter()
                .map(|call| WireToolCall {
                    id: call.id.clone(),
                    kind: function_kind(),
                    function: WireFunctionCall { name: call.name.clone(), arguments: call.arguments.clone() },
                })
                .collect(),
            tool_call_id: message.call_id.clone(),
        })
        .collect()
}

/// A reply as the agent loop journals it.
pub fn model_reply(message: &ResponseMessage) -> ModelReply {
    ModelReply {
        text: message.content.clone().filter(|text| !text.is_empty()),
        calls: message.tool_calls.iter().map(proposed).collect(),
        refusal: message.refusal.clone(),
    }
}

fn proposed(call: &WireToolCall) -> ProposedCall {
    ProposedCall { id: call.id.clone(), name: call.function.name.clone(), arguments: call.function.arguments.clone() }
}

#[cfg(test)]
mod tests {
    use aios_shared::agent::tool_loop::{transcript, CallOutcome, LoopEntry};
    use serde_json::json;

    use super::*;

    fn delta(index: u32, id: Option<&str>, name: Option<&str>, arguments: Option<&str>) -> WireToolCallDelta {
        WireToolCallDelta {
            index,
            id: id.map(str::to_owned),
            kind: id.map(|_| "function".to_owned()),
            function: Some(WireFunctionDelta {
                name: name.map(str::to_owned),
                arguments: arguments.map(str::to_owned),
            }),
        }
    }

    #[test]
    fn streamed_pieces_assemble_into_whole_calls() {
        // The pieces as OpenAI streams two parallel calls.
        let chunks = [
            r#"{"index":0,"id":"call_a","type":"function","function":{"name":"shop_lookup","arguments":""}}"#,
            r#"{"index":0,"function":{"arguments":"{\"order"}}"#,
            r#"{"index":0,"function":{"arguments":"_id\":\"A-1\"}"}}"#,
            r#"{"index":1,"id":"call_b","type":"function","function":{"name":"ask_human","arguments":"{\"question\":"}}"#,
            r#"{"index":1,"function":{"arguments":"\"ok?\"}"}}"#,
        ];
        let mut assembler = ToolCallAssembler::default();
        for chunk in chunks {
            assembler.push(&serde_json::from_str(chunk).expect("a delta")).expect("in order");
        }
        let calls = assembler.finish().expect("complete");
        assert_eq!(calls.len(), 2);
        assert_eq!((calls[0].id.as_str(), calls[0].function.name.as_str()), ("call_a", "shop_lookup"));
        assert_eq!(calls[0].function.arguments, r#"{"order_id":"A-1"}"#);
        assert_eq!(calls[1].function.arguments, r#"{"question":"ok?"}"#);
    }

    #[test]
    fn malformed_streams_are_refused() {
        let mut skipped = ToolCallAssembler::default();
        assert_eq!(
            skipped.push(&delta(1, Some("b"), Some("x"), None)),
            Err(AssembleError::OutOfOrder { index: 1, expected: 0 })
        );
        let mut nameless = ToolCallAssembler::default();
        nameless.push(&delta(0, Some("a"), None, Some("{}"))).expect("starts");
        assert_eq!(nameless.finish(), Err(AssembleError::Incomplete(0)));
        let mut huge = ToolCallAssembler::default();
        huge.push(&delta(0, Some("a"), Some("f"), Some(""))).expect("starts");
        let piece = "x".repeat(64 * 1024);
        let result = (0..20).try_for_each(|_| huge.push(&delta(0, None, None, Some(&piece))));
        assert!(matches!(result, Err(AssembleError::TooLarge(_))));
        let mut many = ToolCallAssembler::default();
        let result = (0..65).try_for_each(|i| many.push(&delta(i, Some("id"), Some("f"), Some("{}"))));
        assert!(matches!(result, Err(AssembleError::TooLarge(_))));
    }

    #[test]
    fn the_loop_transcript_becomes_openai_messages_and_back() {
        let reply: ResponseMessage = serde_json::from_value(json!({
            "role": "assistant",
            "content": null,
            "tool_calls": [{"id": "call_a", "type": "function", "function": {"name": "shop_lookup", "arguments": "{\"order_id\":\"A-1\"}"}}]
        }))
        .expect("a reply with tool calls");
        let reply = model_reply(&reply);
        assert_eq!(reply.text, None);
        assert_eq!(reply.calls[0].name, "shop_lookup");
        let journal = vec![
            LoopEntry::Model {
                iteration: 0,
                tier: "big".into(),
                reply,
                tokens_in: 1,
                tokens_out: 1,
                cost_usd: 0.0,
                latency_ms: 1,
                reason: String::new(),
                needs_review: false,
            },
            LoopEntry::Call {
                iteration: 0,
                index: 0,
                name: "shop_lookup".into(),
                arguments: json!({"order_id": "A-1"}),
                outcome: CallOutcome::Done { result: json!({"total": 40}) },
            },
        ];
        let wire = serde_json::to_value(wire_messages(&transcript("rules", "goal", &journal))).expect("JSON");
        assert_eq!(wire[2]["role"], "assistant");
        assert_eq!(wire[2]["tool_calls"][0]["function"]["name"], "shop_lookup");
        assert_eq!(wire[3]["role"], "tool");
        assert_eq!(wire[3]["tool_call_id"], "call_a");
        assert!(wire[3]["content"].as_str().expect("text").contains("\"total\":40"));
        // A plain message stays as it was on the wire: no empty tool fields.
        assert_eq!(wire[1], json!({"role": "user", "content": "goal"}));
        let refused: ResponseMessage =
            serde_json::from_value(json!({"role": "assistant", "content": null, "refusal": "no"})).expect("reads");
        assert_eq!(model_reply(&refused).refusal.as_deref(), Some("no"));
    }
}
