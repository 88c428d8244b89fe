//! Task runtime throughput, printed as figures
//! (`cargo bench -p aios-tests --bench tasks`): a control plane and one edge
//! in this process, a bundle with a `classify`-only agent on the real local
//! model (SmolLM2-135M, fetched through the model store on first use), and
//! `AIOS_BENCH_TASKS` tasks (default 200) submitted at once. The clock runs
//! from the first submission until the last task has succeeded; every task
//! is persisted, checkpointed and audited as in production.

use std::time::{Duration, Instant};

use aios_control_plane::api;
use aios_edge_agent::daemon::{self, DaemonOptions};
use aios_edge_agent::tasks::Submission;
use aios_shared::bundle::BundleSpec;
use aios_tests::in_process;

const BUNDLE: &str = r#"
autonomy = "supervised"
[runtime]
max_concurrent_tasks = 2
[tiers.local]
kind = "local"
model = "smollm2-135m-instruct"
[agents.sort]
version = 1
max_concurrent = 2
[[agents.sort.steps]]
id = "category"
kind = "classify"
labels = ["refund", "shipping", "other"]
threshold = 0.0
prompt = "Customer messages sorted by topic.\n\nMessage: I was charged twice.\nTopic: refund\n\nMessage: Where is my parcel?\nTopic: shipping\n\nMessage: {{ input.text }}\nTopic:"
"#;

const MESSAGES: [&str; 4] = [
    "I want my money back for this broken kettle.",
    "My parcel never arrived.",
    "Do you sell gift cards?",
    "The courier left my box at the wrong address.",
];

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n_tasks: usize = std::env::var("AIOS_BENCH_TASKS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let tmp = tempfile::tempdir().expect("temp dir");
    let cp = in_process::control_plane(tmp.path(), Default::default()).await.expect("control plane starts");
    let edge_dir = tmp.path().join("edge");
    in_process::enroll_edge(&cp, &edge_dir, "bench").await.expect("enrols");
    let edge = daemon::start(DaemonOptions::new(edge_dir)).await.expect("edge starts");
    let version = api::publish(&cp.api, BundleSpec::from_toml(BUNDLE).expect("bundle parses")).await.expect("publish");
    while edge.runtime.definitions().await.expect("definitions").map(|(v, _)| v) != Some(version) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let submit = |n: usize| Submission {
        agent: "sort".into(),
        input: serde_json::json!({ "text": MESSAGES[n % MESSAGES.len()] }),
        kind: None,
        idempotency_key: None,
    };
    // Warm-up: loads the model.
    let (warm, _) = edge.runtime.submit(submit(0), "bench").await.expect("submit");
    wait_succeeded(&edge.runtime, 1, Duration::from_secs(600)).await;
    drop(warm);

    let start = Instant::now();
    for n in 0..n_tasks {
        edge.runtime.submit(submit(n), "bench").await.expect("submit");
    }
    let submitted = start.elapsed();
    wait_succeeded(&edge.runtime, n_tasks + 1, Duration::from_secs(3600)).await;
    let elapsed = start.elapsed();
    let tasks = edge.runtime.store().list_tasks(Default::default()).await.expect("tasks");
    let mut latencies: Vec<i64> = tasks.iter().take(n_tasks).map(|t| t.updated_ms - t.created_ms).collect();
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    println!("task throughput, classify-only agent, SmolLM2-135M Q4_1 on CPU, 2 running at once");
    println!("  tasks:               {n_tasks}");
    println!(
        "  submission:          {:.1} ms for all ({:.0} submissions/s, each durably committed)",
        submitted.as_secs_f64() * 1e3,
        n_tasks as f64 / submitted.as_secs_f64()
    );
    println!("  throughput:          {:.1} tasks/s", n_tasks as f64 / elapsed.as_secs_f64());
    println!(
        "  latency from submit: p50 {} ms, p95 {} ms, max {} ms (queueing included)",
        pct(0.5),
        pct(0.95),
        pct(1.0)
    );
    edge.stop().await;
    cp.stop().await;
}

async fn wait_succeeded(runtime: &aios_edge_agent::tasks::Runtime, n: usize, timeout: Duration) {
    let start = Instant::now();
    loop {
        let counts = runtime.store().task_counts().await.expect("counts");
        let done: u64 = counts.iter().filter(|(s, _)| s == "succeeded").map(|(_, n)| n).sum();
        let bad: u64 = counts.iter().filter(|(s, _)| s == "failed" || s == "dead_lettered").map(|(_, n)| n).sum();
        assert_eq!(bad, 0, "tasks failed: {counts:?}");
        if done as usize >= n {
            return;
        }
        assert!(start.elapsed() < timeout, "timed out: {counts:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
