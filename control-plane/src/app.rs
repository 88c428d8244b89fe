//! Assembles a running control plane: keys, database, the QUIC endpoint and
//! the admin API. `serve`, `up`, the benchmarks and the tests all start it
//! through [`ControlPlane::start`].

use aios_daemon::clock::SharedClock;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::sync::{watch, Mutex};
use tracing::info;

use crate::admin_tls::{AdminTls, AdminTlsError};
use crate::api::{self, ApiState};
use crate::auth::Auth;
use crate::metrics::CpMetrics;
use crate::pki::{write_new, Pki, PkiError};
use crate::server::{self, Registry, SyncContext};
use crate::store::CpStore;

/// Where and how to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Directory for keys, the database and the admin token.
    pub data_dir: PathBuf,
    /// UDP address of the sync endpoint.
    pub sync_listen: SocketAddr,
    /// TCP address of the admin API.
    pub admin_listen: SocketAddr,
    /// Extra DNS names for the server certificate.
    pub server_names: Vec<String>,
    /// How the admin API is secured: HTTPS beyond loopback by default.
    /// Console cookies are marked `Secure` whenever it speaks HTTPS.
    pub admin_tls: AdminTls,
    /// Where the control plane reads the time: the real clock, or one a test moves.
    pub clock: SharedClock,
}

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Keys could not be loaded or created.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] aios_daemon::db::DbError),
    /// The QUIC endpoint failed.
    #[error(transparent)]
    Server(#[from] server::ServerError),
    /// The admin API's TLS cannot be set up, or is missing where required.
    #[error(transparent)]
    AdminTls(#[from] AdminTlsError),
    /// A file or socket failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

/// A running control plane.
pub struct ControlPlane {
    /// The bound sync address.
    pub sync_addr: SocketAddr,
    /// The bound admin API address.
    pub admin_addr: SocketAddr,
    /// Its URL (`https://` when it speaks TLS).
    pub admin_url: String,
    /// The file holding the admin token.
    pub admin_token_file: PathBuf,
    /// The API's state, for in-process use (`up`, benchmarks).
    pub api: ApiState,
    endpoint: quinn::Endpoint,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ControlPlane {
    /// Starts everything and returns once both listeners are bound.
    pub async fn start(options: Options) -> Result<ControlPlane, StartError> {
        let io = |what: String| move |source| StartError::Io { what, source };
        std::fs::create_dir_all(&options.data_dir)
            .map_err(io(format!("cannot create {}", options.data_dir.display())))?;
        let pki = Arc::new(Pki::load_or_create(&options.data_dir, &options.server_names)?);
        let store = CpStore::open(&options.data_dir)?;
        store.reset_connections().await?;
        store.prepare_views().await?;
        let (admin_token_file, token_hash) = admin_token(&options.data_dir)?;

        let latest = store.bundle(None).await?;
        let (bundles_tx, bundles) = watch::channel(latest);
        let registry = Arc::new(Registry::default());
        let endpoint = server::bind(&pki, options.sync_listen, &options.clock)?;
        let sync_addr = endpoint.local_addr().map_err(io("cannot read the sync address".into()))?;
        let (dispatched_tx, dispatched) = watch::channel(0u64);
        let ctx = SyncContext {
            store: store.clone(),
            pki: pki.clone(),
            registry: registry.clone(),
            bundles,
            dispatched,
            clock: options.clock.clone(),
        };
        let mut tasks = vec![tokio::spawn(server::serve(endpoint.clone(), ctx))];
        let tls = match options.admin_tls.enabled(options.admin_listen)? {
            true => Some(options.admin_tls.server_config(&pki)?),
            false => None,
        };

        let api = ApiState {
            store,
            pki,
            registry,
            bundles: Arc::new(bundles_tx),
            dispatched: Arc::new(dispatched_tx),
            publish_lock: Arc::new(Mutex::new(())),
            auth: Arc::new(Auth::new(token_hash, tls.is_some())),
            metrics: Arc::new(CpMetrics::default()),
            clock: options.clock.clone(),
        };
        let listener = tokio::net::TcpListener::bind(options.admin_listen)
            .await
            .map_err(io(format!("cannot listen on {}", options.admin_listen)))?;
        let admin_addr = listener.local_addr().map_err(io("cannot read the admin address".into()))?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let router = api::router(api.clone())
            .layer(axum::middleware::from_fn_with_state(api.metrics.http.clone(), aios_daemon::metrics::track))
            .into_make_service_with_connect_info::<SocketAddr>();
        tasks.push(tokio::spawn(serve_admin(listener, router, tls.clone(), shutdown_rx)));
        // Where edges on this machine (and tests that asked for port 0)
        // find the sync endpoint, then where CLI clients find the API; the
        // API's file comes last, so once it exists both are bound.
        std::fs::write(options.data_dir.join("sync.addr"), format!("{sync_addr}\n"))
            .map_err(io("cannot write sync.addr".into()))?;
        // For clients on this machine: an unspecified address is reached on loopback.
        let local = match admin_addr.ip() {
            std::net::IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::from(([127, 0, 0, 1], admin_addr.port())),
            std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
                SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], admin_addr.port()))
            }
            _ => admin_addr,
        };
        let admin_url = format!("{}://{local}", if tls.is_some() { "https" } else { "http" });
        std::fs::write(options.data_dir.join("admin.url"), format!("{admin_url}\n"))
            .map_err(io("cannot write admin.url".into()))?;
        info!(%sync_addr, %admin_addr, "control plane started");
        Ok(ControlPlane { sync_addr, admin_addr, admin_url, admin_token_file, api, endpoint, shutdown, tasks })
    }

    /// Stops listening, closes connections and waits for the tasks.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        self.endpoint.close(aios_daemon::transport::close_code::SHUTDOWN.into(), b"control plane shutting down");
        for task in self.tasks {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
        }
        self.endpoint.wait_idle().await;
    }
}

