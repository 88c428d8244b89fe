//! The planner's Anthropic Messages endpoint (`POST /v1/messages`). It
//! checks a request as the API does (the `anthropic-version` header,
//! `max_tokens`, turns alternating from `user`, every `tool_use` answered by
//! a `tool_result` at the start of the next user turn, no result without its
//! call) and answers 400 in Anthropic's error shape when one fails; then it
//! shows the script the conversation in OpenAI's shape and answers with
//! content blocks, whole or as typed events (`message_start`,
//! `content_block_*` with the input JSON in two pieces, `ping`,
//! `message_delta` with the usage, `message_stop`).

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::Shared;

fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    (status, Json(json!({ "type": "error", "error": { "type": kind, "message": message } }))).into_response()
}

pub(super) async fn complete(State(shared): State<Shared>, headers: HeaderMap, Json(request): Json<Value>) -> Response {
    let view = match check(&headers, &request) {
        Ok(()) => openai_view(&request),
        Err(problem) => {
            shared.record(&request, &Value::Null, &headers);
            return error(StatusCode::BAD_REQUEST, "invalid_request_error", &problem);
        }
    };
    let position = shared.record(&request, &view, &headers);
    if !shared.available().await {
        return error(StatusCode::from_u16(529).expect("529"), "overloaded_error", "Overloaded");
    }
    let message = (shared.script)(&view);
    let (content, stop_reason) = blocks(&message);
    let input_tokens = request["messages"].to_string().len() / 4 + request["system"].to_string().len() / 4;
    let output_tokens = Value::Array(content.clone()).to_string().len() / 4;
    let model = request["model"].clone();
    shared.answered(position);
    if request["stream"] != json!(true) {
        return Json(json!({
            "id": "msg_scripted", "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop_reason, "stop_sequence": null,
            "usage": { "input_tokens": input_tokens, "output_tokens": output_tokens },
        }))
        .into_response();
    }
    let mut events = vec![json!({ "type": "message_start", "message": {
        "id": "msg_scripted", "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": null, "stop_sequence": null, "usage": { "input_tokens": input_tokens, "output_tokens": 1 },
    } })];
    for (index, block) in content.iter().enumerate() {
        match block["type"].as_str() {
            Some("text") => {
                events.push(json!({ "type": "content_block_start", "index": index,
                    "content_block": { "type": "text", "text": "" } }));
                events.push(json!({ "type": "ping" }));
                events.push(json!({ "type": "content_block_delta", "index": index,
                    "delta": { "type": "text_delta", "text": block["text"] } }));
            }
            _ => {
                let mut start = block.clone();
                start["input"] = json!({});
                events.push(json!({ "type": "content_block_start", "index": index, "content_block": start }));
                let input = block["input"].to_string();
                let (head, tail) = input.split_at(input.len() / 2);
                for piece in [head, tail] {
                    events.push(json!({ "type": "content_block_delta", "index": index,
                        "delta": { "type": "input_json_delta", "partial_json": piece } }));
                }
            }
        }
        events.push(json!({ "type": "content_block_stop", "index": index }));
    }
    events.push(json!({ "type": "message_delta", "delta": { "stop_reason": stop_reason, "stop_sequence": null },
        "usage": { "output_tokens": output_tokens } }));
    events.push(json!({ "type": "message_stop" }));
    let body: String = events
        .iter()
        .map(|event| format!("event: {}\ndata: {event}\n\n", event["type"].as_str().unwrap_or_default()))
        .collect();
    ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
}

