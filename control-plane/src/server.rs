//! The QUIC side of the control plane: enrolment and sync connections.
//!
//! Every connection is handled by its own task. Client certificates are
//! optional at the TLS layer so that an edge without one can enrol; a sync
//! stream then demands one, looks its fingerprint up, and refuses unknown and
//! revoked edges with an error frame and a close code the edge understands.
//!
//! Until a peer has authenticated it is held to [`crate::admission`]'s
//! limits: a client must first prove its address with a QUIC Retry; then
//! it takes one of the unauthenticated places (refused with QUIC's
//! `CONNECTION_REFUSED` when its source or the endpoint has none left); the
//! handshake and a first frame of at most [`MAX_FIRST_FRAME_LEN`] bytes
//! must arrive within [`FIRST_FRAME_DEADLINE`]; and a source that keeps
//! failing to enrol is slowed down. Only a known certificate opens the
//! connection's receive window to its full size.
//! The sync loop is a thin driver of [`ControlSync`]: a batch is acknowledged
//! only after the store committed it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aios_daemon::clock::SharedClock;
use aios_daemon::transport::{
    close_code, peer_certificate, read_frame_within, server_transport_config, sleep_until, spawn_frame_reader,
    write_frame, FrameStream, TransportError, ALPN, MAX_FIRST_FRAME_LEN, RECEIVE_WINDOW,
};
use aios_shared::bundle::SignedBundle;
use aios_shared::sync::{ControlConfig, ControlEvent, ControlSync};
use aios_shared::token::{fingerprint, secret_hash};
use aios_shared::wire::{EnrollRequest, Enrolled, ErrorCode, ErrorFrame, Frame};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::admission::{Admission, AdmissionLimits, Source};
use crate::pki::Pki;
use crate::store::CpStore;

/// How long a connection may take from its first packet to its first
/// complete frame. Without it a peer that opens a connection and sends
/// nothing would be kept alive by the server's own keep-alives.
pub const FIRST_FRAME_DEADLINE: Duration = Duration::from_secs(10);

/// Connection attempts that may wait to be handled at once; quinn refuses
/// the rest. The accept loop disposes of each at once, so few ever wait.
const MAX_INCOMING: usize = 1024;

/// The newest published bundle, watched by every sync connection.
pub type BundleWatch = watch::Receiver<Option<(u64, SignedBundle)>>;

/// Live sync connections by edge id, so a revocation can cut one off at once.
#[derive(Default)]
pub struct Registry {
    connections: Mutex<HashMap<String, quinn::Connection>>,
}

impl Registry {
    /// Records `connection` as the edge's live one, closing any older one.
    fn insert(&self, edge_id: &str, connection: quinn::Connection) {
        let old = self.lock().insert(edge_id.to_owned(), connection);
        if let Some(old) = old {
            old.close(close_code::REFUSED.into(), b"superseded by a newer connection from the same edge");
        }
    }

    /// Forgets the edge's connection if it is still `connection`.
    fn remove(&self, edge_id: &str, connection: &quinn::Connection) {
        let mut map = self.lock();
        if map.get(edge_id).is_some_and(|c| c.stable_id() == connection.stable_id()) {
            map.remove(edge_id);
        }
    }

    /// Closes the edge's live connection, if any, as revoked.
    pub fn cut_off(&self, edge_id: &str) -> bool {
        match self.lock().remove(edge_id) {
            Some(connection) => {
                connection.close(close_code::REVOKED.into(), b"edge revoked by an operator");
                true
            }
            None => false,
        }
    }

