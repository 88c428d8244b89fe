//! One-time enrolment tokens.
//!
//! A token carries a random secret and the SHA-256 fingerprint of the fleet
//! CA's certificate, as `kubeadm join` pairs a token with a CA hash: the edge
//! trusts the control plane it reaches only if that server presents a chain
//! ending in the pinned CA, so a token alone cannot be used to impersonate the
//! control plane, and the secret never reaches an impostor.
//!
//! Text form: `aios1.<secret: 32 hex>.<ca fingerprint: 64 hex>`.

use sha2::{Digest, Sha256};

/// A parsed enrolment token.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrollToken {
    /// The secret, as hex; the control plane stores only its hash.
    pub secret: String,
    /// SHA-256 of the CA certificate's DER encoding.
    pub ca_fingerprint: [u8; 32],
}

impl std::fmt::Debug for EnrollToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret never reaches a log line.
        f.debug_struct("EnrollToken").field("ca_fingerprint", &hex::encode(self.ca_fingerprint)).finish()
    }
}

/// Why a token's text could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed enrolment token: expected aios1.<secret>.<ca-fingerprint> as printed by `aios-control-plane token create`")]
pub struct TokenFormatError;

impl EnrollToken {
    /// A token from 16 random bytes and the CA certificate.
    pub fn new(random: [u8; 16], ca_der: &[u8]) -> EnrollToken {
        EnrollToken { secret: hex::encode(random), ca_fingerprint: fingerprint(ca_der) }
    }

    /// Parses the text form.
    pub fn parse(text: &str) -> Result<EnrollToken, TokenFormatError> {
        let mut parts = text.trim().split('.');
        let (Some("aios1"), Some(secret), Some(fp), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenFormatError);
        };
        if secret.len() != 32 || hex::decode(secret).is_err() {
            return Err(TokenFormatError);
        }
        let ca_fingerprint = hex::decode(fp).ok().and_then(|b| b.try_into().ok()).ok_or(TokenFormatError)?;
        Ok(EnrollToken { secret: secret.to_owned(), ca_fingerprint })
    }

    /// The text form.
    pub fn to_text(&self) -> String {
        format!("aios1.{}.{}", self.secret, hex::encode(self.ca_fingerprint))
    }

    /// What the control plane stores instead of the secret.
    pub fn secret_hash(&self) -> String {
        secret_hash(&self.secret)
    }
}

/// SHA-256 of a token secret, hex.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// SHA-256 of a DER certificate.
pub fn fingerprint(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let token = EnrollToken::new([5; 16], b"ca");
        assert_eq!(EnrollToken::parse(&token.to_text()), Ok(token.clone()));
        assert!(!format!("{token:?}").contains(&token.secret));
        for bad in
            ["", "aios1", "aios1.zz.00", "aios2.05050505050505050505050505050505.00", &format!("{}.x", token.to_text())]
        {
            assert_eq!(EnrollToken::parse(bad), Err(TokenFormatError), "{bad}");
        }
    }
}
