//! Enrolment: trade a one-time token for a certificate.
//!
//! The edge makes its key pair locally (the private key never leaves the
//! machine), sends a certificate signing request with the token over a QUIC
//! connection that trusts only the CA pinned in the token, and stores the
//! certificate, the CA and the bundle key it gets back.

use std::net::SocketAddr;

use aios_shared::token::{fingerprint, EnrollToken};
use aios_shared::wire::{EnrollRequest, Frame, TrustedCa};
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand::rngs::OsRng;

use crate::store::EdgeStore;
use crate::sync::identity::{enrollment_client_config, key_pkcs8, Identity};
use aios_daemon::transport::{read_frame, write_frame, SERVER_NAME};

/// Why enrolment failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The token text is malformed.
    #[error(transparent)]
    Token(#[from] aios_shared::token::TokenFormatError),
    /// The control plane's address does not resolve.
    #[error("cannot resolve control plane address {0}")]
    Resolve(String),
    /// The connection failed (unreachable, or its CA is not the pinned one).
    #[error("cannot reach the control plane at {addr}: {reason}")]
    Connect {
        /// The address dialled.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// The control plane refused the token or the request.
    #[error("enrolment refused: {0}")]
    Refused(String),
    /// The answer did not make sense.
    #[error("unexpected answer from the control plane: {0}")]
    Protocol(String),
    /// The identity could not be stored.
    #[error(transparent)]
    Store(#[from] aios_daemon::db::DbError),
    /// Local TLS or key handling failed.
    #[error(transparent)]
    Tls(#[from] crate::sync::identity::TlsError),
}

/// Labels and name the edge enrols with.
#[derive(Debug, Clone, Default)]
pub struct EnrollOptions {
    /// Display name (default: the host name).
    pub name: String,
    /// `key=value` labels.
    pub labels: Vec<(String, String)>,
}

/// Enrols with the control plane at `control_plane` (`HOST:PORT`) and stores the identity.
pub async fn enroll(
    store: &EdgeStore,
    control_plane: &str,
    token_text: &str,
    options: EnrollOptions,
    now_ms: i64,
) -> Result<Identity, EnrollError> {
    if let Some(existing) = store.identity().await? {
        return Err(EnrollError::Refused(format!(
            "this data directory already belongs to edge {}; use a new --data-dir to enrol again",
            existing.edge_id
        )));
    }
    let token = EnrollToken::parse(token_text)?;
    let addr = resolve(control_plane).await?;
    let signing_key = SigningKey::generate(&mut OsRng);
    let csr_der = certificate_request(&signing_key)?;

    let connect_err = |reason: String| EnrollError::Connect { addr: control_plane.to_owned(), reason };
    let mut endpoint = quinn::Endpoint::client(unspecified_for(addr)).map_err(|e| connect_err(e.to_string()))?;
    endpoint.set_default_client_config(enrollment_client_config(token.ca_fingerprint)?);
    let connection = endpoint
        .connect(addr, SERVER_NAME)
        .map_err(|e| connect_err(e.to_string()))?
        .await
        .map_err(|e| connect_err(e.to_string()))?;
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| connect_err(e.to_string()))?;
    let request = EnrollRequest { token: token.secret.clone(), csr_der, name: options.name, labels: options.labels };
    write_frame(&mut send, &Frame::Enroll(request)).await.map_err(|e| connect_err(e.to_string()))?;
    let _ = send.finish();
    let reply = read_frame(&mut recv).await.map_err(|e| connect_err(e.to_string()))?;
    connection.close(0u32.into(), b"enrolled");
    endpoint.wait_idle().await;

    let enrolled = match reply {
        Some(Frame::Enrolled(enrolled)) => enrolled,
        Some(Frame::Error(error)) => return Err(EnrollError::Refused(error.message)),
        Some(other) => return Err(EnrollError::Protocol(format!("{other:?}"))),
        None => return Err(EnrollError::Protocol("the control plane closed the stream without answering".into())),
    };
    // The handshake proved the server holds a certificate chaining to the
    // CA the token pins. The CA it now issues from is that one, or, during
    // a CA rotation, the new one (vouched for by the pinned CA's cross
    // certificate in the same chain): either is trusted from here on.
    if fingerprint(&enrolled.ca_der) != token.ca_fingerprint {
        tracing::info!("the control plane issues from a newer CA than the token pins (a CA rotation)");
    }
    let usable = aios_daemon::cert::check_ca(&enrolled.ca_der)
        .and_then(|()| aios_daemon::cert::verify_issued_by(&enrolled.cert_der, &enrolled.ca_der));
    if let Err(err) = usable {
        return Err(EnrollError::Protocol(format!("the CA sent did not issue this edge's certificate: {err}")));
    }
    let bundle_key = VerifyingKey::from_bytes(&enrolled.bundle_key)
        .map_err(|_| EnrollError::Protocol("the bundle key is not an ed25519 key".into()))?;
    let identity = Identity {
        edge_id: enrolled.edge_id,
        control_plane: control_plane.to_owned(),
        signing_key,
        cert_der: enrolled.cert_der,
        trust_anchors: vec![TrustedCa { der: enrolled.ca_der, retires_at_ms: None }],
        bundle_key,
    };
    // The labels the token binds, as the control plane gave them.
    let labels = enrolled.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    store.save_identity(identity.clone(), labels, now_ms).await?;
    Ok(identity)
}

pub(crate) fn certificate_request(key: &SigningKey) -> Result<Vec<u8>, EnrollError> {
    let pkcs8 = key_pkcs8(key)?;
    let key_pair = rcgen::KeyPair::try_from(pkcs8.as_slice())
        .map_err(|err| EnrollError::Protocol(format!("cannot load the new key: {err}")))?;
    let params = rcgen::CertificateParams::default();
    let csr = params
        .serialize_request(&key_pair)
        .map_err(|err| EnrollError::Protocol(format!("cannot build the certificate request: {err}")))?;
    Ok(csr.der().to_vec())
}

/// Resolves `HOST:PORT` to the first address.
pub async fn resolve(addr: &str) -> Result<SocketAddr, EnrollError> {
    tokio::net::lookup_host(addr)
        .await
        .map_err(|_| EnrollError::Resolve(addr.to_owned()))?
        .next()
        .ok_or_else(|| EnrollError::Resolve(addr.to_owned()))
}

/// The wildcard address of the same family as `addr`, port 0.
pub fn unspecified_for(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}
