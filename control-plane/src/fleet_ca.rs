//! The fleet CA: it issues edge certificates and the control plane's own
//! server certificate, and it rotates with an overlap.
//!
//! Rotation (`FleetCa::rotate`) makes a new CA and, with the old CA's key,
//! a *cross certificate*: the new CA's name and key, signed by the old CA.
//! From then on every certificate is issued by the new CA. The server
//! presents its new certificate with the cross certificate in the chain, so
//! an edge that still trusts only the old CA verifies it too. Until the end
//! of the overlap the control plane accepts client certificates from both
//! CAs, announces both on every sync connection (the edges store them) and
//! renews any certificate of the old CA at once. When the overlap ends the
//! old CA opens nothing, on either side, with no further step: the client
//! verifier and the edges' trust both follow the clock
//! (`aios_shared::identity`). The old CA's key is deleted at rotation; one
//! rotation runs at a time.
//!
//! On disk (`DATA_DIR/pki`): before any rotation `ca.key` and `ca.crt`;
//! after one, `ca-rotation.json` holds the current CA (key and certificate)
//! and the retiring one (certificate, cross certificate, end of overlap),
//! written whole and renamed into place; `ca.crt` is rewritten to the
//! current CA (the admin CLI trusts it) and `ca.key` is deleted.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use aios_daemon::cert;
use aios_daemon::transport::{crypto_provider, SERVER_NAME};
use aios_shared::identity;
use aios_shared::wire::TrustedCa;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

use crate::pki::{pem_to_der, read, write_new, PkiError};

/// How long an edge certificate is valid.
const EDGE_CERT_VALIDITY: Duration = Duration::from_secs(365 * 86_400);

/// How long a CA made by a rotation is valid.
const CA_VALIDITY: time::Duration = time::Duration::days(20 * 365);

/// The file holding the CA after its first rotation.
const ROTATION_FILE: &str = "ca-rotation.json";

/// The CA that issues, and the one being retired.
pub struct FleetCa {
    state: RwLock<CaState>,
    dir: PathBuf,
    server_names: Vec<String>,
    provider: Arc<CryptoProvider>,
    /// The generation in force, for sync sessions to re-announce.
    rotated: tokio::sync::watch::Sender<u32>,
}

struct CaState {
    generation: u32,
    ca_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
    retiring: Option<Retiring>,
    /// The server certificate, its chain and key.
    server: Arc<CertifiedKey>,
    /// Client verifiers trusting the issuing CA alone, and with the
    /// retiring one (used until its overlap ends).
    issuing_only: Arc<dyn ClientCertVerifier>,
    with_retiring: Option<Arc<dyn ClientCertVerifier>>,
}