/// Serves the admin router over HTTPS (rustls, with a deadline on the
/// handshake) or plain HTTP, until `shutdown` changes.
async fn serve_admin(
    listener: tokio::net::TcpListener,
    router: axum::extract::connect_info::IntoMakeServiceWithConnectInfo<axum::Router, SocketAddr>,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let result = match tls {
        None => {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = shutdown.changed().await;
                })
                .await
        }
        Some(config) => {
            let handle = axum_server::Handle::new();
            let stopper = handle.clone();
            tokio::spawn(async move {
                let _ = shutdown.changed().await;
                stopper.graceful_shutdown(Some(std::time::Duration::from_secs(5)));
            });
            let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(
                axum_server::tls_rustls::RustlsConfig::from_config(config),
            )
            .handshake_timeout(ADMIN_HANDSHAKE_TIMEOUT);
            match listener.into_std() {
                Ok(listener) => match axum_server::from_tcp(listener) {
                    Ok(server) => server.acceptor(acceptor).handle(handle).serve(router).await,
                    Err(err) => Err(err),
                },
                Err(err) => Err(err),
            }
        }
    };
    if let Err(err) = result {
        tracing::error!(%err, "admin API stopped");
    }
}

/// How long a client may take over the TLS handshake.
const ADMIN_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads the admin token file, creating it on first start; returns its path
/// and the token's hash.
fn admin_token(data_dir: &Path) -> Result<(PathBuf, [u8; 32]), StartError> {
    let path = data_dir.join("admin-token");
    if !path.exists() {
        write_new(&path, hex::encode(rand::random::<[u8; 32]>()).as_bytes())?;
    }
    let token = std::fs::read_to_string(&path)
        .map_err(|source| StartError::Io { what: format!("cannot read {}", path.display()), source })?;
    Ok((path, Sha256::digest(token.trim().as_bytes()).into()))
}
