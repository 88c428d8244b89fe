//! The edge's sync driver: keeps one QUIC connection to the control plane
//! and drives [`EdgeSync`] over it.
//!
//! The loop only carries out what the state machine asks: it sends frames,
//! loads audit events from SQLite, offers bundles to the store (which
//! persists before the ack is sent) and sleeps until the next timer. On any
//! loss it reconnects with exponential backoff and jitter; a refusal that
//! retrying cannot fix (revoked, unknown certificate) jumps straight to the
//! longest delay, so a refused edge never hammers the control plane.

use std::sync::Arc;
use std::time::Duration;

use aios_shared::backoff::Backoff;
use aios_shared::sync::{EdgeConfig, EdgeEvent, EdgeSync};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::store::{BundleOutcome, EdgeStore};
use crate::sync::enroll::{resolve, unspecified_for};
use crate::sync::identity::Identity;
use aios_daemon::transport::{close_code, sleep_until, spawn_frame_reader, write_frame, SERVER_NAME};

/// How often the log is checked for events written by other processes.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// The state of the link, for status displays and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkStatus {
    /// Dialling.
    Connecting,
    /// Handshake done.
    Connected,
    /// Not connected; the reason of the last failure.
    Offline(String),
}

/// Settings of the reconnect loop.
#[derive(Debug, Clone)]
pub struct UplinkOptions {
    /// Override of the control plane address stored at enrolment.
    pub control_plane: Option<String>,
    /// First reconnect delay cap.
    pub backoff_base: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
}