struct Retiring {
    ca_der: Vec<u8>,
    cross_der: Vec<u8>,
    until_ms: i64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredCa {
    generation: u32,
    /// The current CA's key, PKCS#8 PEM.
    key: String,
    /// The current CA's certificate, PEM.
    cert: String,
    retiring: Option<StoredRetiring>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredRetiring {
    cert: String,
    cross: String,
    until_ms: i64,
}

/// What a rotation did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rotated {
    /// The new CA's generation (the first CA is 1).
    pub generation: u32,
    /// SHA-256 of the new CA certificate, hex (what new enrolment tokens pin).
    pub fingerprint: String,
    /// When the old CA stops being trusted.
    pub old_ca_retires_at_ms: i64,
}

impl FleetCa {
    /// Loads the CA from `dir`, creating the first one if there is none,
    /// and issues this run's server certificate for [`SERVER_NAME`], the
    /// loopback names and `extra_names`.
    pub fn load_or_create(dir: &Path, extra_names: &[String]) -> Result<FleetCa, PkiError> {
        let (key_path, cert_path, rotation_path) = (dir.join("ca.key"), dir.join("ca.crt"), dir.join(ROTATION_FILE));
        let bad = |path: &Path| PkiError::BadKey(path.to_owned());
        let (generation, key_pem, cert_pem, retiring) = if rotation_path.exists() {
            let stored: StoredCa = serde_json::from_str(&read(&rotation_path)?).map_err(|_| bad(&rotation_path))?;
            let retiring = match stored.retiring {
                Some(r) => Some(Retiring {
                    ca_der: pem_to_der(&r.cert).ok_or_else(|| bad(&rotation_path))?,
                    cross_der: pem_to_der(&r.cross).ok_or_else(|| bad(&rotation_path))?,
                    until_ms: r.until_ms,
                }),
                None => None,
            };
            // A crash between the two renames of a rotation leaves the old
            // CA in `ca.crt`: the rotation file is the truth.
            if read(&cert_path).ok().as_deref() != Some(stored.cert.as_str()) {
                replace(&cert_path, stored.cert.as_bytes())?;
            }
            (stored.generation, stored.key, stored.cert, retiring)
        } else {
            if !key_path.exists() {
                let key = KeyPair::generate()?;
                let mut params = ca_params(1);
                params.not_before = rcgen::date_time_ymd(2025, 1, 1);
                params.not_after = rcgen::date_time_ymd(2045, 1, 1);
                let cert = params.self_signed(&key)?;
                write_new(&cert_path, cert.pem().as_bytes())?;
                write_new(&key_path, key.serialize_pem().as_bytes())?;
            }
            (1, read(&key_path)?, read(&cert_path)?, None)
        };
        let key = KeyPair::from_pem(&key_pem).map_err(|_| bad(&key_path))?;
        let ca_der = pem_to_der(&cert_pem).ok_or_else(|| bad(&cert_path))?;
        let provider = crypto_provider();
        let mut names = vec![SERVER_NAME.to_owned(), "localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
        names.extend(extra_names.iter().cloned());
        let state = CaState::new(generation, ca_der, key, retiring, &names, &provider)?;
        let (rotated, _) = tokio::sync::watch::channel(generation);
        Ok(FleetCa { state: RwLock::new(state), dir: dir.to_owned(), server_names: names, provider, rotated })
    }

    /// The CA that issues now (DER): what new enrolment tokens pin.
    pub fn ca_der(&self) -> Vec<u8> {
        self.read().ca_der.clone()
    }

    /// The CAs edges are to trust at `now_ms`, issuing first.
    pub fn announcement(&self, now_ms: i64) -> Vec<TrustedCa> {
        let state = self.read();
        let retiring: Vec<(Vec<u8>, i64)> = state.retiring.iter().map(|r| (r.ca_der.clone(), r.until_ms)).collect();
        identity::announcement(&state.ca_der, &retiring, now_ms)
    }

    /// Whether the CA that issues now issued `cert_der`.
    pub fn issued_by_current(&self, cert_der: &[u8]) -> bool {
        cert::verify_issued_by(cert_der, &self.read().ca_der).is_ok()
    }

    /// Issues an edge certificate for `edge_id` from its CSR. Returns the
    /// certificate (DER) and the edge's raw ed25519 public key.
    pub fn issue_edge_certificate(
        &self,
        edge_id: &str,
        csr_der: &[u8],
        now: Duration,
    ) -> Result<(Vec<u8>, [u8; 32]), PkiError> {
        let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
            .map_err(|err| PkiError::BadRequest(err.to_string()))?;
        if csr.public_key.algorithm() != &rcgen::PKCS_ED25519 {
            return Err(PkiError::BadRequest("edge keys must be ed25519".into()));
        }
        let public_key: [u8; 32] = csr
            .public_key
            .der_bytes()
            .try_into()
            .map_err(|_| PkiError::BadRequest("malformed ed25519 public key".into()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, edge_id);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = time_from_ms(i64::try_from(now.as_millis()).unwrap_or(i64::MAX));
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::try_from(EDGE_CERT_VALIDITY).expect("validity fits");
        let csr = CertificateSigningRequestParams { params, public_key: csr.public_key };
        let cert = csr.signed_by(&self.read().issuer)?;
        Ok((cert.der().to_vec(), public_key))
    }

    /// Replaces the CA: a new one issues from now on; the current one is
    /// trusted beside it for `overlap` and then retired. Refused while an
    /// earlier rotation's overlap runs.
    pub fn rotate(&self, overlap: Duration, now_ms: i64) -> Result<Rotated, PkiError> {
        let mut state = self.state.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(retiring) = state.retiring.as_ref().filter(|r| now_ms < r.until_ms) {
            return Err(PkiError::RotationRunning { until_ms: retiring.until_ms });
        }
        let until_ms = now_ms.saturating_add(i64::try_from(overlap.as_millis()).unwrap_or(i64::MAX));
        let generation = state.generation + 1;
        let key = KeyPair::generate()?;
        let now = time_from_ms(now_ms);
        let mut params = ca_params(generation);
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + CA_VALIDITY;
        let ca = params.self_signed(&key)?;
        // The same name and key, vouched for by the old CA until the end
        // of the overlap.
        params.not_after = time_from_ms(until_ms);
        let cross = params.signed_by(&key, &state.issuer)?;
        let retiring = Retiring { ca_der: state.ca_der.clone(), cross_der: cross.der().to_vec(), until_ms };

        let stored = StoredCa {
            generation,
            key: key.serialize_pem(),
            cert: ca.pem(),
            retiring: Some(StoredRetiring { cert: der_to_pem(&retiring.ca_der), cross: cross.pem(), until_ms }),
        };
        let fresh =
            CaState::new(generation, ca.der().to_vec(), key, Some(retiring), &self.server_names, &self.provider)?;
        // Stored before it is used, so no certificate is issued by a CA a
        // restart would not know.
        replace(&self.dir.join(ROTATION_FILE), serde_json::to_string_pretty(&stored).expect("encodes").as_bytes())?;
        replace(&self.dir.join("ca.crt"), ca.pem().as_bytes())?;
        let _ = std::fs::remove_file(self.dir.join("ca.key"));
        let fingerprint = hex::encode(aios_shared::token::fingerprint(ca.der()));
        *state = fresh;
        self.rotated.send_replace(generation);
        Ok(Rotated { generation, fingerprint, old_ca_retires_at_ms: until_ms })
    }

    /// Changes at every rotation.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u32> {
        self.rotated.subscribe()
    }

    /// Verifies client certificates against the CAs trusted at the
    /// handshake's time.
    pub fn client_verifier(self: &Arc<Self>) -> Arc<dyn ClientCertVerifier> {
        Arc::new(verifier::FleetClientVerifier { ca: self.clone() })
    }

    fn verifier_at(&self, now_ms: i64) -> Arc<dyn ClientCertVerifier> {
        let state = self.read();
        match (&state.retiring, &state.with_retiring) {
            (Some(retiring), Some(both)) if now_ms < retiring.until_ms => both.clone(),
            _ => state.issuing_only.clone(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, CaState> {
        self.state.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The server certificate of the moment, for QUIC and the admin API.
impl ResolvesServerCert for FleetCa {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.read().server.clone())
    }
}

impl std::fmt::Debug for FleetCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetCa").field("generation", &self.read().generation).finish()
    }
}

impl CaState {
    fn new(
        generation: u32,
        ca_der: Vec<u8>,
        key: KeyPair,
        retiring: Option<Retiring>,
        names: &[String],
        provider: &Arc<CryptoProvider>,
    ) -> Result<CaState, PkiError> {
        let tls = |err: &dyn std::fmt::Display| PkiError::Tls(err.to_string());
        let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(ca_der.clone()), key)?;
        let ca_validity = cert::facts(&ca_der).map_err(|err| tls(&err))?.validity;
        let server_key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name.push(DnType::CommonName, SERVER_NAME);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = time_from_ms(ca_validity.not_before_ms);
        params.not_after = time_from_ms(ca_validity.not_after_ms);
        let server_cert = params.signed_by(&server_key, &issuer)?;
        // Leaf, its CA, then the way from the retiring CA to it: enrolment
        // finds the CA its token pins among these.
        let mut chain = vec![CertificateDer::from(server_cert.der().to_vec()), CertificateDer::from(ca_der.clone())];
        if let Some(retiring) = &retiring {
            chain.push(CertificateDer::from(retiring.cross_der.clone()));
            chain.push(CertificateDer::from(retiring.ca_der.clone()));
        }
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
        let signing_key = provider.key_provider.load_private_key(key_der).map_err(|err| tls(&err))?;
        let server = Arc::new(CertifiedKey::new(chain, signing_key));
        let issuing_only = client_verifier(std::slice::from_ref(&ca_der), provider).map_err(|err| tls(&err))?;
        let with_retiring = match &retiring {
            Some(retiring) => {
                Some(client_verifier(&[ca_der.clone(), retiring.ca_der.clone()], provider).map_err(|err| tls(&err))?)
            }
            None => None,
        };
        Ok(CaState { generation, ca_der, issuer, retiring, server, issuing_only, with_retiring })
    }
}

fn client_verifier(cas: &[Vec<u8>], provider: &Arc<CryptoProvider>) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(CertificateDer::from(ca.clone())).map_err(|err| err.to_string())?;
    }
    // Enrolment connects without a certificate; the sync stream demands one.
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|err| err.to_string())
}

