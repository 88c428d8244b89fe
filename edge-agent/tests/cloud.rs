//! The cloud client against a real HTTP server on loopback that speaks the
//! OpenAI wire format and misbehaves on request: whole and streamed replies,
//! embeddings, 500, 429 with `Retry-After`, 401 echoing the key, a hang
//! before the headers, a stall mid-stream, a body that is not JSON, a stream
//! that breaks off, and a refused connection; tool calls whole and
//! streamed in pieces, sent back with their observations.

use std::time::{Duration, Instant};

use aios_edge_agent::model_calls::cloud::{CloudClient, CloudConfig, CloudError, Credential, Protocol};
use aios_edge_agent::model_calls::openai::{ChatCompletionRequest, EmbeddingInput, EmbeddingsRequest, WireMessage};
use aios_shared::router::TokenCount;
use axum::body::Body;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

const KEY: &str = "sk-test-secret";
const TIMEOUT: Duration = Duration::from_millis(400);

fn sse(events: &[Value]) -> String {
    let mut body: String = events.iter().map(|event| format!("data: {event}\n\n")).collect();
    body.push_str("data: [DONE]\n\n");
    body
}

fn chunk(content: Option<&str>, finish: Option<&str>) -> Value {
    let delta = match content {
        Some(text) => json!({"content": text}),
        None => json!({"role": "assistant"}),
    };
    json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "fake-large",
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
}

fn event_stream(body: Body) -> Response {
    ([("content-type", "text/event-stream")], body).into_response()
}

async fn chat(Path(mode): Path<String>, headers: HeaderMap, Json(request): Json<Value>) -> Response {
    let authorised = headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {KEY}"));
    let streamed = request["stream"] == json!(true);
    match mode.as_str() {
        _ if !authorised || mode == "unauthorised" => (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": {"message": format!("Incorrect API key provided: {KEY}"), "type": "invalid_request_error", "code": "invalid_api_key"}})),
        )
            .into_response(),
        "ok" if streamed => {
            assert_eq!(request["stream_options"]["include_usage"], json!(true));
            let mut usage = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                                   "model": "fake-large", "choices": []});
            usage["usage"] = json!({"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15});
            let body = sse(&[
                chunk(None, None),
                chunk(Some("Hello"), None),
                chunk(Some(", "), None),
                chunk(Some("world"), Some("stop")),
                usage,
            ]);
            event_stream(Body::from(body))
        }
        "ok" => {
            let user = request["messages"][0]["content"].as_str().unwrap_or_default();
            Json(json!({
                "id": "chatcmpl-2", "object": "chat.completion", "created": 1, "model": request["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("echo: {user}")},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
            }))
            .into_response()
        }
        "fail" => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": {"message": "the model is overloaded", "type": "server_error"}})),
        )
            .into_response(),
        "limited" => {
            (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "2")], "slow down").into_response()
        }
        "hang" => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            StatusCode::OK.into_response()
        }
        "stall" => {
            // One chunk at once, then silence.
            let first = sse(&[chunk(Some("partial"), None)]).replace("data: [DONE]\n\n", "");
            let stream = futures_util::stream::unfold(0, move |step| {
                let first = first.clone();
                async move {
                    if step > 0 {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                    Some((Ok::<_, std::io::Error>(first), step + 1))
                }
            });
            event_stream(Body::from_stream(stream))
        }
        "tools" => tool_reply(&request, streamed),
        "garbage" => "this is not json".into_response(),
        "cut" => event_stream(Body::from(format!("data: {}\n\n", chunk(Some("half"), None)))),
        other => (StatusCode::NOT_FOUND, format!("no mode {other}")).into_response(),
    }
}