    /// How many edges are connected.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no edge is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, quinn::Connection>> {
        self.connections.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What every connection task shares.
#[derive(Clone)]
pub struct SyncContext {
    /// The database.
    pub store: CpStore,
    /// Keys and certificates.
    pub pki: Arc<Pki>,
    /// Live connections.
    pub registry: Arc<Registry>,
    /// The newest bundle.
    pub bundles: BundleWatch,
    /// Changes whenever tasks are dispatched.
    pub dispatched: watch::Receiver<u64>,
    /// Where sessions read the time.
    pub clock: SharedClock,
}

/// Errors starting the QUIC endpoint.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// TLS configuration failed.
    #[error("tls configuration: {0}")]
    Tls(String),
    /// The UDP socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Binds the sync endpoint.
/// Client certificates are checked against `clock`'s time.
pub fn bind(pki: &Pki, addr: SocketAddr, clock: &SharedClock) -> Result<quinn::Endpoint, ServerError> {
    let tls_err = |err: &dyn std::fmt::Display| ServerError::Tls(err.to_string());
    let provider = aios_daemon::transport::crypto_provider();
    let mut tls = rustls::ServerConfig::builder_with_details(provider, aios_daemon::transport::tls_time(clock))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_err(&e))?
        .with_client_cert_verifier(pki.ca.client_verifier())
        .with_cert_resolver(pki.ca.clone());
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // No 0-RTT: early data could be replayed.
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| tls_err(&e))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(server_transport_config()));
    // Packets buffered for attempts not yet handled: no 0-RTT, so a handshake
    // needs little, and the accept loop handles attempts at once.
    config.max_incoming(MAX_INCOMING);
    config.incoming_buffer_size(64 * 1024);
    config.incoming_buffer_size_total(8 * 1024 * 1024);
    // Identity is the certificate; a changed address (NAT rebinding) is fine.
    config.migration(true);
    // Both keys derive from one persisted secret, so after a restart this
    // endpoint recognises the connection ids its previous run issued and
    // answers their packets with valid stateless resets: edges learn at once
    // that their connection is gone instead of waiting out the idle timeout.
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &pki.quic_reset_key);
    let cid_key = u64::from_le_bytes(pki.quic_reset_key[..8].try_into().expect("8 of 32 bytes"));
    let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(reset_key));
    endpoint_config.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
    let bind_err = |source| ServerError::Bind { addr, source };
    let socket = std::net::UdpSocket::bind(addr).map_err(bind_err)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| bind_err(std::io::Error::other("no async runtime for the QUIC endpoint")))?;
    quinn::Endpoint::new(endpoint_config, Some(config), socket, runtime).map_err(bind_err)
}

/// Accepts connections until the endpoint is closed.
pub async fn serve(endpoint: quinn::Endpoint, ctx: SyncContext) {
    let admission = Arc::new(Mutex::new(Admission::new(AdmissionLimits::default())));
    while let Some(incoming) = endpoint.accept().await {
        if !incoming.remote_address_validated() {
            // A stateless Retry: the client must show it receives at its
            // source address before that address is charged for anything.
            if let Err(err) = incoming.retry() {
                err.into_incoming().ignore();
            }
            continue;
        }
        let remote = incoming.remote_address();
        let place = match Unauthenticated::take(&admission, Source::of(remote.ip())) {
            Ok(place) => place,
            Err(refusal) => {
                debug!(%remote, %refusal, "connection refused before its handshake");
                incoming.refuse();
                continue;
            }
        };
        let ctx = ctx.clone();
        tokio::spawn(handle_incoming(incoming, ctx, place).instrument(info_span!("conn", %remote)));
    }
}

/// One connection's place among the unauthenticated ones, given back when
/// dropped (authenticated, enrolled, refused or gone).
struct Unauthenticated {
    admission: Arc<Mutex<Admission>>,
    source: Source,
}

impl Unauthenticated {
    fn take(admission: &Arc<Mutex<Admission>>, source: Source) -> Result<Unauthenticated, crate::admission::Refusal> {
        lock(admission).try_admit(source)?;
        Ok(Unauthenticated { admission: admission.clone(), source })
    }

    /// Whether this source may try to enrol at `now`; `Err` with the wait.
    fn may_enrol(&self, now: std::time::Instant) -> Result<(), Duration> {
        lock(&self.admission).may_enrol(self.source, now)
    }

    /// Records a failed enrolment from this source.
    fn enrol_failed(&self, now: std::time::Instant) {
        lock(&self.admission).enrol_failed(self.source, now);
    }
}

impl Drop for Unauthenticated {
    fn drop(&mut self) {
        lock(&self.admission).release(self.source);
    }
}

