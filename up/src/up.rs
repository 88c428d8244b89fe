//! `aios up`: the one-command start.
//!
//! Runs, in this process and with all state under `./aios-data`: a control
//! plane, the sample shop on loopback, and two edges ("front-office" and
//! "studio"), enrolled with tokens `up` makes itself. On first start it
//! creates an `admin` account (printing its password once), publishes the
//! reference bundle (`up/data/bundle.toml`: the triage and content
//! workloads), loads the edges' memories and dispatches the sample work in
//! `up/data/*.jsonl`. Then it prints the console's address. Running
//! it again reuses the same data: edges stay enrolled, chains continue.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aios_control_plane::accounts::{self, Role};
use aios_control_plane::api::ApiState;
use aios_control_plane::app::{ControlPlane, Options};
use aios_daemon::clock::unix_ms;
use aios_edge_agent::daemon::{self, DaemonOptions, EdgeHandle};
use aios_edge_agent::memory::Item;
use aios_edge_agent::store::EdgeStore;
use aios_edge_agent::sync::enroll::{self, EnrollOptions};
use aios_edge_agent::sync::uplink::LinkStatus;
use aios_shared::bundle::BundleSpec;
use aios_shared::token::EnrollToken;
use anyhow::Context;

const BUNDLE: &str = include_str!("../data/bundle.toml");
const MESSAGES: &str = include_str!("../data/messages.jsonl");
const BRIEFS: &str = include_str!("../data/briefs.jsonl");
const NOTES: &str = include_str!("../data/notes.jsonl");
const POLICIES: &str = include_str!("../data/policies.jsonl");

/// The sample shop's address (fixed, so the published bundle stays valid
/// across restarts).
const SHOP_ADDR: &str = "127.0.0.1:7490";

/// One edge of the demo fleet.
struct DemoEdge {
    name: &'static str,
    role: &'static str,
    api: &'static str,
}

const EDGES: [DemoEdge; 2] = [
    DemoEdge { name: "front-office", role: "front-office", api: "127.0.0.1:7581" },
    DemoEdge { name: "studio", role: "studio", api: "127.0.0.1:7582" },
];

/// Where `up` keeps its state and listens.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Everything `up` writes goes under here.
    pub root: PathBuf,
    /// Listen on ports the system picks instead of the fixed ones (tests,
    /// or a second `up` beside a first). The shop's address is written into
    /// the published bundle, so such a root is not meant to be restarted.
    pub ephemeral_ports: bool,
}

impl UpOptions {
    /// The fixed address, or port 0 on the same host with `ephemeral_ports`.
    fn addr(&self, fixed: &str) -> SocketAddr {
        let mut addr: SocketAddr = fixed.parse().expect("valid literal");
        if self.ephemeral_ports {
            addr.set_port(0);
        }
        addr
    }
}