/// A model that calls `shop_lookup` first, then answers from the tool's
/// observation (which must come back as a `tool` message answering its call).
fn tool_reply(request: &Value, streamed: bool) -> Response {
    assert_eq!(request["tools"][0]["type"], "function");
    assert_eq!(request["tools"][0]["function"]["name"], "shop_lookup");
    let messages = request["messages"].as_array().cloned().unwrap_or_default();
    let observation = messages.iter().find(|m| m["role"] == "tool");
    if let Some(observation) = observation {
        assert_eq!(observation["tool_call_id"], "call_a");
        let assistant = messages.iter().find(|m| m["role"] == "assistant").expect("the turn that called");
        assert_eq!(assistant["tool_calls"][0]["function"]["arguments"], r#"{"order_id":"A-1"}"#);
        let text = format!("The order: {}", observation["content"].as_str().unwrap_or_default());
        return Json(json!({
            "id": "chatcmpl-4", "object": "chat.completion", "created": 1, "model": "fake-large",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 6, "total_tokens": 36}
        }))
        .into_response();
    }
    if !streamed {
        return Json(json!({
            "id": "chatcmpl-3", "object": "chat.completion", "created": 1, "model": "fake-large",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "shop_lookup", "arguments": "{\"order_id\":\"A-1\"}"}}
            ]}, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29}
        }))
        .into_response();
    }
    let piece = |delta: Value, finish: Option<&str>| {
        json!({"id": "chatcmpl-3", "object": "chat.completion.chunk", "created": 1, "model": "fake-large",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut usage = json!({"id": "chatcmpl-3", "object": "chat.completion.chunk", "created": 1,
                           "model": "fake-large", "choices": []});
    usage["usage"] = json!({"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29});
    event_stream(Body::from(sse(&[
        piece(
            json!({"role": "assistant", "content": null, "tool_calls": [
            {"index": 0, "id": "call_a", "type": "function", "function": {"name": "shop_lookup", "arguments": ""}}]}),
            None,
        ),
        piece(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"order"}}]}), None),
        piece(json!({"tool_calls": [{"index": 0, "function": {"arguments": "_id\":\"A-1\"}"}}]}), Some("tool_calls")),
        usage,
    ])))
}

async fn embeddings(Json(request): Json<Value>) -> Json<Value> {
    assert_eq!(request["encoding_format"], json!("float"));
    let inputs = request["input"].as_array().cloned().unwrap_or_else(|| vec![request["input"].clone()]);
    // Answer out of order: the client must sort by index.
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .rev()
        .map(|(index, _)| json!({"object": "embedding", "index": index, "embedding": [index as f32, 0.5]}))
        .collect();
    Json(json!({"object": "list", "data": data, "model": request["model"],
                "usage": {"prompt_tokens": 4, "total_tokens": 4}}))
}

/// Starts the fake endpoint; returns its address.
async fn serve() -> std::net::SocketAddr {
    let app =
        Router::new().route("/{mode}/v1/chat/completions", post(chat)).route("/{mode}/v1/embeddings", post(embeddings));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

fn client(address: std::net::SocketAddr, mode: &str) -> CloudClient {
    CloudClient::new(CloudConfig {
        protocol: Protocol::OpenAi,
        stream: false,
        base_url: format!("http://{address}/{mode}/v1"),
        model: "fake-large".to_owned(),
        timeout: TIMEOUT,
        credential: Some(Credential::new(KEY).unwrap()),
    })
    .unwrap()
}

fn request(text: &str) -> ChatCompletionRequest {
    ChatCompletionRequest { messages: vec![WireMessage::new("user", text)], max_tokens: Some(8), ..Default::default() }
}

#[tokio::test]
async fn whole_and_streamed_replies_with_usage() {
    let address = serve().await;
    let ok = client(address, "ok");
    let reply = ok.chat(request("ping")).await.unwrap();
    assert_eq!(reply.text, "echo: ping");
    assert_eq!(reply.model, "fake-large", "the configured model fills an empty `model`");
    assert_eq!(reply.finish_reason.as_deref(), Some("stop"));
    assert_eq!(reply.tokens(), Some(TokenCount { input: 9, output: 2 }));

    let mut stream = ok.chat_stream(request("ping")).await.unwrap();
    let mut pieces = Vec::new();
    while let Some(piece) = stream.next_delta().await.unwrap() {
        pieces.push(piece);
    }
    assert_eq!(pieces, ["Hello", ", ", "world"]);
    assert_eq!(stream.usage().map(|usage| usage.total_tokens), Some(15));
    let whole = ok.chat_stream(request("ping")).await.unwrap().finish().await.unwrap();
    assert_eq!(whole.text, "Hello, world");
    assert_eq!(whole.tokens(), Some(TokenCount { input: 12, output: 3 }));
    assert_eq!(whole.id, "chatcmpl-1");

    let vectors = ok
        .embeddings(EmbeddingsRequest {
            model: String::new(),
            input: EmbeddingInput::Many(vec!["a".into(), "b".into(), "c".into()]),
            encoding_format: None,
        })
        .await
        .unwrap();
    assert_eq!(vectors.vectors, vec![vec![0.0, 0.5], vec![1.0, 0.5], vec![2.0, 0.5]]);
    assert_eq!(vectors.usage.prompt_tokens, 4);
}

#[tokio::test]
async fn errors_name_the_endpoint_and_say_whether_to_retry() {
    let address = serve().await;
    let base = format!("http://{address}");

    let error = client(address, "fail").chat(request("x")).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("{base}/fail/v1/chat/completions answered HTTP 500: the model is overloaded")
    );
    assert!(error.is_retryable() && error.counts_against_breaker());

    let error = client(address, "limited").chat_stream(request("x")).await.unwrap_err();
    assert_eq!(error.to_string(), format!("{base}/limited/v1/chat/completions answered HTTP 429: slow down"));
    assert!(error.is_retryable() && !error.counts_against_breaker());
    assert_eq!(error.retry_after(), Some(Duration::from_secs(2)));

    let error = client(address, "unauthorised").chat(request("x")).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("{base}/unauthorised/v1/chat/completions answered HTTP 401: Incorrect API key provided: ***")
    );
    assert!(!error.is_retryable() && !format!("{error:?}").contains(KEY));

    let error = client(address, "garbage").chat(request("x")).await.unwrap_err();
    assert!(matches!(error, CloudError::Malformed { .. }), "{error}");
    assert!(error.to_string().starts_with(&format!("malformed response from {base}/garbage/v1/chat/completions: ")));
    assert!(!error.is_retryable());

    let error = client(address, "cut").chat_stream(request("x")).await.unwrap().finish().await.unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "the response from {base}/cut/v1/chat/completions broke off: the stream ended before the reply finished"
        )
    );
    assert!(error.is_retryable());
}