fn lock(admission: &Mutex<Admission>) -> std::sync::MutexGuard<'_, Admission> {
    admission.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The first stream and what arrived on it first.
type Opened = (quinn::SendStream, quinn::RecvStream, Result<Option<Frame>, TransportError>);

/// Accepts the peer's stream and reads its first frame, at most
/// [`MAX_FIRST_FRAME_LEN`] bytes.
async fn first_frame(connection: &quinn::Connection) -> Result<Opened, quinn::ConnectionError> {
    let (send, mut recv) = connection.accept_bi().await?;
    let first = read_frame_within(&mut recv, MAX_FIRST_FRAME_LEN).await;
    Ok((send, recv, first))
}

/// Completes the handshake and reads the first frame before
/// [`FIRST_FRAME_DEADLINE`], then enrols or starts a sync session.
async fn handle_incoming(incoming: quinn::Incoming, ctx: SyncContext, place: Unauthenticated) {
    let deadline = tokio::time::sleep(FIRST_FRAME_DEADLINE);
    tokio::pin!(deadline);
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(err) => return debug!(%err, "connection attempt failed"),
    };
    let connection = tokio::select! {
        connected = connecting => match connected {
            Ok(connection) => connection,
            Err(err) => return debug!(%err, "handshake failed"),
        },
        // Dropping the attempt abandons the handshake.
        () = &mut deadline => return debug!("handshake not finished before the first-frame deadline"),
    };
    let opened = tokio::select! {
        opened = first_frame(&connection) => opened,
        () = &mut deadline => {
            let reason = format!("no complete first frame within {} s of connecting", FIRST_FRAME_DEADLINE.as_secs());
            debug!(%reason, "closing connection");
            return connection.close(close_code::PROTOCOL.into(), reason.as_bytes());
        }
    };
    match opened {
        Ok((send, recv, first)) => handle_connection(connection, ctx, place, send, recv, first).await,
        Err(err) => debug!(%err, "connection closed before opening a stream"),
    }
}

async fn handle_connection(
    connection: quinn::Connection,
    ctx: SyncContext,
    place: Unauthenticated,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    first: Result<Option<Frame>, TransportError>,
) {
    let peer_cert = peer_certificate(&connection);
    let first = match first {
        Ok(Some(frame)) => frame,
        Ok(None) => return,
        Err(err) => {
            let error = ErrorFrame { code: ErrorCode::Malformed, message: err.to_string() };
            return refuse(&connection, &mut send, error).await;
        }
    };
    match first {
        Frame::Enroll(request) => {
            let reply = match place.may_enrol(ctx.clock.instant()) {
                Err(wait) => {
                    let message =
                        format!("too many failed enrolments from this address; retry in {} s", wait.as_secs().max(1));
                    info!(source = %place.source, "enrolment refused: too many failures");
                    Frame::Error(ErrorFrame { code: ErrorCode::Internal, message })
                }
                Ok(()) => match enroll(&ctx, request).await {
                    Ok(enrolled) => Frame::Enrolled(enrolled),
                    Err(error) => {
                        if matches!(error.code, ErrorCode::BadToken | ErrorCode::Malformed) {
                            place.enrol_failed(ctx.clock.instant());
                        }
                        Frame::Error(error)
                    }
                },
            };
            let _ = write_frame(&mut send, &reply).await;
            let _ = send.finish();
            // Let the edge read the answer and close.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), connection.closed()).await;
        }
        Frame::Hello(hello) => {
            let Some(cert) = peer_cert else {
                let message = "a client certificate is required; enrol this edge first".to_owned();
                let error = ErrorFrame { code: ErrorCode::CertificateRequired, message };
                return refuse(&connection, &mut send, error).await;
            };
            let cert_fingerprint = hex::encode(fingerprint(&cert));
            let edge = match ctx.store.edge_by_fingerprint(cert_fingerprint.clone()).await {
                Ok(Some(edge)) => edge,
                Ok(None) => {
                    let error = ErrorFrame { code: ErrorCode::UnknownEdge, message: "unknown edge certificate".into() };
                    return refuse(&connection, &mut send, error).await;
                }
                Err(err) => {
                    let error = ErrorFrame { code: ErrorCode::Internal, message: err.to_string() };
                    return refuse(&connection, &mut send, error).await;
                }
            };
            if edge.revoked {
                let error = ErrorFrame { code: ErrorCode::Revoked, message: format!("edge {} is revoked", edge.id) };
                return refuse(&connection, &mut send, error).await;
            }
            if hello.edge_id != edge.id {
                let message = format!("certificate belongs to {}, not {}", edge.id, hello.edge_id);
                let error = ErrorFrame { code: ErrorCode::UnknownEdge, message };
                return refuse(&connection, &mut send, error).await;
            }
            // A known edge: no longer counted as unauthenticated, and its
            // uploads get the full window.
            drop(place);
            connection.set_receive_window(RECEIVE_WINDOW.into());
            let span = info_span!("sync", edge_id = %edge.id);
            SyncSession { ctx, connection, edge_id: edge.id, cert_fingerprint, cert_der: cert }
                .run(send, recv, Frame::Hello(hello))
                .instrument(span)
                .await;
        }
        other => {
            let message = format!("expected Hello or Enroll, got {other:?}");
            let error = ErrorFrame { code: ErrorCode::Malformed, message };
            refuse(&connection, &mut send, error).await;
        }
    }
}