/// Runs until SIGINT or SIGTERM.
pub async fn up(up: UpOptions) -> anyhow::Result<()> {
    let root = up.root.clone();
    let options = Options {
        data_dir: root.join("control-plane"),
        sync_listen: up.addr("127.0.0.1:7443"),
        admin_listen: up.addr("127.0.0.1:7480"),
        server_names: vec!["localhost".into()],
        admin_tls: Default::default(),
        clock: Default::default(),
    };
    let control_plane = ControlPlane::start(options).await.context("cannot start the control plane")?;
    let api = control_plane.api.clone();
    let shop = crate::shop::start(up.addr(SHOP_ADDR))
        .await
        .with_context(|| format!("cannot start the sample shop on {SHOP_ADDR} (is another `up` running?)"))?;

    publish_reference_bundle(&api, &root, shop).await?;
    let password = ensure_admin(&api).await?;

    let mut handles = Vec::new();
    let mut edge_ids = Vec::new();
    for edge in &EDGES {
        let (id, handle) = start_edge(&control_plane, &root, edge, up.addr(edge.api)).await?;
        edge_ids.push(id);
        handles.push(handle);
    }
    load_memory(&handles[0], POLICIES, "policy passages").await?;
    load_memory(&handles[1], NOTES, "research notes").await?;
    let fed = feed(&api, &edge_ids).await?;

    let mut connected = 0;
    for handle in &handles {
        let mut status = handle.status.clone();
        let up = tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| *s == LinkStatus::Connected)).await;
        connected += usize::from(up.is_ok());
    }

    println!();
    println!("aios is up: a control plane, the sample shop and {connected}/{} edges connected.", handles.len());
    println!();
    println!("  Console:  http://{}/console", control_plane.admin_addr);
    match &password {
        Some(password) => println!("  Log in as `admin` with the one-time password {password}  (shown only now)"),
        None => println!("  Log in as `admin` (reset with: cargo run --release -- user passwd admin)"),
    }
    println!();
    if fed > 0 {
        println!("  Dispatched {fed} tasks: customer messages to front-office (triage: refunds over 50 wait for");
        println!("  your approval), content briefs to studio (posts publish only after approval).");
    }
    if std::env::var_os("AIOS_LARGE_BASE_URL").is_none() {
        println!("  No `large` tier is configured (AIOS_LARGE_BASE_URL): the posts' final review runs on the");
        println!("  local model instead, so publishing them waits for a human; the approval says why.");
    }
    println!();
    println!(
        "  Admin API: http://{}  (token in {})",
        control_plane.admin_addr,
        control_plane.admin_token_file.display()
    );
    let edge_apis: Vec<String> =
        handles.iter().filter_map(|h| h.api_addr).map(|addr| format!("http://{addr}/metrics")).collect();
    println!("  Metrics:   http://{}/metrics, and on the edges: {}", control_plane.admin_addr, edge_apis.join(", "));
    println!("  Sample shop: http://{shop}   Published posts: {}", root.join("posts").display());
    println!("Press Ctrl-C to stop.");

    aios_daemon::cli::shutdown_signal().await;
    for handle in handles {
        handle.stop().await;
    }
    control_plane.stop().await;
    Ok(())
}

/// The reference bundle with this machine's addresses, and the `large`
/// tier when `AIOS_LARGE_BASE_URL` names an OpenAI-compatible endpoint.
pub fn reference_bundle(posts_dir: &Path, shop: SocketAddr) -> anyhow::Result<BundleSpec> {
    let posts_dir = std::path::absolute(posts_dir).context("cannot resolve the posts folder")?;
    let mut text = BUNDLE
        .replace("SHOP_URL", &format!("http://{shop}"))
        .replace("POSTS_DIR", &posts_dir.display().to_string().replace('\\', "/"));
    if let Ok(base_url) = std::env::var("AIOS_LARGE_BASE_URL") {
        let model = std::env::var("AIOS_LARGE_MODEL").unwrap_or_else(|_| "gpt-4o-mini".into());
        text.push_str(&format!(
            "\n[tiers.large]\nkind = \"openai\"\nmodel = {model:?}\nbase_url = {base_url:?}\n\
             credential = \"env:AIOS_LARGE_API_KEY\"\ntimeout = \"60s\"\n"
        ));
    }
    BundleSpec::from_toml(&text).context("the reference bundle does not validate")
}

async fn publish_reference_bundle(api: &ApiState, root: &Path, shop: SocketAddr) -> anyhow::Result<()> {
    let current = api.store.bundle(None).await?;
    let has_workloads = match &current {
        Some((_, signed)) => {
            signed.open(&api.pki.bundle_root()).is_ok_and(|body| body.definitions.agents.contains_key("triage"))
        }
        None => false,
    };
    if has_workloads {
        return Ok(());
    }
    let posts = root.join("posts");
    std::fs::create_dir_all(&posts).with_context(|| format!("cannot create {}", posts.display()))?;
    let spec = reference_bundle(&posts, shop)?;
    aios_control_plane::api::publish(api, spec)
        .await
        .map_err(|err| anyhow::anyhow!("cannot publish the reference bundle: {}", err.1))?;
    Ok(())
}

/// Creates `admin` on first start; returns its password then.
async fn ensure_admin(api: &ApiState) -> anyhow::Result<Option<String>> {
    if !api.store.accounts(unix_ms()).await?.is_empty() {
        return Ok(None);
    }
    let password = accounts::generate_password();
    let hash = tokio::task::spawn_blocking({
        let password = password.clone();
        move || accounts::hash_password(&password)
    })
    .await??;
    api.store.add_account("admin".into(), Role::Admin, hash, unix_ms()).await?;
    Ok(Some(password))
}

