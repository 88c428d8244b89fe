//! A control plane and edges in this process (benches and clock tests):
//! the library entry points the binaries use, on port 0.

use std::path::Path;

use aios_control_plane::app::{ControlPlane, Options};
use aios_daemon::clock::SharedClock;
use aios_edge_agent::store::EdgeStore;
use aios_edge_agent::sync::enroll::{self, EnrollOptions};
use aios_edge_agent::sync::identity::Identity;
use aios_shared::token::EnrollToken;

/// Starts a control plane under `dir/cp`, reading time from `clock`.
pub async fn control_plane(dir: &Path, clock: SharedClock) -> anyhow::Result<ControlPlane> {
    let options = Options {
        data_dir: dir.join("cp"),
        sync_listen: "127.0.0.1:0".parse()?,
        admin_listen: "127.0.0.1:0".parse()?,
        server_names: Vec::new(),
        admin_tls: Default::default(),
        clock: clock.clone(),
    };
    Ok(ControlPlane::start(options).await?)
}

/// Enrols a new edge in `dir` with a fresh token, as `name`.
pub async fn enroll_edge(cp: &ControlPlane, dir: &Path, name: &str) -> anyhow::Result<Identity> {
    let token = token(cp, std::time::Duration::from_secs(600)).await?;
    enroll_with(cp, dir, name, &token).await
}

/// A fresh enrolment token (text), valid for `ttl` by the control plane's clock.
pub async fn token(cp: &ControlPlane, ttl: std::time::Duration) -> anyhow::Result<String> {
    let now = cp.api.clock.unix_ms();
    let ttl_ms = i64::try_from(ttl.as_millis())?;
    let token = EnrollToken::new(rand::random(), &cp.api.pki.ca_der());
    cp.api.store.create_token(token.secret_hash(), now, now + ttl_ms, Default::default()).await?;
    Ok(token.to_text())
}

/// Enrols a new edge in `dir` with `token`, as `name`.
pub async fn enroll_with(cp: &ControlPlane, dir: &Path, name: &str, token: &str) -> anyhow::Result<Identity> {
    let store = EdgeStore::open(dir)?;
    let options = EnrollOptions { name: name.into(), labels: Vec::new() };
    let now = cp.api.clock.unix_ms();
    Ok(enroll::enroll(&store, &cp.sync_addr.to_string(), token, options, now).await?)
}