/// Sends the error frame, gives it a moment to arrive, then closes the
/// connection with the close code that tells the edge whether to retry soon.
async fn refuse(connection: &quinn::Connection, send: &mut quinn::SendStream, error: ErrorFrame) {
    info!(code = ?error.code, message = %error.message, "refusing connection");
    let code = match error.code {
        ErrorCode::Revoked => close_code::REVOKED,
        ErrorCode::Malformed => close_code::PROTOCOL,
        ErrorCode::Internal => close_code::INTERNAL,
        _ => close_code::REFUSED,
    };
    let _ = write_frame(send, &Frame::Error(error.clone())).await;
    let _ = send.finish();
    // Give the error frame a moment to arrive before the close overtakes it.
    let _ = tokio::time::timeout(std::time::Duration::from_millis(500), send.stopped()).await;
    connection.close(code.into(), error.message.as_bytes());
}

async fn enroll(ctx: &SyncContext, request: EnrollRequest) -> Result<Enrolled, ErrorFrame> {
    let bad_token = |message: String| ErrorFrame { code: ErrorCode::BadToken, message };
    let internal = |message: String| ErrorFrame { code: ErrorCode::Internal, message };
    let hash = secret_hash(&request.token);
    let now = ctx.clock.unix_ms();
    match ctx.store.check_token(hash.clone(), now).await {
        Ok(Ok(bound)) => {
            aios_shared::token::enrolment_labels(&bound, &request.labels).map_err(bad_token)?;
        }
        Ok(Err(refusal)) => return Err(bad_token(refusal.to_string())),
        Err(err) => return Err(internal(err.to_string())),
    }
    let edge_id = format!("edge-{}", hex::encode(rand::random::<[u8; 6]>()));
    let since_epoch = std::time::Duration::from_millis(now as u64);
    let (cert_der, public_key) = ctx
        .pki
        .ca
        .issue_edge_certificate(&edge_id, &request.csr_der, since_epoch)
        .map_err(|err| ErrorFrame { code: ErrorCode::Malformed, message: err.to_string() })?;
    let name = if request.name.is_empty() { edge_id.clone() } else { request.name };
    let fp = hex::encode(fingerprint(&cert_der));
    let labels = match ctx.store.enroll_edge(hash, now, edge_id.clone(), name, request.labels, fp, public_key).await {
        Ok(Ok(labels)) => labels,
        Ok(Err(refusal)) => return Err(bad_token(refusal.to_string())),
        Err(err) => return Err(internal(err.to_string())),
    };
    if let Ok(facts) = aios_daemon::cert::facts(&cert_der) {
        let not_after_ms = facts.validity.not_after_ms;
        ctx.store.certificate_expiry(edge_id.clone(), not_after_ms).await.map_err(|err| internal(err.to_string()))?;
    }
    info!(%edge_id, ?labels, "edge enrolled");
    Ok(Enrolled {
        edge_id,
        cert_der,
        ca_der: ctx.pki.ca_der(),
        bundle_key: ctx.pki.bundle_key().verifying_key().to_bytes(),
        labels: labels.into_iter().collect(),
    })
}