/// The API's own checks of a request.
fn check(headers: &HeaderMap, request: &Value) -> Result<(), String> {
    if headers.get("anthropic-version").and_then(|v| v.to_str().ok()) != Some("2023-06-01") {
        return Err("anthropic-version: header is required".to_owned());
    }
    if headers.contains_key(header::AUTHORIZATION) {
        return Err("authentication goes in x-api-key".to_owned());
    }
    if request["max_tokens"].as_u64().is_none_or(|n| n < 1) {
        return Err("max_tokens: Field required".to_owned());
    }
    let turns = request["messages"].as_array().ok_or("messages: Field required")?;
    let mut expected = "user";
    let mut unanswered: Vec<String> = Vec::new();
    for (i, turn) in turns.iter().enumerate() {
        if turn["role"] != expected {
            return Err(format!("messages.{i}: roles must alternate between user and assistant, starting with user"));
        }
        let blocks = turn["content"].as_array().filter(|b| !b.is_empty());
        let blocks = blocks.ok_or(format!("messages.{i}: content must be a non-empty list of blocks"))?;
        if expected == "user" {
            let results: Vec<&str> = blocks
                .iter()
                .take_while(|b| b["type"] == "tool_result")
                .filter_map(|b| b["tool_use_id"].as_str())
                .collect();
            if results != unanswered {
                return Err(format!(
                    "messages.{i}: tool_use ids {unanswered:?} must each have a tool_result at the start of the next \
                     user turn, found {results:?}"
                ));
            }
            if blocks.iter().skip(results.len()).any(|b| b["type"] == "tool_result") {
                return Err(format!("messages.{i}: tool_result blocks must come first"));
            }
            unanswered.clear();
        } else {
            for block in blocks {
                if block["type"] == "tool_use" {
                    if !block["input"].is_object() {
                        return Err(format!("messages.{i}: tool_use.input must be an object"));
                    }
                    unanswered.push(block["id"].as_str().unwrap_or_default().to_owned());
                }
            }
        }
        expected = if expected == "user" { "assistant" } else { "user" };
    }
    if expected != "assistant" {
        return Err("the last message must be a user turn".to_owned());
    }
    Ok(())
}

/// The request as the script sees it: OpenAI's messages and tools.
fn openai_view(request: &Value) -> Value {
    let mut messages = Vec::new();
    if let Some(system) = request["system"].as_str() {
        messages.push(json!({ "role": "system", "content": system }));
    }
    for turn in request["messages"].as_array().into_iter().flatten() {
        let blocks = turn["content"].as_array().cloned().unwrap_or_default();
        let text: String = blocks.iter().filter(|b| b["type"] == "text").filter_map(|b| b["text"].as_str()).collect();
        if turn["role"] == "assistant" {
            let calls: Vec<Value> = blocks
                .iter()
                .filter(|b| b["type"] == "tool_use")
                .map(|b| {
                    json!({ "id": b["id"], "type": "function",
                    "function": { "name": b["name"], "arguments": b["input"].to_string() } })
                })
                .collect();
            let content = if text.is_empty() { Value::Null } else { Value::String(text) };
            messages.push(json!({ "role": "assistant", "content": content, "tool_calls": calls }));
            continue;
        }
        for result in blocks.iter().filter(|b| b["type"] == "tool_result") {
            messages
                .push(json!({ "role": "tool", "tool_call_id": result["tool_use_id"], "content": result["content"] }));
        }
        if !text.is_empty() {
            messages.push(json!({ "role": "user", "content": text }));
        }
    }
    let tools: Vec<Value> = request["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            json!({ "type": "function", "function": {
            "name": t["name"], "description": t["description"], "parameters": t["input_schema"] } })
        })
        .collect();
    json!({ "model": request["model"], "messages": messages, "tools": tools, "stream": request["stream"] })
}

/// A script's OpenAI-shaped reply as content blocks and a stop reason.
fn blocks(message: &Value) -> (Vec<Value>, &'static str) {
    let mut content = Vec::new();
    if let Some(refusal) = message["refusal"].as_str() {
        content.push(json!({ "type": "text", "text": refusal }));
        return (content, "refusal");
    }
    if let Some(text) = message["content"].as_str().filter(|t| !t.is_empty()) {
        content.push(json!({ "type": "text", "text": text }));
    }
    let calls = message["tool_calls"].as_array().cloned().unwrap_or_default();
    for call in &calls {
        let arguments = call["function"]["arguments"].as_str().unwrap_or("{}");
        // The API always sends an object; a script's malformed arguments
        // arrive as the object's text under one key.
        let input = serde_json::from_str::<Value>(arguments)
            .ok()
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({ "unparsed": arguments }));
        content.push(json!({ "type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": input }));
    }
    (content, if calls.is_empty() { "end_turn" } else { "tool_use" })
}
