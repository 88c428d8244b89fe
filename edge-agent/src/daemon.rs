//! The edge daemon: opens the store, records the start, keeps the autonomy
//! mode honest as bundles expire, and runs the uplink, the task runtime and
//! the local HTTP API until shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aios_shared::audit::kinds;
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use crate::api::{self, ApiState};
use crate::runtime::{Runtime, RuntimeOptions};
use crate::store::EdgeStore;
use crate::tiers::Tiers;
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
    /// The local API cannot listen.
    #[error("cannot listen on {addr} for the local API: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// What the daemon needs.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// Where the edge keeps its database.
    pub data_dir: PathBuf,
    /// Reconnect settings and address override.
    pub uplink: UplinkOptions,
    /// Where the local HTTP API listens (`None`: no API).
    pub api_listen: Option<SocketAddr>,
    /// Bearer token the local API requires, if any.
    pub api_token: Option<String>,
    /// Where local models come from.
    pub models: aios_models::ModelStore,
    /// How local models are loaded.
    pub load: aios_models::LoadOptions,
    /// Task runtime settings.
    pub runtime: RuntimeOptions,
}

impl DaemonOptions {
    /// Defaults for a data directory: no API, models from the environment's store.
    pub fn new(data_dir: PathBuf) -> DaemonOptions {
        DaemonOptions {
            data_dir,
            uplink: UplinkOptions::default(),
            api_listen: None,
            api_token: None,
            models: aios_models::ModelStore::from_env(),
            load: aios_models::LoadOptions::default(),
            runtime: RuntimeOptions::default(),
        }
    }
}

/// A running edge, for `up` and tests in the same process.
pub struct EdgeHandle {
    /// The link's state.
    pub status: watch::Receiver<LinkStatus>,
    /// Where the local API listens.
    pub api_addr: Option<SocketAddr>,
    /// The task runtime.
    pub runtime: Runtime,
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

    let tiers = Tiers::new(options.models.clone(), options.load.clone(), Some(store.clone()));
    let runtime = Runtime::new(store.clone(), identity.clone(), tiers, options.runtime.clone());
    let (shutdown_tx, shutdown) = watch::channel(false);
    let api_addr = match options.api_listen {
        None => None,
        Some(addr) => {
            let listener =
                tokio::net::TcpListener::bind(addr).await.map_err(|source| DaemonError::Listen { addr, source })?;
            let local = listener.local_addr().map_err(|source| DaemonError::Listen { addr, source })?;
            let app =
                api::router(ApiState { runtime: runtime.clone(), token: options.api_token.clone().map(Into::into) });
            let mut api_shutdown = shutdown.clone();
            tokio::spawn(async move {
                let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                    let _ = api_shutdown.wait_for(|stop| *stop).await;
                });
                if let Err(err) = serve.await {
                    warn!(%err, "local API stopped");
                }
            });
            info!(addr = %local, "local API listening");
            Some(local)
        }
    };
    let (status_tx, status) = watch::channel(LinkStatus::Connecting);
    let appended = Arc::new(Notify::new());
    let uplink = Uplink {
        store: store.clone(),
        identity: identity.clone(),
        options: options.uplink,
        appended: appended.clone(),
        shutdown: shutdown.clone(),
        status: status_tx,
        runtime: runtime.clone(),
    };
    let mut expiry_shutdown = shutdown.clone();
    let runner = tokio::spawn(runtime.clone().run(shutdown.clone()));
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
        let _ = runner.await;
        let _ = uplink.await;
        info!("edge stopped");
    });
    Ok(EdgeHandle { status, api_addr, runtime, shutdown: shutdown_tx, task })
}
