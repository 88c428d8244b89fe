//! The edge daemon: opens the store, records the start, keeps the autonomy
//! mode honest as bundles expire, sweeps expired memory items, and runs the
//! uplink, the task runtime and the local HTTP API until shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aios_shared::audit::kinds;
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use crate::http::api::{self, ApiState};
use crate::model_calls::ModelCalls;
use crate::store::EdgeStore;
use crate::sync::uplink::{LinkStatus, Uplink, UplinkOptions};
use crate::tasks::{Runtime, RuntimeOptions};
use aios_daemon::clock::SharedClock;

/// How often bundle expiry is checked.
const EXPIRY_CHECK: Duration = Duration::from_secs(1);
/// How often the memory sweeper removes expired items.
const MEMORY_SWEEP: Duration = Duration::from_secs(30);

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The data directory holds no identity.
    #[error("this edge has not enrolled (data directory {0}); run `aios-edge enroll --control-plane HOST:PORT --token TOKEN` first")]
    NotEnrolled(PathBuf),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] aios_daemon::db::DbError),
    /// The gateway's models cannot load.
    #[error("cannot start the gateway: {0}")]
    Gateway(String),
    /// The local API would listen beyond loopback with no token: the API
    /// and the gateway would be open to the network.
    #[error(
        "the local API may listen on {0}, beyond loopback, only with an API token \
         (api_token in the configuration); it guards the API and the gateway"
    )]
    ExposedWithoutToken(SocketAddr),
    /// Another daemon runs on the same data directory: both would resume
    /// the same tasks and could run one side effect twice at once.
    #[error("another aios-edge runs on the data directory {0} (it holds edge.lock); stop it first")]
    AlreadyRunning(PathBuf),
    /// The instance lock cannot be taken.
    #[error("cannot lock the data directory {path}: {source}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The local API's token cannot be read or made.
    #[error(transparent)]
    Token(#[from] crate::http::guard::TokenError),
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
    /// Bearer token the local API requires, if any (required when
    /// `api_listen` is not loopback). The gateway accepts it too.
    pub api_token: Option<String>,
    /// Where local models come from.
    pub models: aios_models::ModelStore,
    /// How local models are loaded.
    pub load: aios_models::LoadOptions,
    /// Task runtime settings.
    pub runtime: RuntimeOptions,
    /// Serve the OpenAI-compatible gateway on the local API's listener.
    pub gateway: Option<GatewayOptions>,
    /// Where the daemon reads the time: the real clock, or one a test moves.
    pub clock: SharedClock,
}

/// Which models the gateway serves.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// Catalogue id of the chat model.
    pub chat_model: String,
    /// Catalogue id of the embedding model, if embeddings are served.
    pub embedding_model: Option<String>,
    /// A key callers may present instead of the API token (`env:NAME` /
    /// `file:PATH` reference), so applications need not hold the API's.
    pub token: Option<String>,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            chat_model: "smollm2-135m-instruct".into(),
            embedding_model: Some("all-minilm-l6-v2".into()),
            token: None,
        }
    }
}

/// Records every gateway call in the audit log.
struct AuditObserver {
    store: EdgeStore,
    identity: crate::sync::identity::Identity,
    clock: SharedClock,
}

impl crate::http::gateway::GatewayObserver for AuditObserver {
    fn on_call(&self, call: &crate::http::gateway::GatewayCall) {
        let payload = serde_json::json!({
            "endpoint": call.endpoint.path(),
            "model": call.model,
            "stream": call.delivery == crate::http::gateway::Delivery::Stream,
            "status": call.status,
            "outcome": match &call.outcome {
                crate::http::gateway::GatewayOutcome::Completed => "completed".to_owned(),
                crate::http::gateway::GatewayOutcome::Cancelled => "cancelled".to_owned(),
                crate::http::gateway::GatewayOutcome::Failed(why) => format!("failed: {why}"),
            },
            "prompt_tokens": call.prompt_tokens,
            "completion_tokens": call.completion_tokens,
            "tier": call.tier,
            "route": call.route,
            "needs_review": call.needs_review,
            "cost_usd": call.cost.as_usd(),
            "latency_ms": call.latency.as_secs_f64() * 1000.0,
        });
        let (store, identity, now_ms) = (self.store.clone(), self.identity.clone(), self.clock.unix_ms());
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        handle.spawn(async move {
            if let Err(err) = store.append_audit(&identity, now_ms, kinds::GATEWAY_CALL, payload.to_string()).await {
                warn!(%err, "cannot record a gateway call");
            }
        });
    }
}