/// One edge's sync connection.
struct SyncSession {
    ctx: SyncContext,
    connection: quinn::Connection,
    edge_id: String,
    /// SHA-256 of the edge's certificate, hex: the key to its record.
    cert_fingerprint: String,
    /// The certificate the edge presented (DER).
    cert_der: Vec<u8>,
}

impl SyncSession {
    async fn run(mut self, mut send: quinn::SendStream, recv: quinn::RecvStream, hello: Frame) {
        let (mut frames, reader) = spawn_frame_reader(recv);
        let mut sync = ControlSync::new(ControlConfig::default());
        sync.handle_frame(self.ctx.clock.instant(), hello);
        let reason = self.drive(&mut sync, &mut send, &mut frames).await;
        drop(reader);
        self.ctx.registry.remove(&self.edge_id, &self.connection);
        if let Err(err) =
            self.ctx.store.edge_seen(self.edge_id.clone(), false, None, None, self.ctx.clock.unix_ms()).await
        {
            warn!(%err, "cannot record the disconnect");
        }
        info!(%reason, "edge disconnected");
    }

    async fn drive(
        &mut self,
        sync: &mut ControlSync,
        send: &mut quinn::SendStream,
        frames: &mut FrameStream,
    ) -> String {
        let mut bundles = self.ctx.bundles.clone();
        let mut dispatched = self.ctx.dispatched.clone();
        let mut rotations = self.ctx.pki.ca.watch();
        rotations.mark_unchanged();
        loop {
            loop {
                let mut busy = false;
                while let Some(frame) = sync.poll_transmit() {
                    busy = true;
                    if let Frame::Error(error) = frame {
                        let reason = format!("refused: {}", error.message);
                        refuse(&self.connection, send, error).await;
                        return reason;
                    }
                    if let Err(err) = write_frame(send, &frame).await {
                        return err.to_string();
                    }
                }
                while let Some(event) = sync.poll_event() {
                    busy = true;
                    if let Err(reason) = self.handle_event(sync, event, &mut bundles).await {
                        return reason;
                    }
                }
                if !busy {
                    break;
                }
            }
            let timeout = sync.poll_timeout().map(Instant::from_std);
            tokio::select! {
                item = frames.recv(), if sync.wants_frames() => match item {
                    Some(Ok(frame)) => sync.handle_frame(self.ctx.clock.instant(), frame),
                    Some(Err(reason)) => return self.connection.close_reason().map_or(reason, |r| r.to_string()),
                    None => return "reader stopped".into(),
                },
                _ = sleep_until(timeout) => sync.handle_timeout(self.ctx.clock.instant()),
                changed = bundles.changed(), if sync.is_connected() => {
                    if changed.is_err() {
                        return "control plane shutting down".into();
                    }
                    let latest = bundles.borrow_and_update().clone();
                    if let Some((version, signed)) = latest {
                        sync.push_bundle(self.ctx.clock.instant(), version, signed);
                    }
                }
                changed = dispatched.changed(), if sync.is_connected() => {
                    if changed.is_err() {
                        return "control plane shutting down".into();
                    }
                    if let Err(reason) = self.push_pending(sync).await {
                        return reason;
                    }
                }
                changed = rotations.changed(), if sync.is_connected() => {
                    if changed.is_err() {
                        return "control plane shutting down".into();
                    }
                    // A CA rotation: connected edges hear of it at once.
                    sync.announce_trust_anchors(self.ctx.pki.ca.announcement(self.ctx.clock.unix_ms()));
                }
                reason = self.connection.closed() => return reason.to_string(),
            }
        }
    }

    /// Sends the dispatches this edge has not acknowledged.
    async fn push_pending(&self, sync: &mut ControlSync) -> Result<(), String> {
        let pending = self.ctx.store.pending_dispatches(self.edge_id.clone()).await.map_err(|e| e.to_string())?;
        sync.push_tasks(self.ctx.clock.instant(), pending);
        let commands = self.ctx.store.pending_commands(self.edge_id.clone()).await.map_err(|e| e.to_string())?;
        sync.push_commands(self.ctx.clock.instant(), commands);
        Ok(())
    }

