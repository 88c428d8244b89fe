//! Tool calling and structured output on the gateway's local model.
//!
//! `tools` with `tool_choice` `auto` (the default), `required` or one named
//! function: the tools are described in the system message and the reply is
//! generated under the schema of one call of an allowed tool with valid
//! arguments (or, with `auto`, an answer), the way the edge's own agents
//! plan locally (`aios_shared::agent::tool_loop::local`). The reply is
//! OpenAI's: `tool_calls` with `finish_reason: "tool_calls"`, or text.
//! Earlier calls (`assistant` messages with `tool_calls`) and their results
//! (`tool` messages) go back into the conversation. `response_format`
//! `json_object` or `json_schema` constrains a text reply the same way.

use aios_models::OutputConstraint;
use aios_shared::agent::tool_loop::{local, valid_tool_name, Message, ModelReply, ProposedCall, Role, ToolDefinition};
use serde_json::Value;

use super::chat::completion_id;
use super::stream::sse_event;
use super::*;
use crate::model_calls::openai::{ResponseFormat, WireMessage};
use crate::model_calls::tools::{WireFunctionCall, WireFunctionDelta, WireToolCall, WireToolCallDelta};

/// The tools a request lets the local model call, and whether it may answer instead.
pub(super) struct LocalTools {
    tools: Vec<ToolDefinition>,
    may_answer: bool,
}

/// Most tools one request may offer.
const MAX_TOOLS: usize = 64;

/// The tools of `request`, or `None` when it offers none (or `tool_choice`
/// is `none`). A tool without a valid name or an unknown `tool_choice` is a 400.
pub(super) fn local_tools(request: &ChatCompletionRequest) -> Result<Option<LocalTools>, OpenAiError> {
    if request.tools.is_empty() {
        if request.tool_choice.as_ref().is_some_and(|choice| choice != "none") {
            return Err(OpenAiError::invalid(Some("tool_choice"), "`tool_choice` needs `tools`"));
        }
        return Ok(None);
    }
    if request.tools.len() > MAX_TOOLS {
        return Err(OpenAiError::invalid(Some("tools"), format!("at most {MAX_TOOLS} tools are supported")));
    }
    let mut tools = Vec::with_capacity(request.tools.len());
    for tool in &request.tools {
        if tool.kind != "function" {
            return Err(OpenAiError::invalid(
                Some("tools"),
                format!("tools of type `{}` are not supported", tool.kind),
            ));
        }
        let name = &tool.function.name;
        if !valid_tool_name(name) {
            return Err(OpenAiError::invalid(Some("tools"), format!("`{name}` is not a valid function name")));
        }
        let parameters = tool.function.parameters.clone().unwrap_or_else(|| serde_json::json!({ "type": "object" }));
        tools.push(ToolDefinition {
            name: name.clone(),
            description: tool.function.description.clone().unwrap_or_default(),
            parameters,
        });
    }
    let (tools, may_answer) = match &request.tool_choice {
        None => (tools, true),
        Some(Value::String(choice)) => match choice.as_str() {
            "auto" => (tools, true),
            "required" => (tools, false),
            "none" => return Ok(None),
            other => return Err(OpenAiError::invalid(Some("tool_choice"), format!("unknown tool_choice `{other}`"))),
        },
        Some(choice) => {
            let name = choice["function"]["name"].as_str().unwrap_or_default();
            let chosen: Vec<ToolDefinition> = tools.into_iter().filter(|tool| tool.name == name).collect();
            if chosen.is_empty() {
                return Err(OpenAiError::invalid(Some("tool_choice"), format!("no tool named `{name}`")));
            }
            (chosen, false)
        }
    };
    Ok(Some(LocalTools { tools, may_answer }))
}

impl LocalTools {
    /// What the generation must produce.
    pub(super) fn constraint(&self) -> OutputConstraint {
        OutputConstraint::JsonSchema(local::call_schema(&self.tools, self.may_answer))
    }

    /// The conversation for the local model: the tools in the system
    /// message, earlier calls as the JSON the model writes, tool results as
    /// data.
    pub(super) fn conversation(&self, messages: &[WireMessage]) -> Result<Vec<ChatMessage>, OpenAiError> {
        let mut transcript = Vec::with_capacity(messages.len() + 1);
        if !messages.first().is_some_and(|m| m.role == "system" || m.role == "developer") {
            transcript.push(Message {
                role: Role::System,
                content: Some("You are a helpful assistant.".into()),
                calls: Vec::new(),
                call_id: None,
            });
        }
        for message in messages {
            let text = message.text().map_err(|reason| OpenAiError::invalid(Some("messages"), reason))?;
            let role = match message.role.as_str() {
                "system" | "developer" => Role::System,
                "user" => Role::User,
                "assistant" => Role::Assistant,
                "tool" => Role::Tool,
                other => {
                    return Err(OpenAiError::invalid(
                        Some("messages"),
                        format!("messages with role `{other}` are not supported"),
                    ))
                }
            };
            let calls = message
                .tool_calls
                .iter()
                .map(|call| ProposedCall {
                    id: call.id.clone(),
                    name: call.function.name.clone(),
                    arguments: call.function.arguments.clone(),
                })
                .collect();
            let content = (!text.is_empty() || role != Role::Assistant).then_some(text);
            transcript.push(Message { role, content, calls, call_id: message.tool_call_id.clone() });
        }
        Ok(local::conversation(&transcript, &self.tools)
            .into_iter()
            .map(|message| match message.role {
                Role::System => ChatMessage::system(message.text),
                Role::Assistant => ChatMessage::assistant(message.text),
                Role::User | Role::Tool => ChatMessage::user(message.text),
            })
            .collect())
    }
}