async fn gateway_router(
    options: &DaemonOptions,
    gateway: &GatewayOptions,
    store: &EdgeStore,
    identity: &crate::sync::identity::Identity,
    tiers: ModelCalls,
) -> Result<axum::Router, DaemonError> {
    let failed = DaemonError::Gateway;
    let chat = aios_models::ChatModel::load(&options.models, &gateway.chat_model, &options.load)
        .await
        .map_err(|err| failed(format!("chat model `{}`: {err}", gateway.chat_model)))?;
    let embedder = match &gateway.embedding_model {
        None => None,
        Some(id) => Some(
            aios_models::EmbeddingModel::load(&options.models, id, &options.load)
                .await
                .map_err(|err| failed(format!("embedding model `{id}`: {err}")))?,
        ),
    };
    let mut keys = Vec::new();
    if let Some(reference) = &gateway.token {
        keys.push(
            crate::model_calls::cloud::Credential::load(reference)
                .map_err(|err| failed(format!("gateway token: {err}")))?,
        );
    }
    if let Some(api_token) = &options.api_token {
        keys.push(
            crate::model_calls::cloud::Credential::new(api_token.as_str())
                .map_err(|err| failed(format!("the API token cannot serve as a gateway key: {err}")))?,
        );
    }
    let config = crate::http::gateway::GatewayConfig {
        chat_model: gateway.chat_model.clone(),
        embedding_model: gateway.embedding_model.clone().unwrap_or_default(),
        keys,
        default_max_tokens: 256,
    };
    let clock = options.clock.clone();
    let observer = Arc::new(AuditObserver { store: store.clone(), identity: identity.clone(), clock: clock.clone() });
    let state = crate::http::gateway::GatewayState::new(config, Some(chat), embedder, observer)
        .with_tiers(tiers)
        .with_clock(clock)
        .with_kill_switch(store.watch_autonomy());
    info!(chat = %gateway.chat_model, "OpenAI-compatible gateway ready");
    Ok(crate::http::gateway::router(Arc::new(state)))
}

/// What bundles may reach by default: secrets in `DATA_DIR/secrets`, files
/// written to `DATA_DIR/files`, no environment variables, no programs.
pub fn default_access(data_dir: &std::path::Path) -> aios_shared::access::BundleAccess {
    aios_shared::access::BundleAccess {
        secrets_dir: Some(data_dir.join("secrets")),
        output_dirs: vec![data_dir.join("files")],
        ..Default::default()
    }
}

impl DaemonOptions {
    /// Defaults for a data directory: no API, models from the environment's store.
    pub fn new(data_dir: PathBuf) -> DaemonOptions {
        let runtime = RuntimeOptions { access: default_access(&data_dir), ..RuntimeOptions::default() };
        DaemonOptions {
            data_dir,
            uplink: UplinkOptions::default(),
            api_listen: None,
            api_token: None,
            gateway: None,
            models: aios_models::ModelStore::from_env(),
            load: aios_models::LoadOptions::default(),
            runtime,
            clock: SharedClock::default(),
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
    /// `edge.lock`, held until the daemon has stopped.
    lock: std::fs::File,
}

impl EdgeHandle {
    /// Stops the daemon and waits for it.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
        drop(self.lock);
    }
}

/// Takes `DATA_DIR/edge.lock` (an advisory lock the operating system
/// releases when the process ends, even on `kill -9`): one daemon per data
/// directory.
fn instance_lock(data_dir: &std::path::Path) -> Result<std::fs::File, DaemonError> {
    let path = data_dir.join("edge.lock");
    let failed = |source| DaemonError::Lock { path: path.clone(), source };
    std::fs::create_dir_all(data_dir).map_err(failed)?;
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(failed)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(DaemonError::AlreadyRunning(data_dir.to_owned())),
        Err(std::fs::TryLockError::Error(source)) => Err(failed(source)),
    }
}

/// Refuses a local API beyond loopback without a token: everything on that
/// listener (the API and the gateway) is guarded by it; on loopback only
/// processes on this machine reach it.
fn check_exposure(api_listen: Option<SocketAddr>, api_token: Option<&str>) -> Result<(), DaemonError> {
    match api_listen {
        Some(addr) if !addr.ip().is_loopback() && api_token.is_none_or(|token| token.trim().is_empty()) => {
            Err(DaemonError::ExposedWithoutToken(addr))
        }
        _ => Ok(()),
    }
}

