//! The cloud client against a real HTTP server on loopback that speaks the
//! OpenAI wire format and misbehaves on request: whole and streamed replies,
//! embeddings, 500, 429 with `Retry-After`, 401 echoing the key, a hang
//! before the headers, a stall mid-stream, a body that is not JSON, a stream
//! that breaks off, and a refused connection.

use std::time::{Duration, Instant};

use aios_edge_agent::model_calls::cloud::{CloudClient, CloudConfig, CloudError, Credential};
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
        "garbage" => "this is not json".into_response(),
        "cut" => event_stream(Body::from(format!("data: {}\n\n", chunk(Some("half"), None)))),
        other => (StatusCode::NOT_FOUND, format!("no mode {other}")).into_response(),
    }
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