fn ca_params(generation: u32) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    // Each generation has its own name, so a chain names its issuer plainly.
    let common_name = if generation == 1 { "aios fleet CA".to_owned() } else { format!("aios fleet CA {generation}") };
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

fn time_from_ms(ms: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::UNIX_EPOCH + time::Duration::milliseconds(ms)
}

fn der_to_pem(der: &[u8]) -> String {
    let body = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der);
    let lines: Vec<&str> =
        body.as_bytes().chunks(64).map(|chunk| std::str::from_utf8(chunk).expect("base64 is ASCII")).collect();
    format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", lines.join("\n"))
}

/// Writes `path` whole (owner-only) and renames it into place.
fn replace(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    let temp = path.with_extension("new");
    let _ = std::fs::remove_file(&temp);
    write_new(&temp, contents)?;
    std::fs::rename(&temp, path).map_err(|source| PkiError::Io { path: path.to_owned(), source })
}

mod verifier {
    //! The client-certificate verifier over the CAs trusted at the
    //! handshake's time.

    use std::sync::Arc;

    use rustls::client::danger::HandshakeSignatureValid;
    use rustls::pki_types::{CertificateDer, UnixTime};
    use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
    use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

    use super::FleetCa;

    #[derive(Debug)]
    pub(super) struct FleetClientVerifier {
        pub(super) ca: Arc<FleetCa>,
    }

