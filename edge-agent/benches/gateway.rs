//! Gateway overhead: a short non-streamed completion (`max_tokens` 1) through
//! `POST /v1/chat/completions` on loopback against the same request made
//! directly on the `ChatModel` handle, interleaved so both see the same
//! machine load.
//!
//! The model's own time varies by milliseconds from call to call, far more
//! than the gateway costs, so the overhead is measured net of it: for a
//! direct call, wall time minus the engine's time (`time_to_first_token +
//! decode_time`); for a gateway call, wall time minus the engine time the
//! gateway reports in `Server-Timing`. The gateway's overhead over a direct
//! call is the difference of the two, pair by pair. Also printed: the raw
//! wall times, the bare HTTP round trip (`GET /v1/models`) and sequential
//! requests per second. Needs SmolLM2-135M-Instruct (fetched through the model store on
//! first use). Run: `cargo bench -p aios-edge-agent --bench gateway`
//! (`AIOS_BENCH_ITERATIONS`, default 300; `AIOS_BENCH_RUNTIME=multi` for
//! tokio's multi-threaded runtime instead of one thread, which on a small
//! machine lets the runtime's threads compete with the model's).
//!
//! Then embeddings, the path office applications call for search: the 256
//! short sentences of `aios-models bench all-minilm-l6-v2` in one
//! `POST /v1/embeddings` against the same texts embedded directly on the
//! `EmbeddingModel` handle, alternating, medians of `AIOS_BENCH_EMBED_ROUNDS`
//! (default 7) rounds, in sentences per second.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aios_edge_agent::http::gateway::{router, GatewayConfig, GatewayState, TracingObserver};
use aios_models::{ChatMessage, ChatModel, EmbeddingModel, GenerateRequest, LoadOptions, ModelStore};
use serde_json::json;

const CHAT_ID: &str = "smollm2-135m-instruct";
const EMBEDDING_ID: &str = "all-minilm-l6-v2";
const PROMPT: &str = "Say hi.";

fn percentile(samples: &[Duration], fraction: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index]
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

fn print_row(name: &str, samples: &[Duration]) {
    println!(
        "  {name:<28} p50 {:>9.1} us   p99 {:>9.1} us",
        micros(percentile(samples, 0.5)),
        micros(percentile(samples, 0.99))
    );
}

fn main() {
    let multi = std::env::var("AIOS_BENCH_RUNTIME").is_ok_and(|value| value == "multi");
    let runtime = if multi {
        tokio::runtime::Builder::new_multi_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    };
    runtime.expect("tokio runtime").block_on(bench(if multi { "multi-thread" } else { "current-thread" }));
}