impl Default for UplinkOptions {
    fn default() -> Self {
        UplinkOptions {
            control_plane: None,
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// The uplink task's inputs.
pub struct Uplink {
    pub(crate) store: EdgeStore,
    pub(crate) identity: Identity,
    pub(crate) options: UplinkOptions,
    /// Woken whenever this process appends to the audit log.
    pub(crate) appended: Arc<Notify>,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) status: watch::Sender<LinkStatus>,
    /// Where dispatched tasks are submitted.
    pub(crate) runtime: crate::tasks::Runtime,
}

/// How one connection ended.
enum SessionEnd {
    Shutdown,
    Lost {
        connected: bool,
        reason: String,
        permanent: bool,
    },
    /// A renewed certificate was stored: reconnect at once to present it.
    Renewed,
    /// The control plane refused this edge as revoked.
    Revoked(String),
}

impl Uplink {
    /// Submits dispatched tasks, keyed by dispatch id so a re-sent dispatch
    /// returns the task already made. A database failure acknowledges
    /// nothing (the control plane sends them again).
    async fn accept_tasks(
        &self,
        tasks: Vec<aios_shared::wire::DispatchedTask>,
    ) -> Result<Vec<aios_shared::wire::TaskReceipt>, aios_daemon::db::DbError> {
        use crate::tasks::SubmitError;
        use crate::tasks::{RuntimeError, Submission};
        let mut receipts = Vec::with_capacity(tasks.len());
        for task in tasks {
            let input = match serde_json::from_str(&task.input) {
                Ok(input) => input,
                Err(err) => {
                    let refused = Some(format!("input is not JSON: {err}"));
                    receipts.push(aios_shared::wire::TaskReceipt { id: task.id, task_id: None, refused });
                    continue;
                }
            };
            let submission =
                Submission { agent: task.agent, input, kind: task.kind, idempotency_key: Some(task.id.clone()) };
            let (task_id, refused) = match self.runtime.submit(submission, "control-plane").await {
                Ok((record, _)) => (Some(record.id), None),
                Err(RuntimeError::Db(err) | RuntimeError::Submit(SubmitError::Db(err))) => return Err(err),
                Err(refusal) => (None, Some(refusal.to_string())),
            };
            receipts.push(aios_shared::wire::TaskReceipt { id: task.id, task_id, refused });
        }
        Ok(receipts)
    }

    /// Verifies and applies signed commands, once each.
    async fn apply_commands(
        &self,
        commands: Vec<aios_shared::command::SignedCommand>,
    ) -> Result<Vec<aios_shared::wire::CommandReceipt>, aios_daemon::db::DbError> {
        use crate::exec::Applied;
        let mut receipts = Vec::with_capacity(commands.len());
        // Commands are signed with the key of the bundle in force (after
        // any rotation of the bundle-signing key).
        let pinned = self.identity.bundle_key;
        let key = self.store.bundle().await?.map_or(pinned, |bundle| bundle.signer(&pinned));
        for command in commands {
            let refused = match command.open(&key, &self.identity.edge_id) {
                Ok(body) => match self.runtime.apply_command(body).await? {
                    Applied::Refused(reason) => Some(reason),
                    Applied::Done | Applied::Compensate { .. } => None,
                },
                Err(err) => {
                    warn!(id = %command.id, %err, "command refused");
                    let payload = serde_json::json!({ "command": command.id, "reason": err.to_string() });
                    self.audit(aios_shared::audit::kinds::COMMAND_REFUSED, payload.to_string()).await;
                    Some(err.to_string())
                }
            };
            receipts.push(aios_shared::wire::CommandReceipt { id: command.id, refused });
        }
        Ok(receipts)
    }

    /// Runs until shutdown.
    pub async fn run(mut self) {
        let mut backoff = Backoff::new(self.options.backoff_base, self.options.backoff_max);
        let addr_text = self.options.control_plane.clone().unwrap_or_else(|| self.identity.control_plane.clone());
        loop {
            if *self.shutdown.borrow() {
                return;
            }
            let _ = self.status.send(LinkStatus::Connecting);
            let span = info_span!("sync", edge_id = %self.identity.edge_id, control_plane = %addr_text);
            match self.session(&addr_text).instrument(span.clone()).await {
                SessionEnd::Shutdown => return,
                SessionEnd::Renewed => continue,
                SessionEnd::Revoked(reason) => {
                    self.revoked(reason.clone()).instrument(span).await;
                    backoff.saturate();
                    let _ = self.status.send(LinkStatus::Offline(reason));
                }
                SessionEnd::Lost { connected, reason, permanent } => {
                    if connected {
                        backoff.reset();
                        let payload = serde_json::json!({ "reason": reason }).to_string();
                        self.audit(aios_shared::audit::kinds::DISCONNECTED, payload).await;
                    }
                    if permanent {
                        backoff.saturate();
                    }
                    warn!(%reason, permanent, "sync connection lost");
                    let _ = self.status.send(LinkStatus::Offline(reason));
                }
            }
            let delay = backoff.next_delay(rand::random::<f64>());
            debug!(?delay, "reconnecting after delay");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.shutdown.changed() => return,
            }
        }
    }

    async fn audit(&self, kind: &str, payload: String) {
        if let Err(err) = self.store.append_audit(&self.identity, self.runtime.now(), kind, payload).await {
            warn!(%err, kind, "cannot append audit event");
        }
    }

    async fn session(&mut self, addr_text: &str) -> SessionEnd {
        let lost = |reason: String, permanent: bool| SessionEnd::Lost { connected: false, reason, permanent };
        let addr = match resolve(addr_text).await {
            Ok(addr) => addr,
            Err(err) => return lost(err.to_string(), false),
        };
        let client_config = match self.identity.client_config(self.runtime.clock()) {
            Ok(config) => config,
            Err(err) => return lost(err.to_string(), true),
        };
        let endpoint = match quinn::Endpoint::client(unspecified_for(addr)) {
            Ok(endpoint) => endpoint,
            Err(err) => return lost(format!("cannot open a UDP socket: {err}"), false),
        };
        let connecting = match endpoint.connect_with(client_config, addr, SERVER_NAME) {
            Ok(connecting) => connecting,
            Err(err) => return lost(err.to_string(), false),
        };
        let connection = tokio::select! {
            result = connecting => match result {
                Ok(connection) => connection,
                Err(err) => return lost(err.to_string(), is_permanent(&err)),
            },
            _ = self.shutdown.changed() => return SessionEnd::Shutdown,
        };
        let mut end = self.drive(&connection).await;
        match &end {
            SessionEnd::Shutdown | SessionEnd::Renewed => {
                connection.close(close_code::SHUTDOWN.into(), b"edge shutting down");
            }
            SessionEnd::Lost { reason, .. } if closed_as_revoked(&connection) => {
                end = SessionEnd::Revoked(reason.clone())
            }
            _ => {}
        }
        endpoint.close(close_code::SHUTDOWN.into(), b"");
        end
    }

    async fn drive(&mut self, connection: &quinn::Connection) -> SessionEnd {
        let mut connected = false;
        macro_rules! lost {
            ($reason:expr, $permanent:expr) => {
                return SessionEnd::Lost { connected, reason: $reason, permanent: $permanent }
            };
        }
        let (mut send, recv) = match connection.open_bi().await {
            Ok(streams) => streams,
            Err(err) => lost!(err.to_string(), is_permanent(&err)),
        };
        let (mut frames, _reader) = spawn_frame_reader(recv);

        let (head, bundle_version) = match self.local_state().await {
            Ok(state) => state,
            Err(err) => lost!(err, false),
        };
        let config = EdgeConfig::new(self.identity.edge_id.clone(), env!("CARGO_PKG_VERSION"));
        let mut sync = EdgeSync::new(config, self.runtime.clock().instant(), bundle_version, head);
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        let mut own = self.own_certificate();
        loop {
            // Drain outputs until the machine is quiet.
            loop {
                let mut busy = false;
                while let Some(frame) = sync.poll_transmit() {
                    busy = true;
                    if let Err(err) = write_frame(&mut send, &frame).await {
                        lost!(describe(connection, err.to_string()), close_is_permanent(connection));
                    }
                }
                while let Some(event) = sync.poll_event() {
                    busy = true;
                    match event {
                        EdgeEvent::Connected { audit_acked_seq } => {
                            connected = true;
                            info!(audit_acked_seq, "connected to the control plane");
                            let _ = self.status.send(LinkStatus::Connected);
                            let payload = serde_json::json!({ "audit_acked_seq": audit_acked_seq }).to_string();
                            self.audit(aios_shared::audit::kinds::CONNECTED, payload).await;
                            self.appended.notify_one();
                            self.maybe_renew(&mut sync, own);
                        }
                        EdgeEvent::CertificateIssued(grant) => match self.take_certificate(grant).await {
                            Ok(true) => return SessionEnd::Renewed,
                            Ok(false) => {}
                            Err(err) => lost!(err, false),
                        },
                        EdgeEvent::TrustAnchors(anchors) => match self.take_trust_anchors(anchors).await {
                            Ok(true) => {
                                own = self.own_certificate();
                                self.maybe_renew(&mut sync, own);
                            }
                            Ok(false) => {}
                            Err(err) => lost!(err, false),
                        },
                        EdgeEvent::LoadAudit { from_seq, max } => match self.store.load_audit(from_seq, max).await {
                            Ok(events) => sync.audit_loaded(self.runtime.clock().instant(), events),
                            Err(err) => lost!(format!("cannot read the audit log: {err}"), false),
                        },
                        EdgeEvent::AuditAcked { up_to_seq } => debug!(up_to_seq, "audit acknowledged"),
                        EdgeEvent::BundleReceived(signed) => {
                            match self
                                .store
                                .offer_bundle(&self.identity, signed.clone(), self.runtime.access(), self.runtime.now())
                                .await
                            {
                                Ok(BundleOutcome::Applied(version)) => {
                                    info!(version, "policy bundle applied");
                                    sync.bundle_applied(version);
                                    // Model calls and memory take the new settings now, not
                                    // at the next task: the gateway reads them too.
                                    if let Err(err) = self.runtime.definitions().await {
                                        warn!(%err, "cannot load the applied bundle's definitions");
                                    }
                                }
                                Ok(BundleOutcome::AlreadyApplied(version)) => sync.bundle_applied(version),
                                Ok(BundleOutcome::Refused(err)) => {
                                    warn!(%err, "policy bundle refused; keeping the last good one");
                                    sync.bundle_refused(signed.peek_version().unwrap_or(0), err.to_string());
                                }
                                Err(err) => lost!(format!("cannot store the bundle: {err}"), false),
                            }
                            self.appended.notify_one();
                        }
                        EdgeEvent::TasksReceived(tasks) => match self.accept_tasks(tasks).await {
                            Ok(receipts) => {
                                sync.tasks_received(receipts);
                                self.appended.notify_one();
                            }
                            Err(err) => lost!(format!("cannot persist dispatched tasks: {err}"), false),
                        },
                        EdgeEvent::CommandsReceived(commands) => match self.apply_commands(commands).await {
                            Ok(receipts) => {
                                sync.commands_applied(receipts);
                                self.appended.notify_one();
                            }
                            Err(err) => lost!(format!("cannot apply commands: {err}"), false),
                        },
                        EdgeEvent::Refused(error) if error.code == aios_shared::wire::ErrorCode::Revoked => {
                            return SessionEnd::Revoked(error.message)
                        }
                        EdgeEvent::Refused(error) => {
                            lost!(format!("refused by the control plane: {}", error.message), error.code.is_permanent())
                        }
                        EdgeEvent::ProtocolError(message) => {
                            while let Some(frame) = sync.poll_transmit() {
                                let _ = write_frame(&mut send, &frame).await;
                            }
                            connection.close(close_code::PROTOCOL.into(), message.as_bytes());
                            lost!(format!("protocol error: {message}"), false)
                        }
                    }
                }
                if !busy {
                    break;
                }
            }
            let timeout = sync.poll_timeout().map(Instant::from_std);
            tokio::select! {
                item = frames.recv() => match item {
                    Some(Ok(frame)) => sync.handle_frame(self.runtime.clock().instant(), frame),
                    Some(Err(reason)) => lost!(describe(connection, reason), close_is_permanent(connection)),
                    None => lost!(describe(connection, "reader stopped".into()), close_is_permanent(connection)),
                },
                _ = sleep_until(timeout) => sync.handle_timeout(self.runtime.clock().instant()),
                _ = self.appended.notified() => self.refresh_head(&mut sync).await,
                _ = poll.tick() => {
                    self.refresh_head(&mut sync).await;
                    self.maybe_renew(&mut sync, own);
                }
                _ = self.shutdown.changed() => return SessionEnd::Shutdown,
            }
        }
    }

    async fn local_state(&self) -> Result<(u64, u64), String> {
        let head = self.store.audit_head().await.map_err(|err| err.to_string())?;
        let bundle = self.store.bundle().await.map_err(|err| err.to_string())?;
        let version = bundle.and_then(|b| b.peek_version()).unwrap_or(0);
        Ok((head.seq, version))
    }

    async fn refresh_head(&self, sync: &mut EdgeSync) {
        if let Ok(head) = self.store.audit_head().await {
            sync.audit_appended(head.seq);
        }
    }
}

/// The connection's close reason if it has one, else `fallback`.
fn describe(connection: &quinn::Connection, fallback: String) -> String {
    match connection.close_reason() {
        Some(reason) => reason.to_string(),
        None => fallback,
    }
}

/// Whether the control plane closed the connection because this edge is revoked.
fn closed_as_revoked(connection: &quinn::Connection) -> bool {
    matches!(connection.close_reason(), Some(quinn::ConnectionError::ApplicationClosed(close))
        if close.error_code == close_code::REVOKED.into())
}

fn close_is_permanent(connection: &quinn::Connection) -> bool {
    connection.close_reason().is_some_and(|reason| is_permanent(&reason))
}

/// Whether a connection error means retrying soon cannot help: the control
/// plane revoked us, or rejected our certificate during the TLS handshake.
fn is_permanent(err: &quinn::ConnectionError) -> bool {
    match err {
        quinn::ConnectionError::ApplicationClosed(close) => {
            close.error_code == close_code::REVOKED.into() || close.error_code == close_code::REFUSED.into()
        }
        // Transport error codes 0x100..=0x1ff carry a TLS alert.
        quinn::ConnectionError::ConnectionClosed(close) => (0x100..=0x1ff).contains(&u64::from(close.error_code)),
        _ => false,
    }
}
