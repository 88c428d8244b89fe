//! The gateway on a real loopback server with the real SmolLM2-135M-Instruct
//! and all-MiniLM-L6-v2 (fetched through the model store on first use, then
//! cached): whole and streamed chat completions and embeddings must equal
//! what the models give when called directly; errors must have OpenAI's
//! shape and status; the cloud client must work against it (so one edge can
//! be another's remote tier); and the official `openai` Python package must
//! work against it (installed into `~/.cache/aios/python` when missing).
//! Run in release mode: `cargo test -p aios-edge-agent --release --test gateway`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use aios_edge_agent::http::gateway::{
    router, Delivery, GatewayCall, GatewayConfig, GatewayEndpoint, GatewayObserver, GatewayOutcome, GatewayState,
};
use aios_edge_agent::model_calls::cloud::{CloudClient, CloudConfig, Credential, Protocol};
use aios_edge_agent::model_calls::openai::{
    ChatCompletionRequest, EmbeddingInput, EmbeddingsRequest, SseDecoder, WireMessage,
};
use aios_models::{ChatMessage, ChatModel, EmbeddingModel, GenerateRequest, Generation, LoadOptions, ModelStore};
use serde_json::{json, Value};
use tokio::sync::OnceCell;

const CHAT_ID: &str = "smollm2-135m-instruct";
const EMBED_ID: &str = "all-minilm-l6-v2";
const TOKEN: &str = "gateway-test-token";
const QUESTION: &str = "What is the capital of France? Answer in one word.";

struct Models {
    chat: ChatModel,
    embedder: EmbeddingModel,
}

/// One load per test binary.
async fn models() -> &'static Models {
    static MODELS: OnceCell<Models> = OnceCell::const_new();
    MODELS
        .get_or_init(|| async {
            let store = ModelStore::from_env();
            let options = LoadOptions::default();
            let chat = ChatModel::load(&store, CHAT_ID, &options).await.expect("SmolLM2 loads through the store");
            let embedder =
                EmbeddingModel::load(&store, EMBED_ID, &options).await.expect("MiniLM loads through the store");
            Models { chat, embedder }
        })
        .await
}

/// Keeps every call the gateway reports.
#[derive(Default)]
struct Recorded(Mutex<Vec<GatewayCall>>);

impl GatewayObserver for Recorded {
    fn on_call(&self, call: &GatewayCall) {
        self.0.lock().expect("observer lock").push(call.clone());
    }
}

impl Recorded {
    fn calls(&self) -> Vec<GatewayCall> {
        self.0.lock().expect("observer lock").clone()
    }
}

struct Gateway {
    address: SocketAddr,
    recorded: Arc<Recorded>,
    http: reqwest::Client,
}

impl Gateway {
    async fn start(token: Option<&str>) -> Gateway {
        let models = models().await;
        let recorded = Arc::new(Recorded::default());
        let config = GatewayConfig {
            chat_model: CHAT_ID.to_owned(),
            embedding_model: EMBED_ID.to_owned(),
            keys: token.map(|token| Credential::new(token).unwrap()).into_iter().collect(),
            default_max_tokens: 64,
        };
        let state =
            GatewayState::new(config, Some(models.chat.clone()), Some(models.embedder.clone()), recorded.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router(Arc::new(state))).await.unwrap() });
        Gateway { address, recorded, http: reqwest::Client::new() }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, reqwest::Response) {
        let response = self.http.post(self.url(path)).bearer_auth(TOKEN).json(body).send().await.unwrap();
        (response.status().as_u16(), response)
    }

    async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let (status, response) = self.post(path, body).await;
        (status, response.json().await.unwrap())
    }
}

async fn direct_answer(max_tokens: usize) -> Generation {
    let request = GenerateRequest::chat(vec![ChatMessage::user(QUESTION)], max_tokens);
    models().await.chat.generate(request).await.unwrap()
}

