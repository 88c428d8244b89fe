//! The edge daemon: opens the store, records the start, keeps the autonomy
//! mode honest as bundles expire, and runs the uplink until shutdown.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aios_shared::audit::kinds;
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use crate::store::EdgeStore;
use crate::unix_ms;
use crate::uplink::{LinkStatus, Uplink, UplinkOptions};

/// How often bundle expiry is checked.
const EXPIRY_CHECK: Duration = Duration::from_secs(1);

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The data directory holds no identity.
    #[error("this edge has not enrolled (data directory {0}); run `aios-edge enroll --control-plane HOST:PORT --token TOKEN` first")]
    NotEnrolled(PathBuf),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
}

/// What the daemon needs.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// Where the edge keeps its database.
    pub data_dir: PathBuf,
    /// Reconnect settings and address override.
    pub uplink: UplinkOptions,
}

/// A running edge, for `up` and tests in the same process.
pub struct EdgeHandle {
    /// The link's state.
    pub status: watch::Receiver<LinkStatus>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl EdgeHandle {
    /// Stops the daemon and waits for it.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

/// Starts the daemon's tasks and returns at once.
pub async fn start(options: DaemonOptions) -> Result<EdgeHandle, DaemonError> {
    let store = EdgeStore::open(&options.data_dir)?;
    let identity = store.identity().await?.ok_or_else(|| DaemonError::NotEnrolled(options.data_dir.clone()))?;
    let payload = serde_json::json!({ "version": env!("CARGO_PKG_VERSION"), "pid": std::process::id() });
    store.append_audit(&identity, unix_ms(), kinds::STARTED, payload.to_string()).await?;
    let autonomy = store.refresh_autonomy(&identity, unix_ms()).await?;
    info!(edge_id = %identity.edge_id, %autonomy, "edge started");

    let (shutdown_tx, shutdown) = watch::channel(false);
    let (status_tx, status) = watch::channel(LinkStatus::Connecting);
    let appended = Arc::new(Notify::new());
    let uplink = Uplink {
        store: store.clone(),
        identity: identity.clone(),
        options: options.uplink,
        appended: appended.clone(),
        shutdown: shutdown.clone(),
        status: status_tx,
    };
    let mut expiry_shutdown = shutdown.clone();
    let task = tokio::spawn(async move {
        let uplink = tokio::spawn(uplink.run());
        let mut ticker = tokio::time::interval(EXPIRY_CHECK);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    match store.refresh_autonomy(&identity, unix_ms()).await {
                        Ok(_) => appended.notify_one(),
                        Err(err) => warn!(%err, "cannot re-evaluate the autonomy mode"),
                    }
                }
                _ = expiry_shutdown.changed() => break,
            }
        }
        let _ = uplink.await;
        info!("edge stopped");
    });
    Ok(EdgeHandle { status, shutdown: shutdown_tx, task })
}