async fn start_edge(
    cp: &ControlPlane,
    root: &Path,
    edge: &DemoEdge,
    api: SocketAddr,
) -> anyhow::Result<(String, EdgeHandle)> {
    let dir = root.join("edges").join(edge.name);
    let store = EdgeStore::open(&dir).with_context(|| format!("cannot open the {} database", edge.name))?;
    if store.identity().await?.is_none() {
        let token = EnrollToken::new(rand::random(), &cp.api.pki.ca_der());
        let labels = vec![("role".to_owned(), edge.role.to_owned()), ("site".to_owned(), "local".to_owned())];
        let bound = labels.iter().cloned().collect();
        cp.api.store.create_token(token.secret_hash(), unix_ms(), unix_ms() + 60_000, bound).await?;
        let options = EnrollOptions { name: edge.name.into(), labels };
        enroll::enroll(&store, &cp.sync_addr.to_string(), &token.to_text(), options, unix_ms())
            .await
            .with_context(|| format!("cannot enrol {}", edge.name))?;
    }
    let id = store.identity().await?.context("enrolled edge without identity")?.edge_id;
    drop(store);
    let mut options = DaemonOptions::new(dir);
    options.api_listen = Some(api);
    // The reference bundle writes posts under ROOT/posts and may escalate
    // with the key in AIOS_LARGE_API_KEY; the edges allow exactly that.
    let posts = std::path::absolute(root.join("posts")).context("cannot resolve the posts folder")?;
    options.runtime.access.output_dirs = vec![posts];
    options.runtime.access.secret_env.insert("AIOS_LARGE_API_KEY".into());
    options.runtime.access.hosts.insert(SHOP_ADDR.split(':').next().unwrap_or("127.0.0.1").to_owned());
    let handle = daemon::start(options).await.with_context(|| format!("cannot start {}", edge.name))?;
    Ok((id, handle))
}

async fn load_memory(edge: &EdgeHandle, jsonl: &str, what: &str) -> anyhow::Result<()> {
    let items: Vec<Item> = jsonl
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .with_context(|| format!("the {what} fixture is not valid"))?;
    let count = items.len();
    edge.runtime.memory().import(items, unix_ms()).await.with_context(|| format!("cannot load the {what}"))?;
    tracing::info!(count, what, "memory loaded");
    Ok(())
}

/// Dispatches the sample work once (the first time nothing was dispatched).
async fn feed(api: &ApiState, edge_ids: &[String]) -> anyhow::Result<usize> {
    if !api.store.dispatches(None, 1).await?.is_empty() {
        return Ok(0);
    }
    let mut count = 0;
    for (edge, agent, kind, fixture) in
        [(&edge_ids[0], "triage", "customer-message", MESSAGES), (&edge_ids[1], "content", "content-brief", BRIEFS)]
    {
        for line in fixture.lines().filter(|l| !l.trim().is_empty()) {
            let input: serde_json::Value = serde_json::from_str(line).context("a sample task is not JSON")?;
            api.store.dispatch_tasks(vec![edge.clone()], agent.into(), Some(kind.into()), input, unix_ms()).await?;
            count += 1;
        }
    }
    api.dispatched.send_modify(|n| *n += 1);
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_bundle_and_fixtures_are_valid() {
        let dir = tempfile::tempdir().unwrap();
        let spec = reference_bundle(dir.path(), "127.0.0.1:7490".parse().unwrap()).unwrap();
        assert!(spec.agents.contains_key("triage") && spec.agents.contains_key("content"));
        assert!(spec.tiers.contains_key("local"));
        for fixture in [MESSAGES, BRIEFS] {
            for line in fixture.lines() {
                serde_json::from_str::<serde_json::Value>(line).unwrap();
            }
        }
        for fixture in [NOTES, POLICIES] {
            for line in fixture.lines() {
                serde_json::from_str::<Item>(line).unwrap();
            }
        }
    }
}