fn chat_body(max_tokens: u32) -> Value {
    json!({"model": CHAT_ID, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": max_tokens})
}

/// Data payloads of an SSE body, parsed as JSON except the final `[DONE]`.
fn sse_payloads(body: &[u8]) -> (Vec<Value>, Option<String>) {
    let mut decoder = SseDecoder::new();
    let mut events = decoder.feed(body);
    events.extend(decoder.finish());
    let done = events.last().filter(|last| *last == "[DONE]").cloned();
    let json = events.iter().filter(|event| *event != "[DONE]").map(|e| serde_json::from_str(e).unwrap()).collect();
    (json, done)
}

#[tokio::test]
async fn chat_whole_and_streamed_equal_the_direct_model() {
    let gateway = Gateway::start(Some(TOKEN)).await;
    let direct = direct_answer(16).await;
    assert!(!direct.text.is_empty());

    let (status, response) = gateway.post("/v1/chat/completions", &chat_body(16)).await;
    assert_eq!(status, 200);
    let timing = response.headers()["server-timing"].to_str().unwrap().to_owned();
    assert!(timing.starts_with("model;dur="), "{timing}");
    let whole: Value = response.json().await.unwrap();
    assert_eq!(whole["object"], "chat.completion");
    assert!(whole["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(whole["model"], CHAT_ID);
    assert_eq!(whole["choices"][0]["message"]["role"], "assistant");
    assert_eq!(whole["choices"][0]["message"]["content"], direct.text.as_str());
    assert_eq!(whole["usage"]["prompt_tokens"], direct.prompt_tokens);
    assert_eq!(whole["usage"]["completion_tokens"], direct.completion_tokens);
    assert_eq!(whole["usage"]["total_tokens"], direct.prompt_tokens + direct.completion_tokens);

    let mut body = chat_body(16);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let (status, response) = gateway.post("/v1/chat/completions", &body).await;
    assert_eq!(status, 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let (chunks, done) = sse_payloads(&response.bytes().await.unwrap());
    assert_eq!(done.as_deref(), Some("[DONE]"));
    assert!(chunks.iter().all(|chunk| chunk["object"] == "chat.completion.chunk" && chunk["id"] == chunks[0]["id"]));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String =
        chunks.iter().filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str()).collect::<String>();
    assert_eq!(text, direct.text);
    let finish = &chunks[chunks.len() - 2]["choices"][0]["finish_reason"];
    assert!(finish == "stop" || finish == "length", "{finish}");
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["completion_tokens"], direct.completion_tokens);

    // Without include_usage no usage chunk is sent.
    body["stream_options"] = json!(null);
    let (_, response) = gateway.post("/v1/chat/completions", &body).await;
    let (chunks, done) = sse_payloads(&response.bytes().await.unwrap());
    assert!(done.is_some() && chunks.iter().all(|chunk| chunk.get("usage").is_none()));

    let calls = gateway.recorded.calls();
    assert_eq!(calls.len(), 3);
    for (call, delivery) in calls.iter().zip([Delivery::Whole, Delivery::Stream, Delivery::Stream]) {
        assert_eq!(call.endpoint, GatewayEndpoint::ChatCompletions);
        assert_eq!((call.status, &call.outcome, call.delivery), (200, &GatewayOutcome::Completed, delivery));
        assert_eq!(call.model, CHAT_ID);
        assert_eq!(call.prompt_tokens, direct.prompt_tokens as u64);
        assert_eq!(call.completion_tokens, direct.completion_tokens as u64);
    }
}

#[tokio::test]
async fn an_abandoned_stream_is_reported_cancelled() {
    let gateway = Gateway::start(None).await;
    let body = json!({"model": CHAT_ID, "stream": true, "max_tokens": 2000,
                      "messages": [{"role": "user", "content": "Count from 1 to 1000, separated by commas."}]});
    let (status, mut response) = gateway.post("/v1/chat/completions", &body).await;
    assert_eq!(status, 200);
    assert!(response.chunk().await.unwrap().is_some());
    drop(response);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let call = loop {
        if let Some(call) = gateway.recorded.calls().pop() {
            break call;
        }
        assert!(std::time::Instant::now() < deadline, "the abandoned stream was never reported");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!((call.outcome, call.status, call.delivery), (GatewayOutcome::Cancelled, 499, Delivery::Stream));
}

#[tokio::test]
async fn sampling_parameters_reach_the_model() {
    let gateway = Gateway::start(None).await;
    let mut body = chat_body(12);
    body["stop"] = json!(["Paris", "paris"]);
    body["temperature"] = json!(0.9);
    body["top_p"] = json!(0.9);
    body["seed"] = json!(-7);
    let (status, first) = gateway.post_json("/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{first}");
    let (_, second) = gateway.post_json("/v1/chat/completions", &body).await;
    assert_eq!(first["choices"][0]["message"], second["choices"][0]["message"], "a seed makes sampling repeatable");
    let text = first["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!text.contains("Paris") && !text.contains("paris"), "stop sequences are cut: {text}");
    body.as_object_mut().unwrap().remove("max_tokens");
    body["max_completion_tokens"] = json!(1);
    let (_, one) = gateway.post_json("/v1/chat/completions", &body).await;
    assert_eq!(one["usage"]["completion_tokens"], 1);
}

#[tokio::test]
async fn embeddings_float_and_base64_equal_the_direct_model() {
    let gateway = Gateway::start(Some(TOKEN)).await;
    let texts = vec!["The invoice is overdue.".to_owned(), "Das Wetter ist schön.".to_owned()];
    let direct = models().await.embedder.embed(texts.clone()).await.unwrap();

    let (status, floats) =
        gateway.post_json("/v1/embeddings", &json!({"model": EMBED_ID, "input": texts.clone()})).await;
    assert_eq!(status, 200, "{floats}");
    assert_eq!(floats["object"], "list");
    for (index, vector) in direct.iter().enumerate() {
        let got: Vec<f32> = serde_json::from_value(floats["data"][index]["embedding"].clone()).unwrap();
        assert_eq!(floats["data"][index]["index"], index);
        assert_eq!(&got, vector);
    }

    let body = json!({"model": EMBED_ID, "input": texts[0], "encoding_format": "base64"});
    let (status, encoded) = gateway.post_json("/v1/embeddings", &body).await;
    assert_eq!(status, 200);
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD.decode(encoded["data"][0]["embedding"].as_str().unwrap());
    let decoded: Vec<f32> =
        bytes.unwrap().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    assert_eq!(decoded, direct[0]);
    let calls = gateway.recorded.calls();
    assert!(calls.iter().all(|call| call.endpoint == GatewayEndpoint::Embeddings && call.status == 200));

    // Usage counts the tokens each text was read as, not the batch's padding.
    let mut each = 0;
    for text in &texts {
        each += models().await.embedder.embed_counted(vec![text.clone()]).await.unwrap().tokens;
    }
    assert!(each > 2 * texts.len() as u64, "[CLS] and [SEP] and some words: {each}");
    assert_eq!(floats["usage"]["prompt_tokens"], each);
    assert_eq!(floats["usage"]["total_tokens"], each);
    assert_eq!(calls[0].prompt_tokens, each, "the audited call carries the count");
}

#[tokio::test]
async fn errors_have_openai_shape_and_status() {
    let gateway = Gateway::start(Some(TOKEN)).await;
    let context_length = models().await.chat.info().context_length;
    let long_prompt = "hello ".repeat(context_length * 2);
    let cases: Vec<(&str, Value, u16, Option<&str>)> = vec![
        (
            "/v1/chat/completions",
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}),
            404,
            Some("model_not_found"),
        ),
        ("/v1/embeddings", json!({"model": CHAT_ID, "input": "x"}), 404, Some("model_not_found")),
        (
            "/v1/chat/completions",
            json!({"model": CHAT_ID, "messages": [{"role": "user", "content": long_prompt}]}),
            400,
            Some("context_length_exceeded"),
        ),
        (
            "/v1/chat/completions",
            json!({"model": CHAT_ID, "stream": true, "messages": [{"role": "user", "content": long_prompt}]}),
            400,
            Some("context_length_exceeded"),
        ),
        ("/v1/chat/completions", json!({"model": CHAT_ID, "messages": []}), 400, None),
        (
            "/v1/chat/completions",
            json!({"model": CHAT_ID, "n": 2, "messages": [{"role": "user", "content": "x"}]}),
            400,
            None,
        ),
        (
            "/v1/chat/completions",
            json!({"model": CHAT_ID, "temperature": 3, "messages": [{"role": "user", "content": "x"}]}),
            400,
            None,
        ),
        (
            "/v1/chat/completions",
            json!({"model": CHAT_ID, "top_p": 0, "messages": [{"role": "user", "content": "x"}]}),
            400,
            None,
        ),
        ("/v1/chat/completions", json!({"model": CHAT_ID, "messages": [{"role": "tool", "content": "x"}]}), 400, None),
        // A tool choice without tools.
        (
            "/v1/chat/completions",
            json!({"model": CHAT_ID, "tool_choice": "auto", "messages": [{"role": "user", "content": "x"}]}),
            400,
            None,
        ),
        ("/v1/chat/completions", json!({"model": CHAT_ID, "messages": "not a list"}), 400, None),
        ("/v1/embeddings", json!({"model": EMBED_ID, "input": [[1, 2, 3]]}), 400, None),
        ("/v1/embeddings", json!({"model": EMBED_ID, "input": []}), 400, None),
        ("/v1/embeddings", json!({"model": EMBED_ID, "input": "x", "encoding_format": "int8"}), 400, None),
        ("/v1/completions", json!({"model": CHAT_ID, "prompt": "x"}), 404, Some("unknown_url")),
    ];
    for (path, body, status, code) in &cases {
        let (got, error) = gateway.post_json(path, body).await;
        assert_eq!(got, *status, "{path} {error}");
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty() && error["error"]["type"].is_string(), "{error}");
        assert_eq!(error["error"]["code"].as_str(), *code, "{error}");
    }
    let (status, response) = {
        let response = gateway
            .http
            .post(gateway.url("/v1/chat/completions"))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json::<Value>().await.unwrap())
    };
    assert_eq!(status, 400);
    assert!(response["error"]["message"].as_str().unwrap().starts_with("the request body is not valid: "));

    let calls = gateway.recorded.calls();
    // Every model request is reported: the cases but the unknown route, plus the bad JSON.
    assert_eq!(calls.len(), cases.len());
    assert!(calls.iter().all(|call| matches!(call.outcome, GatewayOutcome::Failed(_)) && call.status >= 400));
    assert_eq!(calls[0].model, "gpt-4o");
}

#[tokio::test]
async fn a_configured_token_is_required() {
    let gateway = Gateway::start(Some(TOKEN)).await;
    let models_url = gateway.url("/v1/models");
    let missing = gateway.http.get(&models_url).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key");
    let wrong = gateway.http.get(&models_url).bearer_auth("gateway-test-tokem").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let (status, _) = gateway.post("/v1/chat/completions", &chat_body(1)).await;
    assert_eq!(status, 200);
    let refused = gateway.http.post(gateway.url("/v1/chat/completions")).json(&chat_body(1)).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(gateway.recorded.calls().last().unwrap().status, 401);

    let list: Value = gateway.http.get(&models_url).bearer_auth(TOKEN).send().await.unwrap().json().await.unwrap();
    let ids: Vec<&str> = list["data"].as_array().unwrap().iter().map(|model| model["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [CHAT_ID, EMBED_ID]);
    let one = gateway.http.get(gateway.url(&format!("/v1/models/{EMBED_ID}"))).bearer_auth(TOKEN).send().await;
    assert_eq!(one.unwrap().status(), 200);

    // Without a token the gateway admits every caller (the listener is loopback).
    let open = Gateway::start(None).await;
    assert_eq!(open.http.get(open.url("/v1/models")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn the_cloud_client_uses_the_gateway_as_a_remote_tier() {
    let gateway = Gateway::start(Some(TOKEN)).await;
    let client = CloudClient::new(CloudConfig {
        protocol: Protocol::OpenAi,
        stream: false,
        base_url: gateway.url("/v1"),
        model: CHAT_ID.to_owned(),
        timeout: std::time::Duration::from_secs(60),
        credential: Some(Credential::new(TOKEN).unwrap()),
    })
    .unwrap();
    let direct = direct_answer(16).await;
    let request = ChatCompletionRequest {
        messages: vec![WireMessage::new("user", QUESTION)],
        max_tokens: Some(16),
        ..Default::default()
    };
    let whole = client.chat(request.clone()).await.unwrap();
    assert_eq!(whole.text, direct.text);
    assert_eq!(whole.usage.map(|usage| usage.completion_tokens), Some(direct.completion_tokens as u64));
    let streamed = client.chat_stream(request).await.unwrap().finish().await.unwrap();
    assert_eq!(streamed.text, direct.text);
    assert_eq!(streamed.usage, whole.usage);
    let vectors = client
        .embeddings(EmbeddingsRequest {
            model: EMBED_ID.to_owned(),
            input: EmbeddingInput::One("hello".to_owned()),
            encoding_format: None,
        })
        .await
        .unwrap();
    assert_eq!(vectors.vectors, models().await.embedder.embed(vec!["hello".to_owned()]).await.unwrap());

    let wrong = CloudClient::new(CloudConfig {
        protocol: Protocol::OpenAi,
        stream: false,
        base_url: gateway.url("/v1"),
        model: "no-such-model".to_owned(),
        timeout: std::time::Duration::from_secs(5),
        credential: Some(Credential::new(TOKEN).unwrap()),
    })
    .unwrap();
    let error = wrong.chat(ChatCompletionRequest::default()).await.unwrap_err();
    assert!(error.to_string().contains("answered HTTP 404: the model `no-such-model` does not exist"), "{error}");
    assert!(!error.is_retryable());
}

const PYTHON_SCRIPT: &str = r#"
import json, sys
import openai

base_url, token, chat_model, embed_model, question = sys.argv[1:6]
client = openai.OpenAI(base_url=base_url, api_key=token, max_retries=0)
messages = [{"role": "user", "content": question}]
models = [model.id for model in client.models.list()]
whole = client.chat.completions.create(model=chat_model, messages=messages, max_tokens=16)
tools = [{"type": "function", "function": {
    "name": "lookup_order", "description": "Look an order up.",
    "parameters": {"type": "object", "properties": {"order_id": {"type": "string", "pattern": "^A-[0-9]{3}$"}},
                   "required": ["order_id"], "additionalProperties": False}}}]
called = client.chat.completions.create(
    model=chat_model, max_tokens=64, tools=tools, tool_choice="required",
    messages=[{"role": "user", "content": "Where is my order A-123?"}])
call = called.choices[0].message.tool_calls[0]
streamed_call = {"name": "", "arguments": ""}
for chunk in client.chat.completions.create(
    model=chat_model, max_tokens=64, tools=tools, tool_choice="required", stream=True,
    messages=[{"role": "user", "content": "Where is my order A-123?"}]):
    for choice in chunk.choices:
        for piece in choice.delta.tool_calls or []:
            streamed_call["name"] += piece.function.name or ""
            streamed_call["arguments"] += piece.function.arguments or ""
rated = client.chat.completions.create(
    model=chat_model, max_tokens=64,
    messages=[{"role": "user", "content": "Rate: the kettle broke after a day."}],
    response_format={"type": "json_schema", "json_schema": {"name": "rating", "strict": True, "schema": {
        "type": "object", "properties": {"stars": {"type": "integer", "minimum": 1, "maximum": 5}},
        "required": ["stars"], "additionalProperties": False}}})
streamed_text, stream_usage, roles = "", None, []
for chunk in client.chat.completions.create(
    model=chat_model, messages=messages, max_tokens=16, stream=True, stream_options={"include_usage": True}
):
    if chunk.usage is not None:
        stream_usage = chunk.usage.completion_tokens
    for choice in chunk.choices:
        if choice.delta.role:
            roles.append(choice.delta.role)
        streamed_text += choice.delta.content or ""
default_encoding = client.embeddings.create(model=embed_model, input=["hello", "world"])
floats = client.embeddings.create(model=embed_model, input="hello", encoding_format="float")
try:
    client.chat.completions.create(model="no-such-model", messages=messages)
    missing = None
except openai.NotFoundError as error:
    missing = error.status_code
print(json.dumps({
    "models": models,
    "whole_text": whole.choices[0].message.content,
    "whole_completion_tokens": whole.usage.completion_tokens,
    "streamed_text": streamed_text,
    "stream_usage": stream_usage,
    "roles": roles,
    "embeddings": [item.embedding for item in default_encoding.data],
    "float_embedding": floats.data[0].embedding,
    "missing_model_status": missing,
    "tool_call": {"id": call.id, "name": call.function.name, "arguments": call.function.arguments},
    "tool_finish": called.choices[0].finish_reason,
    "streamed_call": streamed_call,
    "rating": rated.choices[0].message.content,
}))
"#;

#[path = "../../tests/src/python.rs"]
mod python;

fn python_with_openai() -> (PathBuf, String) {
    python::python_with("openai", "openai")
}

#[tokio::test]
async fn the_official_openai_python_client_works() {
    let (python, python_path) = tokio::task::spawn_blocking(python_with_openai).await.unwrap();
    let gateway = Gateway::start(Some(TOKEN)).await;
    let direct = direct_answer(16).await;
    let texts = vec!["hello".to_owned(), "world".to_owned()];
    let vectors = models().await.embedder.embed(texts).await.unwrap();
    let base_url = gateway.url("/v1");
    let output = tokio::process::Command::new(python)
        .args(["-c", PYTHON_SCRIPT, &base_url, TOKEN, CHAT_ID, EMBED_ID, QUESTION])
        .env("PYTHONPATH", python_path)
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "the Python client failed:\n{}", String::from_utf8_lossy(&output.stderr));
    let result: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(result["models"], json!([CHAT_ID, EMBED_ID]));
    assert_eq!(result["whole_text"], direct.text.as_str());
    assert_eq!(result["whole_completion_tokens"], direct.completion_tokens);
    assert_eq!(result["streamed_text"], direct.text.as_str());
    assert_eq!(result["stream_usage"], direct.completion_tokens);
    assert_eq!(result["roles"], json!(["assistant"]));
    // The Python client asks for base64 by default and decodes it itself.
    let decoded: Vec<Vec<f32>> = serde_json::from_value(result["embeddings"].clone()).unwrap();
    assert_eq!(decoded, vectors);
    let floats: Vec<f32> = serde_json::from_value(result["float_embedding"].clone()).unwrap();
    assert_eq!(floats, vectors[0]);
    assert_eq!(result["missing_model_status"], 404);
    // Tool calls and a JSON Schema reply, whole and streamed, from the local model.
    assert_eq!(result["tool_finish"], "tool_calls", "{result:#}");
    assert_eq!(result["tool_call"]["name"], "lookup_order");
    let arguments: Value = serde_json::from_str(result["tool_call"]["arguments"].as_str().unwrap()).unwrap();
    assert!(arguments["order_id"].as_str().is_some_and(|id| id.len() == 5 && id.starts_with("A-")), "{arguments}");
    assert_eq!(result["streamed_call"]["name"], "lookup_order");
    assert_eq!(result["streamed_call"]["arguments"], result["tool_call"]["arguments"], "greedy: the same call");
    let rating: Value = serde_json::from_str(result["rating"].as_str().unwrap()).unwrap();
    assert!(rating["stars"].as_i64().is_some_and(|stars| (1..=5).contains(&stars)), "{rating}");
    let calls = gateway.recorded.calls();
    assert_eq!(calls.iter().filter(|call| call.delivery == Delivery::Stream).count(), 2);
    assert_eq!(calls.len(), 8);
}

#[tokio::test]
async fn the_local_model_calls_tools_and_follows_schemas() {
    let gateway = Gateway::start(Some(TOKEN)).await;
    let tools = json!([
        { "type": "function", "function": {
            "name": "shop_refund", "description": "Refund part of an order.",
            "parameters": { "type": "object", "properties": {
                "order_id": { "type": "string", "pattern": "^A-[0-9]{3}$" },
                "amount": { "type": "integer", "minimum": 1, "maximum": 100 } },
                "required": ["order_id", "amount"], "additionalProperties": false } } },
        { "type": "function", "function": {
            "name": "lookup_order", "description": "Look an order up.",
            "parameters": { "type": "object", "properties": { "order_id": { "type": "string" } },
                "required": ["order_id"], "additionalProperties": false } } }
    ]);
    let ask = json!({ "role": "user", "content": "Refund 20 on order A-123, it arrived broken." });
    // A named function: its call, arguments valid for its schema.
    let body = json!({ "model": CHAT_ID, "max_tokens": 64, "messages": [ask], "tools": tools,
        "tool_choice": { "type": "function", "function": { "name": "shop_refund" } } });
    let (status, reply) = gateway.post_json("/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{reply:#}");
    assert_eq!(reply["choices"][0]["finish_reason"], "tool_calls", "{reply:#}");
    let call = &reply["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "shop_refund");
    assert!(reply["choices"][0]["message"]["content"].is_null());
    let arguments: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(arguments["amount"].as_i64().is_some_and(|a| (1..=100).contains(&a)), "{arguments}");
    assert!(arguments["order_id"].as_str().is_some_and(|id| id.starts_with("A-") && id.len() == 5), "{arguments}");

    // The call and its result go back; the conversation goes on (a call or an answer).
    let body = json!({ "model": CHAT_ID, "max_tokens": 64, "tools": tools, "messages": [
        ask,
        { "role": "assistant", "content": null, "tool_calls": [call] },
        { "role": "tool", "tool_call_id": call["id"], "content": "{\"refund_id\": \"py_1\"}" },
    ] });
    let (status, reply) = gateway.post_json("/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{reply:#}");
    let finish = reply["choices"][0]["finish_reason"].as_str().unwrap();
    assert!(["tool_calls", "stop"].contains(&finish), "{reply:#}");

    // The cloud client reads the streamed call back whole (its assembler), as an edge using this gateway as a tier does.
    let client = CloudClient::new(CloudConfig {
        protocol: Protocol::OpenAi,
        stream: false,
        base_url: gateway.url("/v1"),
        model: CHAT_ID.to_owned(),
        timeout: std::time::Duration::from_secs(60),
        credential: Some(Credential::new(TOKEN).unwrap()),
    })
    .unwrap();
    let mut request: ChatCompletionRequest = serde_json::from_value(json!({
        "model": "",
        "messages": [{ "role": "user", "content": "Look up order A-555." }],
        "max_tokens": 64, "tools": tools, "tool_choice": "required",
    }))
    .unwrap();
    let whole = client.chat(request.clone()).await.unwrap();
    request.stream = true;
    let streamed = client.chat_stream(request).await.unwrap().finish().await.unwrap();
    assert_eq!(whole.tool_calls.len(), 1, "{whole:?}");
    assert_eq!(streamed.tool_calls.len(), 1, "{streamed:?}");
    assert_eq!(streamed.tool_calls[0].function, whole.tool_calls[0].function);

    // response_format: a JSON object, and JSON valid for a schema.
    let schema = json!({ "type": "object", "properties": {
        "sentiment": { "type": "string", "enum": ["positive", "negative"] } },
        "required": ["sentiment"], "additionalProperties": false });
    for format in [
        json!({ "type": "json_object" }),
        json!({ "type": "json_schema", "json_schema": { "name": "s", "schema": schema } }),
    ] {
        let body = json!({ "model": CHAT_ID, "max_tokens": 48, "response_format": format,
            "messages": [{ "role": "user", "content": "The kettle broke after a day." }] });
        let (status, reply) = gateway.post_json("/v1/chat/completions", &body).await;
        assert_eq!(status, 200, "{reply:#}");
        let content: Value = serde_json::from_str(reply["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
        assert!(content.is_object(), "{content}");
        if format["type"] == "json_schema" {
            assert!(["positive", "negative"].contains(&content["sentiment"].as_str().unwrap_or_default()), "{content}");
        }
    }

    // Bad requests are refused with OpenAI's shape, naming the field.
    for (body, param) in [
        (json!({ "model": CHAT_ID, "messages": [ask], "tools": tools, "tool_choice": "sometimes" }), "tool_choice"),
        (
            json!({ "model": CHAT_ID, "messages": [ask], "tools": [{ "type": "function", "function": { "name": "bad name" } }] }),
            "tools",
        ),
        (
            json!({ "model": CHAT_ID, "messages": [ask, { "role": "tool", "tool_call_id": "x", "content": "{}" }] }),
            "messages",
        ),
        (
            json!({ "model": CHAT_ID, "messages": [ask], "response_format": { "type": "json_schema", "json_schema": { "name": "s", "schema": 5 } } }),
            "response_format",
        ),
    ] {
        let (status, reply) = gateway.post_json("/v1/chat/completions", &body).await;
        assert_eq!(status, 400, "{reply:#}");
        assert_eq!(reply["error"]["param"], param, "{reply:#}");
    }
}