/// Starts the daemon's tasks and returns at once.
pub async fn start(options: DaemonOptions) -> Result<EdgeHandle, DaemonError> {
    check_exposure(options.api_listen, options.api_token.as_deref())?;
    let lock = instance_lock(&options.data_dir)?;
    let store = EdgeStore::open(&options.data_dir)?;
    let identity = store.identity().await?.ok_or_else(|| DaemonError::NotEnrolled(options.data_dir.clone()))?;
    let payload = serde_json::json!({ "version": env!("CARGO_PKG_VERSION"), "pid": std::process::id() });
    let clock = options.clock.clone();
    store.append_audit(&identity, clock.unix_ms(), kinds::STARTED, payload.to_string()).await?;
    let autonomy = store.refresh_autonomy(&identity, clock.unix_ms()).await?;
    info!(edge_id = %identity.edge_id, %autonomy, "edge started");

    let tiers = ModelCalls::new(options.models.clone(), options.load.clone(), Some(store.clone()), clock.clone());
    let mut runtime_options = options.runtime.clone();
    runtime_options.clock = clock.clone();
    if runtime_options.labels.is_empty() {
        runtime_options.labels = store.labels().await?;
    }
    let runtime = Runtime::new(store.clone(), identity.clone(), tiers.clone(), runtime_options);
    // Configures tiers and memory from the bundle in force before anything is served.
    runtime.definitions().await?;
    let (shutdown_tx, shutdown) = watch::channel(false);
    let (status_tx, status) = watch::channel(LinkStatus::Connecting);
    let api_addr = match options.api_listen {
        None => None,
        Some(addr) => {
            let listener =
                tokio::net::TcpListener::bind(addr).await.map_err(|source| DaemonError::Listen { addr, source })?;
            let local = listener.local_addr().map_err(|source| DaemonError::Listen { addr, source })?;
            // The bound address, for whoever asked for port 0.
            std::fs::write(options.data_dir.join("api.addr"), format!("{local}\n"))
                .map_err(|source| DaemonError::Listen { addr, source })?;
            let configured = options.api_token.clone().filter(|token| !token.trim().is_empty());
            let reads_need_token = configured.is_some();
            let token = match configured {
                Some(token) => token,
                None => crate::http::guard::local_token(&options.data_dir)?,
            };
            let mut app = api::router(ApiState {
                runtime: runtime.clone(),
                token: token.into(),
                reads_need_token,
                http_metrics: Arc::new(aios_daemon::metrics::HttpMetrics::new("aios_edge")),
                link: status.clone(),
                beyond_loopback: !local.ip().is_loopback(),
            });
            if let Some(gateway) = &options.gateway {
                app = app.merge(gateway_router(&options, gateway, &store, &identity, tiers.clone()).await?);
            }
            if local.ip().is_loopback() {
                app = app.layer(axum::middleware::from_fn_with_state((), crate::http::guard::loopback_only));
            }
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
    let memory = runtime.memory().clone();
    let runner = tokio::spawn(runtime.clone().run(shutdown.clone()));
    let task = tokio::spawn(async move {
        let uplink = tokio::spawn(uplink.run());
        let mut ticker = tokio::time::interval(EXPIRY_CHECK);
        let mut sweeper = tokio::time::interval(MEMORY_SWEEP);
        loop {
            tokio::select! {
                _ = sweeper.tick() => {
                    match memory.sweep(clock.unix_ms()).await {
                        Ok(removed) if !removed.is_empty() => {
                            info!(items = removed.len(), "memory sweeper removed expired items");
                            appended.notify_one();
                        }
                        Ok(_) => {}
                        Err(err) => warn!(%err, "memory sweep failed"),
                    }
                }
                _ = ticker.tick() => {
                    match store.refresh_autonomy(&identity, clock.unix_ms()).await {
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
    Ok(EdgeHandle { status, api_addr, runtime, shutdown: shutdown_tx, task, lock })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_beyond_loopback_needs_a_token() {
        let addr = |text: &str| Some(text.parse::<SocketAddr>().expect("an address"));
        assert!(check_exposure(None, None).is_ok());
        assert!(check_exposure(addr("127.0.0.1:7580"), None).is_ok());
        assert!(check_exposure(addr("[::1]:7580"), None).is_ok());
        assert!(check_exposure(addr("0.0.0.0:7580"), Some("secret")).is_ok());
        for (listen, token) in [("0.0.0.0:7580", None), ("192.0.2.4:7580", Some("  ")), ("[::]:7580", Some(""))] {
            let err = check_exposure(addr(listen), token).expect_err("refused");
            assert!(matches!(err, DaemonError::ExposedWithoutToken(_)), "{err}");
            assert!(err.to_string().contains("api_token"), "{err}");
        }
    }
}
