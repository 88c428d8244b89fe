//! The edge's identity: its key, its certificate, the fleet CAs it trusts
//! (pinned at enrolment, then as the control plane announces them during a
//! CA rotation) and the bundle-signing key it pinned, plus the TLS client
//! configurations built from them.

use std::sync::Arc;

use aios_shared::token::fingerprint;
use aios_shared::wire::TrustedCa;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use aios_daemon::clock::SharedClock;
use aios_daemon::transport::{crypto_provider, tls_time, ALPN};

/// Everything an enrolled edge needs to connect.
#[derive(Clone)]
pub struct Identity {
    /// The id the control plane assigned.
    pub edge_id: String,
    /// `HOST:PORT` of the control plane's sync endpoint.
    pub control_plane: String,
    /// The edge's ed25519 key: TLS client key and audit checkpoint key.
    pub signing_key: SigningKey,
    /// The edge's certificate, signed by the fleet CA.
    pub cert_der: Vec<u8>,
    /// The fleet CAs trusted, the issuing one first (never empty).
    pub trust_anchors: Vec<TrustedCa>,
    /// The pinned bundle-signing key.
    pub bundle_key: VerifyingKey,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("edge_id", &self.edge_id).field("control_plane", &self.control_plane).finish()
    }
}

/// Errors building TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls refused the configuration.
    #[error("tls configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The stored key does not encode.
    #[error("edge key: {0}")]
    Key(String),
    /// quinn refused the rustls configuration.
    #[error("quic configuration: {0}")]
    Quic(String),
}

/// PKCS#8 DER of an ed25519 key, as rustls and rcgen take it.
pub fn key_pkcs8(key: &SigningKey) -> Result<Vec<u8>, TlsError> {
    key.to_pkcs8_der().map(|doc| doc.as_bytes().to_vec()).map_err(|err| TlsError::Key(err.to_string()))
}

/// The key from its PKCS#8 DER.
pub fn key_from_pkcs8(der: &[u8]) -> Result<SigningKey, TlsError> {
    SigningKey::from_pkcs8_der(der).map_err(|err| TlsError::Key(err.to_string()))
}

impl Identity {
    /// The CA that issues certificates now (DER).
    pub fn issuing_ca(&self) -> &[u8] {
        self.trust_anchors.first().map_or(&[], |ca| ca.der.as_slice())
    }

    /// The CAs trusted at `now_ms` (a retiring one until its overlap ends).
    pub fn trusted_cas(&self, now_ms: i64) -> impl Iterator<Item = &[u8]> {
        aios_shared::identity::trusted_at(&self.trust_anchors, now_ms).map(|ca| ca.der.as_slice())
    }

    /// The mutual-TLS client configuration for sync connections: the
    /// control plane's certificate must chain to a CA trusted at `clock`'s
    /// time, and is checked at that time.
    pub fn client_config(&self, clock: &SharedClock) -> Result<quinn::ClientConfig, TlsError> {
        let provider = crypto_provider();
        let mut roots = RootCertStore::empty();
        for ca in self.trusted_cas(clock.unix_ms()) {
            roots.add(CertificateDer::from(ca.to_vec()))?;
        }
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8(&self.signing_key)?));
        let mut tls = rustls::ClientConfig::builder_with_details(provider, tls_time(clock))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![CertificateDer::from(self.cert_der.clone())], key)?;
        finish_client(&mut tls);
        quic_client(tls)
    }
}

/// The client configuration for enrolment: no client certificate, and the
/// server is trusted only if its chain ends in the CA whose fingerprint the
/// token pins.
pub fn enrollment_client_config(ca_fingerprint: [u8; 32]) -> Result<quinn::ClientConfig, TlsError> {
    let provider = crypto_provider();
    let verifier = Arc::new(PinnedCaVerifier { ca_fingerprint, provider: provider.clone() });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    finish_client(&mut tls);
    quic_client(tls)
}

fn finish_client(tls: &mut rustls::ClientConfig) {
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // No 0-RTT: a replayed early-data flight must not re-run anything.
    tls.enable_early_data = false;
}

fn quic_client(tls: rustls::ClientConfig) -> Result<quinn::ClientConfig, TlsError> {
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|err| TlsError::Quic(err.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(aios_daemon::transport::transport_config()));
    Ok(config)
}

/// Trusts a server whose chain contains the pinned CA and verifies up to it.
#[derive(Debug)]
struct PinnedCaVerifier {
    ca_fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates.iter().find(|cert| fingerprint(cert) == self.ca_fingerprint).ok_or_else(|| {
            rustls::Error::General(
                "the control plane's CA does not match the fingerprint pinned in the enrolment token".into(),
            )
        })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|err| rustls::Error::General(err.to_string()))?;
        inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
