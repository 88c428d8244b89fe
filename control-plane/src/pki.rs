//! The control plane's keys: the fleet CA (`crate::fleet_ca`: it issues the
//! server certificate at every start and rotates with an overlap) and the
//! separate ed25519 bundle-signing key.
//!
//! Keys are created on first start in `DATA_DIR/pki/`, readable by the owner
//! only, and never leave it. Edge certificates are issued from CSRs, so edge
//! private keys never reach the control plane either.

use std::io::Write;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use aios_shared::rotation::KeyEndorsement;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand::rngs::OsRng;

use crate::fleet_ca::FleetCa;

/// Errors creating, loading or using keys.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A key or certificate file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// Certificate generation or parsing failed.
    #[error("certificate error: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A stored key is unreadable.
    #[error("invalid key in {0}")]
    BadKey(PathBuf),
    /// The edge's certificate request is unacceptable.
    #[error("certificate request refused: {0}")]
    BadRequest(String),
    /// rustls refused a certificate or key.
    #[error("tls: {0}")]
    Tls(String),
    /// A CA rotation is still in its overlap.
    #[error("the last CA rotation's overlap runs until {until_ms} (ms since the epoch); rotate again after it")]
    RotationRunning {
        /// When it ends.
        until_ms: i64,
    },
}

/// The file holding the bundle key after its first rotation, with the
/// endorsements that lead to it.
const ROTATION_FILE: &str = "bundle-rotation.json";

/// The bundle-signing key in force and how it was reached.
struct BundleSigner {
    key: SigningKey,
    endorsements: Vec<KeyEndorsement>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredRotation {
    /// The current key, PKCS#8 PEM.
    key: String,
    endorsements: Vec<KeyEndorsement>,
}

/// The control plane's key material.
pub struct Pki {
    /// The fleet CA: edge and server certificates, trust during rotation.
    pub ca: Arc<FleetCa>,
    /// Signs policy bundles and commands: the current key and the
    /// endorsements that lead to it from the first one (rotatable while
    /// running).
    bundle: std::sync::RwLock<BundleSigner>,
    /// Where the keys live.
    dir: PathBuf,
    /// Key of QUIC stateless resets. Kept across restarts so a restarted
    /// control plane can reset connections its previous run left open, and
    /// edges reconnect at once instead of waiting out the idle timeout.
    pub quic_reset_key: [u8; 32],
}

impl Pki {
    /// Loads the keys from `data_dir/pki`, creating any that are missing;
    /// issues a fresh server certificate for [`SERVER_NAME`] and `extra_names`.
    pub fn load_or_create(data_dir: &Path, extra_names: &[String]) -> Result<Pki, PkiError> {
        let dir = data_dir.join("pki");
        std::fs::create_dir_all(&dir).map_err(|source| PkiError::Io { path: dir.clone(), source })?;
        let bundle_path = dir.join("bundle.key");
        let rotation_path = dir.join(ROTATION_FILE);
        let reset_path = dir.join("quic-reset.key");

        if !bundle_path.exists() && !rotation_path.exists() {
            let key = SigningKey::generate(&mut OsRng);
            let pem = key.to_pkcs8_pem(Default::default()).map_err(|_| PkiError::BadKey(bundle_path.clone()))?;
            write_new(&bundle_path, pem.as_bytes())?;
        }

        if !reset_path.exists() {
            write_new(&reset_path, hex::encode(rand::random::<[u8; 32]>()).as_bytes())?;
        }
        let quic_reset_key = hex::decode(read(&reset_path)?.trim())
            .ok()
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
            .ok_or_else(|| PkiError::BadKey(reset_path.clone()))?;

        let ca = Arc::new(FleetCa::load_or_create(&dir, extra_names)?);
        let bundle = if rotation_path.exists() {
            let stored: StoredRotation =
                serde_json::from_str(&read(&rotation_path)?).map_err(|_| PkiError::BadKey(rotation_path.clone()))?;
            let key = SigningKey::from_pkcs8_pem(&stored.key).map_err(|_| PkiError::BadKey(rotation_path.clone()))?;
            BundleSigner { key, endorsements: stored.endorsements }
        } else {
            let key =
                SigningKey::from_pkcs8_pem(&read(&bundle_path)?).map_err(|_| PkiError::BadKey(bundle_path.clone()))?;
            BundleSigner { key, endorsements: Vec::new() }
        };

        Ok(Pki { ca, bundle: std::sync::RwLock::new(bundle), dir, quic_reset_key })
    }

    /// The key bundles and commands are signed with now.
    pub fn bundle_key(&self) -> SigningKey {
        self.signer().key.clone()
    }

    /// The endorsements from the first bundle key to the current one.
    pub fn endorsements(&self) -> Vec<KeyEndorsement> {
        self.signer().endorsements.clone()
    }

    /// The first bundle key (what edges enrolled before any rotation
    /// pinned): a stored bundle opens with it through its endorsements.
    pub fn bundle_root(&self) -> VerifyingKey {
        let signer = self.signer();
        signer
            .endorsements
            .first()
            .and_then(|first| hex::decode(&first.from).ok())
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
            .and_then(|bytes| VerifyingKey::from_bytes(&bytes).ok())
            .unwrap_or_else(|| signer.key.verifying_key())
    }

    /// Every bundle key so far, first to current.
    pub fn bundle_keys(&self) -> Vec<VerifyingKey> {
        aios_shared::rotation::chain(self.bundle_root(), &self.endorsements())
    }

    /// Replaces the bundle-signing key: a new key, endorsed by the current
    /// one, stored with every endorsement in one file written whole and
    /// renamed into place (so a crash leaves the old state or the new one),
    /// then the old key's file is deleted. Returns the new public key.
    pub fn rotate_bundle_key(&self) -> Result<VerifyingKey, PkiError> {
        let mut signer = self.bundle.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let new = SigningKey::generate(&mut OsRng);
        let mut endorsements = signer.endorsements.clone();
        endorsements.push(KeyEndorsement::sign(&signer.key, &new.verifying_key()));
        let path = self.dir.join(ROTATION_FILE);
        let key = new.to_pkcs8_pem(Default::default()).map_err(|_| PkiError::BadKey(path.clone()))?;
        let stored = StoredRotation { key: key.to_string(), endorsements: endorsements.clone() };
        let text = serde_json::to_string_pretty(&stored).expect("keys encode");
        let temp = self.dir.join(format!("{ROTATION_FILE}.new"));
        let _ = std::fs::remove_file(&temp);
        write_new(&temp, text.as_bytes())?;
        std::fs::rename(&temp, &path).map_err(|source| PkiError::Io { path: path.clone(), source })?;
        let _ = std::fs::remove_file(self.dir.join("bundle.key"));
        *signer = BundleSigner { key: new, endorsements };
        Ok(signer.key.verifying_key())
    }

    fn signer(&self) -> std::sync::RwLockReadGuard<'_, BundleSigner> {
        self.bundle.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The CA that issues now (DER): what new enrolment tokens pin.
    pub fn ca_der(&self) -> Vec<u8> {
        self.ca.ca_der()
    }
}

pub(crate) fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem.lines().filter(|line| !line.starts_with("-----")).collect();
    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, body).ok()
}

pub(crate) fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io { path: path.to_owned(), source })
}

/// Creates `path` readable by the owner only; never overwrites.
pub fn write_new(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|source| PkiError::Io { path: path.to_owned(), source })?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|source| PkiError::Io { path: path.to_owned(), source })
}
