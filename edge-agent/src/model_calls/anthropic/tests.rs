use serde_json::json;

use super::*;
use crate::model_calls::openai::{Stop, WireMessage};
use crate::model_calls::tools::{ToolCallAssembler, WireFunction, WireTool};

fn call(id: &str, name: &str, arguments: &str) -> WireToolCall {
    WireToolCall {
        id: id.to_owned(),
        kind: "function".to_owned(),
        function: WireFunctionCall { name: name.to_owned(), arguments: arguments.to_owned() },
    }
}

#[test]
fn a_tool_conversation_becomes_alternating_turns_of_blocks() {
    let mut assistant = WireMessage::new("assistant", "");
    assistant.tool_calls = vec![call("c1", "lookup", r#"{"order":"A-1"}"#), call("c2", "lookup", "not json")];
    let mut first = WireMessage::new("tool", r#"{"total":40}"#);
    first.tool_call_id = Some("c1".into());
    let mut second = WireMessage::new("tool", "the arguments were not JSON");
    second.tool_call_id = Some("c2".into());
    let request = ChatCompletionRequest {
        model: "claude-x".into(),
        messages: vec![
            WireMessage::new("system", "Be careful."),
            WireMessage::new("developer", "Data is data."),
            WireMessage::new("user", "Refund A-1"),
            assistant,
            first,
            second,
        ],
        stop: Some(Stop::One("END".into())),
        tools: vec![WireTool {
            kind: "function".into(),
            function: WireFunction {
                name: "lookup".into(),
                description: Some("Find an order".into()),
                parameters: None,
            },
        }],
        tool_choice: Some(json!("required")),
        stream: true,
        ..ChatCompletionRequest::default()
    };
    let messages = request_json(&request);
    assert_eq!(
        messages,
        json!({
            "model": "claude-x",
            "max_tokens": DEFAULT_MAX_TOKENS,
            "system": "Be careful.\n\nData is data.",
            "messages": [
                { "role": "user", "content": [{ "type": "text", "text": "Refund A-1" }] },
                { "role": "assistant", "content": [
                    { "type": "tool_use", "id": "c1", "name": "lookup", "input": { "order": "A-1" } },
                    { "type": "tool_use", "id": "c2", "name": "lookup", "input": { "unparsed_arguments": "not json" } },
                ] },
                { "role": "user", "content": [
                    { "type": "tool_result", "tool_use_id": "c1", "content": "{\"total\":40}" },
                    { "type": "tool_result", "tool_use_id": "c2", "content": "the arguments were not JSON" },
                ] },
            ],
            "stop_sequences": ["END"],
            "tools": [{ "name": "lookup", "description": "Find an order", "input_schema": { "type": "object" } }],
            "tool_choice": { "type": "any" },
            "stream": true,
        })
    );
}

fn request_json(request: &ChatCompletionRequest) -> Value {
    serde_json::to_value(super::request(request).unwrap()).unwrap()
}

#[test]
fn an_empty_message_leaves_the_turns_alternating() {
    let request = ChatCompletionRequest {
        messages: vec![
            WireMessage::new("user", "first"),
            WireMessage::new("assistant", ""),
            WireMessage::new("user", "second"),
        ],
        ..ChatCompletionRequest::default()
    };
    let turns = request_json(&request)["messages"].clone();
    assert_eq!(
        turns,
        json!([{ "role": "user", "content": [{ "type": "text", "text": "first" }, { "type": "text", "text": "second" }] }])
    );
}

#[test]
fn what_messages_cannot_say_is_refused() {
    let mut orphan = WireMessage::new("tool", "result");
    orphan.tool_call_id = None;
    let base = ChatCompletionRequest { messages: vec![WireMessage::new("user", "hi")], ..Default::default() };
    let cases = [
        (ChatCompletionRequest { messages: vec![orphan], ..base.clone() }, "a tool message has no tool_call_id"),
        (
            ChatCompletionRequest { response_format: Some(ResponseFormat::JsonObject), ..base.clone() },
            "an anthropic tier takes no response_format",
        ),
        (ChatCompletionRequest { n: Some(2), ..base.clone() }, "an anthropic tier returns one choice"),
        (
            ChatCompletionRequest { messages: vec![WireMessage::new("oracle", "x")], ..base.clone() },
            "message role `oracle` has no Messages equivalent",
        ),
    ];
    for (request, expected) in cases {
        assert_eq!(super::request(&request).unwrap_err(), expected);
    }
    let named = json!({ "type": "function", "function": { "name": "lookup" } });
    assert_eq!(tool_choice(&named).unwrap(), json!({ "type": "tool", "name": "lookup" }));
    assert_eq!(tool_choice(&json!("none")).unwrap(), json!({ "type": "none" }));
    assert!(tool_choice(&json!("sometimes")).is_err());
}

#[test]
fn a_whole_reply_becomes_a_chat_completion() {
    let reply: MessagesResponse = serde_json::from_value(json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [
            { "type": "thinking", "thinking": "...", "signature": "s" },
            { "type": "text", "text": "Looking it up." },
            { "type": "tool_use", "id": "toolu_1", "name": "lookup", "input": { "order": "A-1" } },
        ],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": { "input_tokens": 100, "output_tokens": 20, "cache_read_input_tokens": 50 },
    }))
    .unwrap();
    let completion = response(reply);
    let choice = &completion.choices[0];
    assert_eq!(choice.message.content.as_deref(), Some("Looking it up."));
    assert_eq!(choice.message.tool_calls, vec![call("toolu_1", "lookup", r#"{"order":"A-1"}"#)]);
    assert_eq!(choice.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(completion.usage, Some(Usage::new(150, 20)));
    let refused: MessagesResponse = serde_json::from_value(json!({
        "id": "msg_2", "model": "claude-x", "content": [], "stop_reason": "refusal",
        "usage": { "input_tokens": 1, "output_tokens": 0 },
    }))
    .unwrap();
    let refused = response(refused);
    assert_eq!(refused.choices[0].message.refusal.as_deref(), Some("the model declined"));
    assert_eq!(refused.choices[0].message.content, None);
}

#[test]
fn a_stream_of_events_becomes_chunks_with_assembled_calls() {
    let events = [
        json!({ "type": "message_start", "message": { "id": "msg_1", "type": "message", "role": "assistant",
            "model": "claude-x", "content": [], "usage": { "input_tokens": 30, "output_tokens": 1 } } }),
        json!({ "type": "content_block_start", "index": 0, "content_block": { "type": "text", "text": "" } }),
        json!({ "type": "ping" }),
        json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "text_delta", "text": "Let me " } }),
        json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "text_delta", "text": "check." } }),
        json!({ "type": "content_block_stop", "index": 0 }),
        json!({ "type": "content_block_start", "index": 1,
            "content_block": { "type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {} } }),
        json!({ "type": "content_block_delta", "index": 1, "delta": { "type": "input_json_delta", "partial_json": "{\"order\": " } }),
        json!({ "type": "content_block_delta", "index": 1, "delta": { "type": "input_json_delta", "partial_json": "\"A-1\"}" } }),
        json!({ "type": "content_block_stop", "index": 1 }),
        json!({ "type": "content_block_start", "index": 2,
            "content_block": { "type": "tool_use", "id": "toolu_2", "name": "status", "input": {} } }),
        json!({ "type": "content_block_stop", "index": 2 }),
        json!({ "type": "message_delta", "delta": { "stop_reason": "tool_use" }, "usage": { "output_tokens": 42 } }),
        json!({ "type": "message_stop" }),
    ];
    let mut translator = StreamTranslator::default();
    let mut calls = ToolCallAssembler::default();
    let (mut text, mut finish, mut usage, mut done) = (String::new(), None, None, false);
    for event in events {
        match translator.translate(&event.to_string()).unwrap() {
            Translated::Chunk(chunk) => {
                assert_eq!((chunk.id.as_str(), chunk.model.as_str()), ("msg_1", "claude-x"));
                usage = chunk.usage.or(usage);
                for choice in chunk.choices {
                    text.push_str(choice.delta.content.as_deref().unwrap_or_default());
                    finish = choice.finish_reason.or(finish);
                    for piece in &choice.delta.tool_calls {
                        calls.push(piece).unwrap();
                    }
                }
            }
            Translated::Nothing => {}
            Translated::Done => done = true,
        }
    }
    assert!(done);
    assert_eq!(text, "Let me check.");
    assert_eq!(finish.as_deref(), Some("tool_calls"));
    assert_eq!(usage, Some(Usage::new(30, 42)));
    assert_eq!(
        calls.finish().unwrap(),
        vec![call("toolu_1", "lookup", r#"{"order": "A-1"}"#), call("toolu_2", "status", "")]
    );
    let stray = json!({ "type": "content_block_delta", "index": 7, "delta": { "type": "input_json_delta", "partial_json": "{" } });
    assert_eq!(
        translator.translate(&stray.to_string()).unwrap_err(),
        "input for block 7, which is not a tool_use block"
    );
    assert!(translator.translate("not json").is_err());
}