async fn bench(runtime: &str) {
    let iterations: usize =
        std::env::var("AIOS_BENCH_ITERATIONS").ok().and_then(|value| value.parse().ok()).unwrap_or(300);
    let store = ModelStore::from_env();
    let model = ChatModel::load(&store, CHAT_ID, &LoadOptions::default()).await.expect("SmolLM2 loads");
    let embedder = EmbeddingModel::load(&store, EMBEDDING_ID, &LoadOptions::default()).await.expect("MiniLM loads");
    let config = GatewayConfig {
        chat_model: CHAT_ID.to_owned(),
        embedding_model: EMBEDDING_ID.to_owned(),
        keys: Vec::new(),
        default_max_tokens: 1,
    };
    let state = GatewayState::new(config, Some(model.clone()), Some(embedder.clone()), Arc::new(TracingObserver));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let address = listener.local_addr().expect("local address");
    tokio::spawn(async move { axum::serve(listener, router(Arc::new(state))).await.expect("gateway serves") });

    let http = reqwest::Client::new();
    let chat_url = format!("http://{address}/v1/chat/completions");
    let models_url = format!("http://{address}/v1/models");
    let body = json!({"model": CHAT_ID, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 1});
    let direct_request = GenerateRequest::chat(vec![ChatMessage::user(PROMPT)], 1);

    // Each returns (wall time, time inside the model).
    let direct = || async {
        let started = Instant::now();
        let generation = model.generate(direct_request.clone()).await.expect("direct generation");
        (started.elapsed(), generation.time_to_first_token + generation.decode_time)
    };
    let through_gateway = || async {
        let started = Instant::now();
        let response = http.post(&chat_url).json(&body).send().await.expect("gateway answers");
        assert!(response.status().is_success(), "gateway status {}", response.status());
        let model_ms: f64 = response
            .headers()
            .get("server-timing")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("model;dur="))
            .and_then(|value| value.parse().ok())
            .expect("the gateway reports the model's time");
        response.bytes().await.expect("gateway body");
        (started.elapsed(), Duration::from_secs_f64(model_ms / 1000.0))
    };

    for _ in 0..20 {
        direct().await;
        through_gateway().await;
    }
    let mut direct_samples = Vec::with_capacity(iterations);
    let mut gateway_samples = Vec::with_capacity(iterations);
    let mut direct_net = Vec::with_capacity(iterations);
    let mut gateway_net = Vec::with_capacity(iterations);
    let mut overhead = Vec::with_capacity(iterations);
    for index in 0..iterations {
        // Alternate the order so neither side always runs on a warmer cache.
        let ((d_wall, d_model), (g_wall, g_model)) = if index % 2 == 0 {
            let d = direct().await;
            (d, through_gateway().await)
        } else {
            let g = through_gateway().await;
            (direct().await, g)
        };
        direct_samples.push(d_wall);
        gateway_samples.push(g_wall);
        let (d_net, g_net) = (d_wall.saturating_sub(d_model), g_wall.saturating_sub(g_model));
        direct_net.push(d_net);
        gateway_net.push(g_net);
        overhead.push(g_net.saturating_sub(d_net));
    }
    let models_round_trip = || async {
        let started = Instant::now();
        http.get(&models_url).send().await.expect("models").bytes().await.expect("models body");
        started.elapsed()
    };
    let mut http_samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        http_samples.push(models_round_trip().await);
    }
    // The same round trip right after a model call, whose weights have just
    // pushed everything else out of the CPU caches.
    let mut http_after_model = Vec::with_capacity(iterations / 4);
    for _ in 0..iterations / 4 {
        direct().await;
        http_after_model.push(models_round_trip().await);
    }

    println!("gateway overhead, {CHAT_ID}, max_tokens 1, {iterations} interleaved pairs, {runtime} runtime");
    print_row("direct call, wall", &direct_samples);
    print_row("gateway call, wall", &gateway_samples);
    print_row("direct call, outside model", &direct_net);
    print_row("gateway call, outside model", &gateway_net);
    print_row("gateway overhead over direct", &overhead);
    print_row("HTTP round trip (models)", &http_samples);
    print_row("  right after a model call", &http_after_model);

    let rounds = iterations.max(50);
    let started = Instant::now();
    for _ in 0..rounds {
        direct().await;
    }
    let direct_rate = rounds as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    for _ in 0..rounds {
        through_gateway().await;
    }
    let gateway_rate = rounds as f64 / started.elapsed().as_secs_f64();
    println!("  sequential requests/s: direct {direct_rate:.1}, gateway {gateway_rate:.1}");

    embeddings(&http, &format!("http://{address}/v1/embeddings"), &embedder).await;
}

async fn embeddings(http: &reqwest::Client, url: &str, embedder: &EmbeddingModel) {
    let rounds: usize = std::env::var("AIOS_BENCH_EMBED_ROUNDS").ok().and_then(|value| value.parse().ok()).unwrap_or(7);
    let texts = aios_models::bench_sentences();
    let body = json!({"model": EMBEDDING_ID, "input": texts});
    let direct = || async {
        let started = Instant::now();
        let vectors = embedder.embed(texts.clone()).await.expect("direct embeddings");
        assert_eq!(vectors.len(), texts.len());
        started.elapsed()
    };
    let through_gateway = || async {
        let started = Instant::now();
        let response = http.post(url).json(&body).send().await.expect("gateway answers");
        assert!(response.status().is_success(), "gateway status {}", response.status());
        let answer: serde_json::Value = response.json().await.expect("embeddings body");
        assert_eq!(answer["data"].as_array().map(Vec::len), Some(texts.len()));
        started.elapsed()
    };
    direct().await;
    through_gateway().await;
    let (mut direct_times, mut gateway_times) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        if round % 2 == 0 {
            direct_times.push(direct().await);
            gateway_times.push(through_gateway().await);
        } else {
            gateway_times.push(through_gateway().await);
            direct_times.push(direct().await);
        }
    }
    let rate = |times: &[Duration]| texts.len() as f64 / percentile(times, 0.5).as_secs_f64();
    let (direct_rate, gateway_rate) = (rate(&direct_times), rate(&gateway_times));
    println!("embeddings, {EMBEDDING_ID}, {} sentences a request, medians of {rounds} alternating rounds", texts.len());
    println!(
        "  direct {direct_rate:.1} sentences/s, gateway {gateway_rate:.1} sentences/s ({:.0}% of direct)",
        100.0 * gateway_rate / direct_rate
    );
}