    async fn handle_event(
        &self,
        sync: &mut ControlSync,
        event: ControlEvent,
        bundles: &mut BundleWatch,
    ) -> Result<(), String> {
        let store = &self.ctx.store;
        match event {
            ControlEvent::HelloReceived(hello) => {
                // Re-read under this connection: the stored head may have moved
                // since the certificate lookup.
                let edge = store
                    .edge_by_fingerprint(self.cert_fingerprint.clone())
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or("edge record disappeared")?;
                if edge.revoked {
                    let message = format!("edge {} is revoked", self.edge_id);
                    sync.reject(ErrorCode::Revoked, message);
                    return Ok(());
                }
                let promoted = store
                    .certificate_presented(self.edge_id.clone(), self.cert_fingerprint.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                if promoted {
                    info!("the edge presents its renewed certificate; the old one is retired");
                }
                self.ctx.registry.insert(&self.edge_id, self.connection.clone());
                store
                    .edge_seen(
                        self.edge_id.clone(),
                        true,
                        Some(hello.agent_version.clone()),
                        Some(hello.bundle_version),
                        self.ctx.clock.unix_ms(),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                sync.accept(edge.audit_seq);
                // The CAs to trust, on every connection: during a CA
                // rotation this is how edges learn the new one.
                sync.announce_trust_anchors(self.ctx.pki.ca.announcement(self.ctx.clock.unix_ms()));
                info!(audit_acked_seq = edge.audit_seq, edge_head = hello.audit_head_seq, "edge connected");
                let latest = bundles.borrow_and_update().clone();
                if let Some((version, signed)) = latest {
                    if hello.bundle_version < version {
                        sync.push_bundle(self.ctx.clock.instant(), version, signed);
                    }
                }
                self.push_pending(sync).await?;
            }
            ControlEvent::CommandsAcked(receipts) => {
                info!(commands = receipts.len(), "commands applied by edge");
                store
                    .record_command_receipts(self.edge_id.clone(), receipts, self.ctx.clock.unix_ms())
                    .await
                    .map_err(|e| e.to_string())?;
            }
            ControlEvent::TasksAcked(receipts) => {
                info!(tasks = receipts.len(), "dispatched tasks received by edge");
                store
                    .record_receipts(self.edge_id.clone(), receipts, self.ctx.clock.unix_ms())
                    .await
                    .map_err(|e| e.to_string())?;
            }
            ControlEvent::Ingest(events) => {
                let n_events = events.len();
                match store.ingest(self.edge_id.clone(), events, self.ctx.clock.unix_ms()).await {
                    Ok((head, breaks)) => {
                        for chain_break in breaks {
                            warn!(%chain_break, "audit chain break detected; alarm raised");
                        }
                        debug!(n_events, head, "audit batch committed");
                        sync.committed(head);
                    }
                    Err(err) => {
                        warn!(%err, "audit ingest failed");
                        sync.commit_failed();
                        return Err(format!("ingest failed: {err}"));
                    }
                }
            }
            ControlEvent::BundleAcked { version } => {
                info!(version, "bundle applied by edge");
                store.edge_bundle_acked(self.edge_id.clone(), version).await.map_err(|e| e.to_string())?;
            }
            ControlEvent::BundleRefused { version, reason } => warn!(version, %reason, "bundle refused by edge"),
            ControlEvent::RenewalRequested(csr_der) => {
                let grant = crate::renewal::renew(&self.ctx, &self.edge_id, &self.cert_der, &csr_der)
                    .await
                    .map_err(|e| e.to_string())?;
                if let Some(grant) = grant {
                    sync.certificate_issued(grant);
                }
            }
            ControlEvent::PeerError(error) => return Err(format!("edge closed: {}", error.message)),
            ControlEvent::ProtocolError(message) => warn!(%message, "protocol error"),
        }
        Ok(())
    }
}
