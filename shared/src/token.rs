//! One-time enrolment tokens.
//!
//! A token carries a random secret and the SHA-256 fingerprint of the fleet
//! CA's certificate, as `kubeadm join` pairs a token with a CA hash: the edge
//! trusts the control plane it reaches only if that server presents a chain
//! ending in the pinned CA, so a token alone cannot be used to impersonate the
//! control plane, and the secret never reaches an impostor.
//!
//! Text form: `aios1.<secret: 32 hex>.<ca fingerprint: 64 hex>`.
//!
//! The labels an edge is targeted and judged by (`site=paris`) are bound to
//! its token when the operator creates it, and the control plane gives the
//! edge those: an edge cannot claim labels of its own ([`enrolment_labels`]).

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

/// Most labels a token may bind.
pub const MAX_LABELS: usize = 16;
/// Longest label key or value.
pub const MAX_LABEL_LEN: usize = 64;

/// Parses the `key=value` labels an operator binds to a token: keys and
/// values of letters, digits, `.`, `_` and `-`, each key once.
pub fn parse_labels(texts: &[String]) -> Result<BTreeMap<String, String>, String> {
    if texts.len() > MAX_LABELS {
        return Err(format!("at most {MAX_LABELS} labels"));
    }
    let valid = |part: &str| {
        !part.is_empty()
            && part.len() <= MAX_LABEL_LEN
            && part.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    let mut labels = BTreeMap::new();
    for text in texts {
        let (key, value) = text.split_once('=').ok_or_else(|| format!("label `{text}` is not KEY=VALUE"))?;
        if !valid(key) || !valid(value) {
            return Err(format!(
                "label `{text}`: keys and values are 1 to {MAX_LABEL_LEN} letters, digits, `.`, `_` or `-`"
            ));
        }
        if labels.insert(key.to_owned(), value.to_owned()).is_some() {
            return Err(format!("label `{key}` is given twice"));
        }
    }
    Ok(labels)
}

/// The labels an enrolling edge gets: those its token binds. A request may
/// repeat them (older edges send what the operator typed) but not differ.
pub fn enrolment_labels(
    bound: &BTreeMap<String, String>,
    requested: &[(String, String)],
) -> Result<BTreeMap<String, String>, String> {
    let asked: BTreeMap<String, String> = requested.iter().cloned().collect();
    if requested.is_empty() || asked == *bound {
        return Ok(bound.clone());
    }
    let show = |labels: &BTreeMap<String, String>| {
        let list: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if list.is_empty() {
            "none".to_owned()
        } else {
            list.join(", ")
        }
    };
    Err(format!(
        "labels come from the enrolment token, which binds {}; the edge asked for {}",
        show(bound),
        show(&asked)
    ))
}

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
    fn labels_come_from_the_token() {
        let bound = parse_labels(&["site=paris".into(), "role=front-office".into()]).unwrap();
        assert_eq!(enrolment_labels(&bound, &[]).unwrap(), bound);
        let same = [("role".into(), "front-office".into()), ("site".into(), "paris".into())];
        assert_eq!(enrolment_labels(&bound, &same).unwrap(), bound);
        let claimed = [("site".into(), "paris".into()), ("role".into(), "admin".into())];
        let err = enrolment_labels(&bound, &claimed).unwrap_err();
        assert!(err.contains("binds role=front-office, site=paris") && err.contains("role=admin"), "{err}");
        let err = enrolment_labels(&BTreeMap::new(), &[("site".into(), "hq".into())]).unwrap_err();
        assert!(err.contains("binds none"), "{err}");
        for bad in ["site", "=x", "site=", "si te=x", "site=a/b", &format!("k={}", "v".repeat(65))] {
            assert!(parse_labels(&[bad.to_owned()]).is_err(), "{bad}");
        }
        assert!(parse_labels(&["a=1".into(), "a=2".into()]).unwrap_err().contains("twice"));
    }

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
