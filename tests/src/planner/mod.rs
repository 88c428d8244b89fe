//! A scripted planner: a model server of the tests' own, on loopback, that
//! replays multi-turn plans with tool calls. It speaks two real wire
//! protocols: OpenAI's chat completions (`tools` in, `tool_calls` out,
//! `tool` messages with their `tool_call_id`, usage; `stream: true` answered
//! as server-sent events with the calls in pieces) and Anthropic's Messages
//! ([`messages`]: `tool_use` and `tool_result` blocks, typed stream events,
//! and the API's own checks of a conversation's shape, answered 400 as it
//! would be). It is stateless: the reply to a request is the script's
//! function of that request, so a client that resends a request gets the
//! same reply. Scripts see every request in OpenAI's shape.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

mod messages;

/// What the model replies to a request: an assistant message (`content`,
/// `tool_calls`, `refusal`), from [`text`], [`calls`] or [`refuse`].
pub type Script = Arc<dyn Fn(&Value) -> Value + Send + Sync>;

/// One request the planner received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The request body as sent.
    pub body: Value,
    /// The request in OpenAI's shape, as the script saw it (the body itself
    /// for chat completions).
    pub view: Value,
    /// The request's headers (lower-case names).
    pub headers: Vec<(String, String)>,
    /// When it arrived.
    pub at: std::time::Instant,
    /// When its reply was ready to send (set once answered).
    pub answered: Option<std::time::Instant>,
}

#[derive(Clone)]
struct Shared {
    script: Script,
    requests: Arc<Mutex<Vec<Received>>>,
    down: Arc<AtomicBool>,
    delay: Duration,
}

/// A running planner.
pub struct Planner {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Planner {
    /// Starts a planner on a free loopback port; each reply waits `delay`.
    pub async fn start(script: Script, delay: Duration) -> std::io::Result<Planner> {
        let shared = Shared { script, requests: Arc::default(), down: Arc::default(), delay };
        let app = Router::new()
            .route("/v1/chat/completions", post(complete))
            .route("/v1/messages", post(messages::complete))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Planner { addr, shared, task })
    }

    /// The base URL a tier names.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Received> {
        self.shared.requests.lock().expect("requests lock").clone()
    }

    /// While down, every request is answered 503.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }
}

impl Drop for Planner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The user message that opens the conversation (the agent's goal).
pub fn goal(request: &Value) -> &str {
    request["messages"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
}

/// The turn a request asks for: how many assistant messages it carries.
pub fn turn(request: &Value) -> usize {
    request["messages"].as_array().map_or(0, |m| m.iter().filter(|m| m["role"] == "assistant").count())
}

/// The `tool` messages answering the last assistant message, as JSON.
pub fn observations(request: &Value) -> Vec<Value> {
    let messages = request["messages"].as_array().cloned().unwrap_or_default();
    let last = messages.iter().rposition(|m| m["role"] == "assistant");
    let Some(last) = last else { return Vec::new() };
    messages[last + 1..]
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| serde_json::from_str(m["content"].as_str().unwrap_or("null")).unwrap_or(Value::Null))
        .collect()
}

/// An answer in plain text.
pub fn text(answer: &str) -> Value {
    json!({ "role": "assistant", "content": answer })
}

/// A refusal.
pub fn refuse(reason: &str) -> Value {
    json!({ "role": "assistant", "content": null, "refusal": reason })
}

/// Tool calls (name, arguments), with ids unique within `turn`.
pub fn calls(turn: usize, calls: &[(&str, Value)]) -> Value {
    let calls: Vec<Value> = calls
        .iter()
        .enumerate()
        .map(|(i, (name, args))| {
            let arguments = match args {
                Value::String(raw) => raw.clone(),
                other => other.to_string(),
            };
            json!({ "id": format!("call_{turn}_{i}"), "type": "function", "function": { "name": name, "arguments": arguments } })
        })
        .collect();
    json!({ "role": "assistant", "content": null, "tool_calls": calls })
}

impl Shared {
    /// Records a request; returns its position.
    fn record(&self, body: &Value, view: &Value, headers: &HeaderMap) -> usize {
        let headers = headers
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), value.to_str().unwrap_or_default().to_owned()))
            .collect();
        let mut requests = self.requests.lock().expect("requests lock");
        let at = std::time::Instant::now();
        requests.push(Received { body: body.clone(), view: view.clone(), headers, at, answered: None });
        requests.len() - 1
    }

    /// Marks request `position` answered.
    fn answered(&self, position: usize) {
        self.requests.lock().expect("requests lock")[position].answered = Some(std::time::Instant::now());
    }

    /// Waits the planner's delay; `false` while it is down.
    async fn available(&self) -> bool {
        tokio::time::sleep(self.delay).await;
        !self.down.load(Ordering::SeqCst)
    }
}

async fn complete(State(shared): State<Shared>, headers: HeaderMap, Json(request): Json<Value>) -> Response {
    let position = shared.record(&request, &request, &headers);
    if !shared.available().await {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "error": { "message": "overloaded" } })))
            .into_response();
    }
    let message = (shared.script)(&request);
    let finish = if message.get("tool_calls").is_some() { "tool_calls" } else { "stop" };
    let prompt_tokens = request["messages"].to_string().len() / 4;
    let completion_tokens = message.to_string().len() / 4;
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    });
    let model = request["model"].clone();
    shared.answered(position);
    if request["stream"] != json!(true) {
        return Json(json!({
            "id": "chatcmpl-scripted",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [{ "index": 0, "message": message, "finish_reason": finish }],
            "usage": usage,
        }))
        .into_response();
    }
    // Streamed: the text, then each call in two pieces (name, then the
    // arguments split in half), then the finish and the usage.
    let chunk = |delta: Value, finish: Value| {
        json!({
            "id": "chatcmpl-scripted",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
        })
    };
    let mut events = vec![chunk(json!({ "role": "assistant" }), Value::Null)];
    if let Some(content) = message["content"].as_str() {
        events.push(chunk(json!({ "content": content }), Value::Null));
    }
    for (index, call) in message["tool_calls"].as_array().into_iter().flatten().enumerate() {
        let arguments = call["function"]["arguments"].as_str().unwrap_or_default();
        let (head, tail) = arguments.split_at(arguments.len() / 2);
        events.push(chunk(
            json!({ "tool_calls": [{ "index": index, "id": call["id"], "type": "function",
                "function": { "name": call["function"]["name"], "arguments": head } }] }),
            Value::Null,
        ));
        events
            .push(chunk(json!({ "tool_calls": [{ "index": index, "function": { "arguments": tail } }] }), Value::Null));
    }
    events.push(chunk(json!({}), json!(finish)));
    let mut body = String::new();
    for event in events {
        body.push_str(&format!("data: {event}\n\n"));
    }
    let mut last = chunk(json!({}), Value::Null);
    last["choices"] = json!([]);
    last["usage"] = usage;
    body.push_str(&format!("data: {last}\n\ndata: [DONE]\n\n"));
    ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
}
