//! Sync benchmarks, printed as figures (`cargo bench -p aios-tests --bench sync`):
//!
//! 1. Audit ingest end to end: edges with pre-written logs connect over QUIC
//!    on loopback; the clock runs from their start until the control plane
//!    has durably committed (WAL, `synchronous=FULL`) every event.
//! 2. Bundle propagation: 200 edges connected to one control plane, all in
//!    this process; the clock runs from publish until each edge's
//!    acknowledgement (sent after it persisted the bundle) is recorded.
//!
//! `AIOS_BENCH_EVENTS` (per edge, default 50000), `AIOS_BENCH_INGEST_EDGES`
//! (default 4) and `AIOS_BENCH_FLEET` (default 200) change the sizes.

use std::path::Path;
use std::time::{Duration, Instant};

use aios_control_plane::api;
use aios_control_plane::app::ControlPlane;
use aios_daemon::clock::unix_ms;
use aios_edge_agent::daemon::{self, DaemonOptions, EdgeHandle};
use aios_edge_agent::store::emit_debug_events;
use aios_shared::bundle::{Autonomy, BundleSpec};
use aios_tests::in_process;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn control_plane(dir: &Path) -> ControlPlane {
    in_process::control_plane(dir, Default::default()).await.expect("control plane starts")
}

async fn enroll_edge(cp: &ControlPlane, dir: &Path) {
    in_process::enroll_edge(cp, dir, "bench").await.expect("enrols");
}

async fn start_edge(dir: &Path) -> EdgeHandle {
    daemon::start(DaemonOptions::new(dir.to_owned())).await.expect("edge starts")
}

async fn stored_total(cp: &ControlPlane) -> u64 {
    cp.api.store.edges().await.expect("edges").iter().map(|e| e.audit_seq).sum()
}

async fn ingest(n_edges: usize, n_events: usize) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let cp = control_plane(tmp.path()).await;
    let mut dirs = Vec::new();
    let mut expected = 0;
    for idx in 0..n_edges {
        let dir = tmp.path().join(format!("edge{idx}"));
        enroll_edge(&cp, &dir).await;
        let emit_dir = dir.clone();
        let head = tokio::task::spawn_blocking(move || emit_debug_events(&emit_dir, n_events as u64, 5_000, unix_ms))
            .await
            .expect("emit task")
            .expect("emit");
        expected += head.seq;
        dirs.push(dir);
    }
    let start = Instant::now();
    let mut edges = Vec::new();
    for dir in &dirs {
        edges.push(start_edge(dir).await);
    }
    // The clock stops once every pre-written event is committed; the few
    // lifecycle events each edge adds (started, connected) may ride along.
    while stored_total(&cp).await < expected {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = start.elapsed();
    let stored = stored_total(&cp).await;
    println!(
        "audit ingest: {stored} events from {n_edges} edges in {:.3} s = {:.0} events/s end to end (QUIC loopback, durable commit)",
        elapsed.as_secs_f64(),
        stored as f64 / elapsed.as_secs_f64()
    );
    for edge in edges {
        edge.stop().await;
    }
    cp.stop().await;
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

async fn propagation(n_edges: usize, rounds: usize) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let cp = control_plane(tmp.path()).await;
    let mut edges = Vec::new();
    for idx in 0..n_edges {
        let dir = tmp.path().join(format!("edge{idx}"));
        enroll_edge(&cp, &dir).await;
        edges.push(start_edge(&dir).await);
    }
    while cp.api.registry.len() < n_edges {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut samples = Vec::new();
    for _ in 0..rounds {
        let spec = BundleSpec::new(Autonomy::Autonomous);
        let start = Instant::now();
        let version = api::publish(&cp.api, spec).await.expect("publish");
        let mut pending: std::collections::HashSet<String> =
            cp.api.store.edges().await.expect("edges").into_iter().map(|e| e.id).collect();
        while !pending.is_empty() {
            for edge in cp.api.store.edges().await.expect("edges") {
                if edge.bundle_version >= version && pending.remove(&edge.id) {
                    samples.push(start.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    samples.sort();
    println!(
        "bundle propagation to {n_edges} connected edges ({} samples over {rounds} publishes): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        samples.len(),
        percentile(&samples, 0.50).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples.last().expect("samples").as_secs_f64() * 1e3
    );
    for edge in edges {
        edge.stop().await;
    }
    cp.stop().await;
}

fn main() {
    // `cargo test --benches` runs this with `--test`-like flags; skip then.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        ingest(env_or("AIOS_BENCH_INGEST_EDGES", 4), env_or("AIOS_BENCH_EVENTS", 50_000)).await;
        propagation(env_or("AIOS_BENCH_FLEET", 200), 5).await;
    });
}