/// The constraint `response_format` asks for, if any.
pub(super) fn format_constraint(request: &ChatCompletionRequest) -> Result<Option<OutputConstraint>, OpenAiError> {
    Ok(match &request.response_format {
        None | Some(ResponseFormat::Text) => None,
        Some(ResponseFormat::JsonObject) => Some(OutputConstraint::JsonObject),
        Some(ResponseFormat::JsonSchema { json_schema }) => match &json_schema.schema {
            Some(schema) if schema.is_object() => Some(OutputConstraint::JsonSchema(schema.clone())),
            Some(_) => return Err(OpenAiError::invalid(Some("response_format"), "the schema must be a JSON object")),
            None => Some(OutputConstraint::JsonObject),
        },
    })
}

/// A constrained tool reply as OpenAI's message and finish reason.
pub(super) fn reply_message(text: &str) -> (ResponseMessage, &'static str) {
    let reply: ModelReply = local::parse_reply(text, 0);
    match reply.calls.first() {
        Some(call) if reply.text.is_none() && call.name != "unfinished_reply" => {
            let call = WireToolCall {
                id: format!("call_{:016x}", rand::random::<u64>()),
                kind: "function".to_owned(),
                function: WireFunctionCall { name: call.name.clone(), arguments: call.arguments.clone() },
            };
            let message =
                ResponseMessage { role: "assistant".to_owned(), content: None, tool_calls: vec![call], refusal: None };
            (message, "tool_calls")
        }
        // Cut off before the reply was complete: the text as it stands.
        Some(_) => (
            ResponseMessage { role: "assistant".into(), content: Some(text.to_owned()), ..Default::default() },
            "length",
        ),
        None => {
            let answer = reply.text.unwrap_or_default();
            (ResponseMessage { role: "assistant".into(), content: Some(answer), ..Default::default() }, "stop")
        }
    }
}

/// The events of a streamed tool reply, generated whole first (whether it
/// is a call is known only at its end): the role, the call (its name, then
/// its arguments), the finish reason, and the usage when asked for.
pub(super) fn tool_reply_events(
    id: &str,
    created: u64,
    model: &str,
    message: &ResponseMessage,
    finish: &str,
    usage: Option<Usage>,
) -> Vec<Bytes> {
    let chunk = |delta: Delta, finish_reason: Option<&str>| {
        sse_event(&ChatCompletionChunk {
            id: id.to_owned(),
            object: "chat.completion.chunk".to_owned(),
            created,
            model: model.to_owned(),
            choices: vec![ChunkChoice { index: 0, delta, finish_reason: finish_reason.map(str::to_owned) }],
            usage: None,
        })
    };
    let mut events = vec![chunk(Delta { role: Some("assistant".into()), ..Delta::default() }, None)];
    for (index, call) in message.tool_calls.iter().enumerate() {
        let first = WireToolCallDelta {
            index: index as u32,
            id: Some(call.id.clone()),
            kind: Some("function".into()),
            function: Some(WireFunctionDelta {
                name: Some(call.function.name.clone()),
                arguments: Some(String::new()),
            }),
        };
        events.push(chunk(Delta { tool_calls: vec![first], ..Delta::default() }, None));
        let rest = WireToolCallDelta {
            index: index as u32,
            function: Some(WireFunctionDelta { name: None, arguments: Some(call.function.arguments.clone()) }),
            ..WireToolCallDelta::default()
        };
        events.push(chunk(Delta { tool_calls: vec![rest], ..Delta::default() }, None));
    }
    if let Some(content) = &message.content {
        events.push(chunk(Delta { content: Some(content.clone()), ..Delta::default() }, None));
    }
    events.push(chunk(Delta::default(), Some(finish)));
    if let Some(usage) = usage {
        events.push(sse_event(&ChatCompletionChunk {
            id: id.to_owned(),
            object: "chat.completion.chunk".to_owned(),
            created,
            model: model.to_owned(),
            choices: Vec::new(),
            usage: Some(usage),
        }));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    events
}

/// Answers a request with tools on the local model: the whole reply as a
/// `chat.completion`, or its events when the client asked for a stream.
pub(super) async fn tool_completion(
    mut recorder: CallRecorder,
    model: ChatModel,
    generate: GenerateRequest,
    request: ChatCompletionRequest,
) -> Response {
    let generation = match model.generate(generate).await {
        Ok(generation) => generation,
        Err(error) => return recorder.fail(OpenAiError::from_model(error)),
    };
    recorder.tokens(generation.prompt_tokens as u64, generation.completion_tokens as u64);
    let usage = Usage::new(generation.prompt_tokens as u64, generation.completion_tokens as u64);
    let (message, finish) = reply_message(&generation.text);
    let (id, created) = (completion_id(), unix_seconds(&recorder.state.clock));
    recorder.report(StatusCode::OK, GatewayOutcome::Completed);
    if request.stream {
        let usage = request.include_usage().then_some(usage);
        let body: Vec<u8> = tool_reply_events(&id, created, &request.model, &message, finish, usage).concat();
        return ([(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")], body)
            .into_response();
    }
    let response = ChatCompletionResponse {
        id,
        object: "chat.completion".to_owned(),
        created,
        model: request.model,
        choices: vec![Choice { index: 0, message, finish_reason: Some(finish.to_owned()) }],
        usage: Some(usage),
    };
    Json(response).into_response()
}