#[tokio::test]
async fn deadlines_cover_the_wait_for_headers_and_each_gap_in_a_stream() {
    let address = serve().await;
    let started = Instant::now();
    let error = client(address, "hang").chat(request("x")).await.unwrap_err();
    assert!(matches!(error, CloudError::Timeout { .. }), "{error}");
    assert_eq!(error.to_string(), format!("http://{address}/hang/v1/chat/completions did not answer within 400 ms"));
    assert!(error.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(10));

    let mut stream = client(address, "stall").chat_stream(request("x")).await.unwrap();
    assert_eq!(stream.next_delta().await.unwrap().as_deref(), Some("partial"));
    let error = stream.next_delta().await.unwrap_err();
    assert!(matches!(error, CloudError::Timeout { .. }), "{error}");
}

#[tokio::test]
async fn refused_connections_are_retryable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let error = client(address, "ok").chat(request("x")).await.unwrap_err();
    assert!(matches!(error, CloudError::Connect { .. }), "{error}");
    assert!(error.to_string().starts_with(&format!("cannot connect to http://{address}/ok/v1/chat/completions: ")));
    assert!(error.is_retryable());
}

#[tokio::test]
async fn tool_calls_whole_and_streamed_and_their_observations() {
    use aios_edge_agent::model_calls::tools::{wire_messages, WireTool};
    use aios_shared::agent::tool_loop::{transcript, CallOutcome, LoopEntry, ToolDefinition};

    let address = serve().await;
    let tools = client(address, "tools");
    let definition = ToolDefinition {
        name: "shop_lookup".into(),
        description: "Look an order up".into(),
        parameters: json!({"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}),
    };
    let ask = |messages| ChatCompletionRequest {
        messages,
        tools: vec![WireTool::from(&definition)],
        tool_choice: Some(json!("auto")),
        ..Default::default()
    };
    let goal = transcript("rules", "Look up order A-1", &[]);
    let whole = tools.chat(ask(wire_messages(&goal))).await.expect("a whole reply");
    let streamed = tools.chat_stream(ask(wire_messages(&goal))).await.expect("a stream").finish().await.expect("ends");
    for completion in [&whole, &streamed] {
        assert_eq!(completion.finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(completion.tokens(), Some(TokenCount { input: 20, output: 9 }));
        let reply = completion.reply();
        assert_eq!(reply.text, None);
        assert_eq!(reply.calls.len(), 1);
        assert_eq!((reply.calls[0].id.as_str(), reply.calls[0].name.as_str()), ("call_a", "shop_lookup"));
        assert_eq!(reply.calls[0].arguments, r#"{"order_id":"A-1"}"#);
    }
    let journal = vec![
        LoopEntry::Model {
            iteration: 0,
            tier: "big".into(),
            reply: whole.reply(),
            tokens_in: 20,
            tokens_out: 9,
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
    let answer =
        tools.chat(ask(wire_messages(&transcript("rules", "Look up order A-1", &journal)))).await.expect("answers");
    assert!(answer.text.contains(r#""total":40"#), "{}", answer.text);
    assert!(answer.reply().calls.is_empty());
}
