//! Webhook signatures: the header format, its strict parser and the
//! HMAC-SHA256 check, as pure functions of the header, the body, the secret
//! and `now` (the edge's HTTP route is their thin driver). Reachable without
//! authentication, so the parser bounds everything before it allocates.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "x-aios-signature";
/// How far a signature's timestamp may be from the edge's clock, in seconds.
pub const TOLERANCE_S: i64 = 300;
/// Most `v1` entries one header may carry (the current and the previous
/// secret's, during a rotation).
pub const MAX_SIGNATURES: usize = 2;

/// Bytes in an HMAC-SHA256.
const MAC_LEN: usize = 32;
/// Digits in a timestamp: enough for any date the edge will see, and no
/// number that overflows.
const MAX_T_DIGITS: usize = 12;

/// Why a delivery was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No signature header, several, or one that does not parse; the text
    /// says which rule it broke.
    #[error("malformed {SIGNATURE_HEADER} header: {0} (expected `t=<unix seconds>,v1=<64 hex digits>`)")]
    Malformed(&'static str),
    /// The timestamp is outside the tolerance.
    #[error("the signature's timestamp is {0} s away from this edge's clock (at most {TOLERANCE_S} s)")]
    Stale(i64),
    /// The MAC does not match.
    #[error("the signature does not match the body")]
    Mismatch,
}

/// A signature header, parsed: the timestamp and one or two MACs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// The signed timestamp, Unix seconds.
    pub t_s: i64,
    /// The MACs offered (any one may match), distinct, in header order.
    pub macs: Vec<[u8; MAC_LEN]>,
}

impl Signature {
    /// Parses `t=<unix seconds>,v1=<hex>[,v1=<hex>]` and nothing else: `t`
    /// first, in canonical decimal (digits only, no leading zero); each
    /// `v1` exactly 64 lower-case hex digits; at most [`MAX_SIGNATURES`],
    /// all different; no other field, no whitespace, no empty part.
    pub fn parse(header: &str) -> Result<Signature, SignatureError> {
        let malformed = SignatureError::Malformed;
        let mut parts = header.split(',');
        let t_text =
            parts.next().and_then(|part| part.strip_prefix("t=")).ok_or(malformed("it must start with `t=`"))?;
        if t_text.is_empty()
            || t_text.len() > MAX_T_DIGITS
            || !t_text.bytes().all(|b| b.is_ascii_digit())
            || (t_text.len() > 1 && t_text.starts_with('0'))
        {
            return Err(malformed("`t` must be Unix seconds in plain decimal"));
        }
        let t_s = t_text.parse::<i64>().map_err(|_| malformed("`t` must be Unix seconds in plain decimal"))?;
        let mut macs: Vec<[u8; MAC_LEN]> = Vec::new();
        for part in parts {
            let value = part.strip_prefix("v1=").ok_or(malformed("only `v1` entries may follow `t`"))?;
            if value.len() != 2 * MAC_LEN || !value.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return Err(malformed("`v1` must be 64 lower-case hex digits"));
            }
            let mut mac = [0u8; MAC_LEN];
            hex::decode_to_slice(value, &mut mac).map_err(|_| malformed("`v1` must be 64 lower-case hex digits"))?;
            if macs.contains(&mac) {
                return Err(malformed("the same `v1` appears twice"));
            }
            if macs.len() == MAX_SIGNATURES {
                return Err(malformed("at most two `v1` entries"));
            }
            macs.push(mac);
        }
        if macs.is_empty() {
            return Err(malformed("no `v1` entry"));
        }
        Ok(Signature { t_s, macs })
    }

    /// Checks the signature against `body` at `now_s`, in constant time.
    pub fn verify(&self, secret: &[u8], body: &[u8], now_s: i64) -> Result<(), SignatureError> {
        let skew = now_s.saturating_sub(self.t_s);
        if skew.abs() > TOLERANCE_S {
            return Err(SignatureError::Stale(skew));
        }
        let matches = self.macs.iter().any(|signature| mac(secret, self.t_s, body).verify_slice(signature).is_ok());
        if matches {
            Ok(())
        } else {
            Err(SignatureError::Mismatch)
        }
    }

    /// The delivery's identity: SHA-256 of `"<t>.<body>"`, what the MAC
    /// covers. Every header that verifies for this body and time names it.
    pub fn delivery_key(&self, body: &[u8]) -> String {
        let mut hash = Sha256::new();
        hash.update(format!("{}.", self.t_s).as_bytes());
        hash.update(body);
        hex::encode(hash.finalize())
    }
}

fn mac(secret: &[u8], t_s: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(format!("{t_s}.").as_bytes());
    mac.update(body);
    mac
}

/// The signature header for `body` at `t_s`, as a sender computes it.
pub fn sign(secret: &[u8], t_s: i64, body: &[u8]) -> String {
    format!("t={t_s},v1={}", hex::encode(mac(secret, t_s, body).finalize().into_bytes()))
}

/// Parses `header` and checks it against `body` at `now_s`; the parsed
/// signature when it holds.
pub fn verify(secret: &[u8], header: &str, body: &[u8], now_s: i64) -> Result<Signature, SignatureError> {
    let signature = Signature::parse(header)?;
    signature.verify(secret, body, now_s)?;
    Ok(signature)
}

#[cfg(test)]
mod tests;
