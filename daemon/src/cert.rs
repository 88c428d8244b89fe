//! What an X.509 certificate says, as far as the daemons need to know: its
//! validity period, the raw ed25519 key it certifies, and whether a CA
//! signed it. Parsing is x509-parser's; the decisions over the results are
//! in `aios_shared::identity`.

use aios_shared::identity::Validity;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Errors reading a certificate.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The bytes are not a DER certificate.
    #[error("not a certificate: {0}")]
    Parse(String),
    /// The issuer's signature does not verify.
    #[error("not signed by the fleet CA")]
    Signature,
    /// It is not a CA certificate.
    #[error("not a CA certificate")]
    NotCa,
}

/// A parsed certificate's facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// When it is valid.
    pub validity: Validity,
    /// The certified public key's raw bytes (32 for ed25519).
    pub public_key: Vec<u8>,
}

/// Reads the validity and key of a DER certificate.
pub fn facts(der: &[u8]) -> Result<CertFacts, CertError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|err| CertError::Parse(err.to_string()))?;
    Ok(CertFacts {
        validity: Validity {
            not_before_ms: cert.validity().not_before.timestamp().saturating_mul(1000),
            not_after_ms: cert.validity().not_after.timestamp().saturating_mul(1000),
        },
        public_key: cert.public_key().subject_public_key.data.to_vec(),
    })
}

/// Checks that `ca_der` signed `der`.
pub fn verify_issued_by(der: &[u8], ca_der: &[u8]) -> Result<(), CertError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|err| CertError::Parse(err.to_string()))?;
    let (_, ca) = X509Certificate::from_der(ca_der).map_err(|err| CertError::Parse(err.to_string()))?;
    cert.verify_signature(Some(ca.public_key())).map_err(|_| CertError::Signature)
}

/// Checks that `der` is a CA certificate (basic constraints say so).
pub fn check_ca(der: &[u8]) -> Result<(), CertError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|err| CertError::Parse(err.to_string()))?;
    if cert.is_ca() {
        Ok(())
    } else {
        Err(CertError::NotCa)
    }
}

/// Whether any of `cas` signed `der`.
pub fn issued_by_any<'a>(der: &[u8], mut cas: impl Iterator<Item = &'a [u8]>) -> bool {
    cas.any(|ca| verify_issued_by(der, ca).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_a_parse_error_not_a_panic() {
        assert!(matches!(facts(b"not a certificate"), Err(CertError::Parse(_))));
        assert!(matches!(verify_issued_by(&[0x30, 0x03, 0x02, 0x01, 0x00], b""), Err(CertError::Parse(_))));
    }
}