    impl ClientCertVerifier for FleetClientVerifier {
        fn offer_client_auth(&self) -> bool {
            true
        }

        fn client_auth_mandatory(&self) -> bool {
            false
        }

        fn root_hint_subjects(&self) -> &[DistinguishedName] {
            &[]
        }

        fn verify_client_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            now: UnixTime,
        ) -> Result<ClientCertVerified, rustls::Error> {
            let now_ms = i64::try_from(now.as_secs()).unwrap_or(i64::MAX).saturating_mul(1000);
            self.ca.verifier_at(now_ms).verify_client_cert(end_entity, intermediates, now)
        }

        // Handshake signatures do not depend on which CAs are trusted.
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.ca.read().issuing_only.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.ca.read().issuing_only.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.ca.read().issuing_only.supported_verify_schemes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: i64 = 86_400_000;

    fn edge_csr() -> Vec<u8> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        CertificateParams::default().serialize_request(&key).unwrap().der().to_vec()
    }

    #[test]
    fn a_rotation_survives_a_restart_and_the_old_ca_retires_with_its_overlap() {
        let dir = tempfile::tempdir().unwrap();
        let now = 1_800_000_000_000;
        let ca = FleetCa::load_or_create(dir.path(), &[]).unwrap();
        let old = ca.ca_der();
        let (before, _) = ca.issue_edge_certificate("e1", &edge_csr(), Duration::from_millis(now as u64)).unwrap();
        assert!(ca.issued_by_current(&before));

        let rotated = ca.rotate(Duration::from_secs(30 * 86_400), now).unwrap();
        assert_eq!(rotated.generation, 2);
        assert_eq!(rotated.old_ca_retires_at_ms, now + 30 * DAY_MS);
        assert!(!dir.path().join("ca.key").exists(), "the old CA's key is deleted");
        assert_eq!(pem_to_der(&read(&dir.path().join("ca.crt")).unwrap()), Some(ca.ca_der()));
        assert!(!ca.issued_by_current(&before), "renewed at once");
        let (after, _) = ca.issue_edge_certificate("e1", &edge_csr(), Duration::from_millis(now as u64)).unwrap();
        assert!(ca.issued_by_current(&after));
        assert!(matches!(ca.rotate(Duration::from_secs(86_400), now + DAY_MS), Err(PkiError::RotationRunning { .. })));

        // A restart reads the same CAs (and repairs a stale `ca.crt`).
        std::fs::write(dir.path().join("ca.crt"), "stale").unwrap();
        let again = FleetCa::load_or_create(dir.path(), &[]).unwrap();
        assert_eq!(again.ca_der(), ca.ca_der());
        assert_eq!(pem_to_der(&read(&dir.path().join("ca.crt")).unwrap()), Some(ca.ca_der()));
        let during = again.announcement(now + DAY_MS);
        assert_eq!(during.len(), 2);
        assert_eq!((during[1].der.clone(), during[1].retires_at_ms), (old, Some(now + 30 * DAY_MS)));
        assert_eq!(again.announcement(now + 30 * DAY_MS).len(), 1, "retired with the overlap");
        assert!(again.issued_by_current(&after));

        // The chain served during the overlap: leaf, new CA, cross, old CA.
        let chain = again.read().server.cert.clone();
        assert_eq!(chain.len(), 4);
        assert!(cert::verify_issued_by(&chain[0], &again.ca_der()).is_ok());
        assert!(cert::verify_issued_by(&chain[2], &during[1].der).is_ok(), "the old CA vouches for the new key");

        // After the overlap another rotation may start.
        let third = again.rotate(Duration::from_secs(86_400), now + 31 * DAY_MS).unwrap();
        assert_eq!(third.generation, 3);
        assert_eq!(again.announcement(now + 31 * DAY_MS).len(), 2);
    }
}
