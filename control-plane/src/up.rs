//! `aios-control-plane up`: the one-command start.
//!
//! Runs a control plane and one edge in this process, with all state under
//! `./aios-data`: creates the keys on first start, enrols the edge with a
//! token it makes itself, publishes a first (supervised) bundle if there is
//! none, and prints where the admin API is. Running it again reuses the
//! same data: the edge stays enrolled and its audit chain continues.

use std::path::PathBuf;
use std::time::Duration;

use aios_edge_agent::daemon::{self, DaemonOptions};
use aios_edge_agent::enroll::{self, EnrollOptions};
use aios_edge_agent::store::EdgeStore;
use aios_edge_agent::unix_ms;
use aios_edge_agent::uplink::LinkStatus;
use aios_shared::bundle::{Autonomy, BundleSpec};
use aios_shared::token::EnrollToken;
use anyhow::Context;

use crate::app::{ControlPlane, Options};

/// Runs until SIGINT or SIGTERM.
pub async fn up() -> anyhow::Result<()> {
    let root = PathBuf::from("aios-data");
    let options = Options {
        data_dir: root.join("control-plane"),
        sync_listen: "127.0.0.1:7443".parse().expect("valid literal"),
        admin_listen: "127.0.0.1:7480".parse().expect("valid literal"),
        server_names: vec!["localhost".into()],
        secure_cookies: None,
    };
    let control_plane = ControlPlane::start(options).await.context("cannot start the control plane")?;
    let api = control_plane.api.clone();

    if api.store.bundle(None).await?.is_none() {
        let spec = BundleSpec::new(Autonomy::Supervised);
        crate::api::publish(&api, spec)
            .await
            .map_err(|err| anyhow::anyhow!("cannot publish the first bundle: {err:?}"))?;
    }

    let edge_dir = root.join("edge");
    let edge_store = EdgeStore::open(&edge_dir).context("cannot open the edge database")?;
    if edge_store.identity().await?.is_none() {
        let token = EnrollToken::new(rand::random(), &api.pki.ca_der);
        api.store.create_token(token.secret_hash(), unix_ms(), unix_ms() + 60_000).await?;
        let options = EnrollOptions { name: "local-edge".into(), labels: vec![("site".into(), "local".into())] };
        let address = control_plane.sync_addr.to_string();
        enroll::enroll(&edge_store, &address, &token.to_text(), options, unix_ms())
            .await
            .context("cannot enrol the local edge")?;
    }
    drop(edge_store);
    let edge = daemon::start(DaemonOptions::new(edge_dir.clone())).await.context("cannot start the local edge")?;
    let mut status = edge.status.clone();
    let connected =
        tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| *s == LinkStatus::Connected)).await;

    println!();
    println!("aios is up.");
    println!("  control plane sync (QUIC): {}", control_plane.sync_addr);
    println!("  admin API:                 http://{}", control_plane.admin_addr);
    println!("  admin token file:          {}", control_plane.admin_token_file.display());
    println!(
        "  local edge:                {} ({})",
        edge_dir.display(),
        if connected.is_ok() { "connected" } else { "connecting" }
    );
    println!();
    println!("Try, in another terminal:");
    println!("  cargo run --release -- edge list");
    println!("  cargo run --release -- audit tail");
    println!("  cargo run --release -- policy kill-switch");
    println!("Press Ctrl-C to stop.");

    aios_edge_agent::cli::shutdown_signal().await;
    edge.stop().await;
    control_plane.stop().await;
    Ok(())
}
