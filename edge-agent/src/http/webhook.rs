//! Inbound webhooks: a signed HTTP request becomes a task.
//!
//! `POST /v1/webhooks/{name}` with a JSON body and exactly one header
//!
//! ```text
//! X-Aios-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>
//! ```
//!
//! The secret is the webhook's (`[webhooks.NAME] secret = "env:..."` in the
//! bundle). The header is parsed strictly ([`Signature::parse`]): `t` first,
//! in canonical decimal, then one `v1` (64 lower-case hex digits) or two
//! different ones (a sender signing with its old and new secret while it
//! rotates them); no other field, no whitespace, nothing repeated. A
//! signature older or newer than [`TOLERANCE_S`] is refused, so a captured
//! request cannot be replayed later; a request replayed inside the window
//! makes no second task, because the task's idempotency key is the value at
//! the webhook's `idempotency_pointer` in the body or, without one, the
//! SHA-256 of what the MAC covers (`"<t>.<body>"`), never the header's text:
//! a replay whose header was altered either fails to parse or verify, or
//! names the same task. These routes do not take the API's bearer token:
//! the signature is their credential.

use aios_shared::exec::WebhookSpec;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tracing::warn;

use crate::exec::connector::load_secret;
use crate::http::api::{ApiError, ApiState};
use crate::tasks::Submission;

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

/// The one signature header of a request.
fn signature_header(headers: &HeaderMap) -> Result<&str, SignatureError> {
    let mut values = headers.get_all(SIGNATURE_HEADER).iter();
    let value = values.next().ok_or(SignatureError::Malformed("no header"))?;
    if values.next().is_some() {
        return Err(SignatureError::Malformed("more than one header"));
    }
    value.to_str().map_err(|_| SignatureError::Malformed("not visible ASCII"))
}

/// The task a verified delivery makes: the body is the input; without an
/// `idempotency_pointer` the key is `delivery` (see [`Signature::delivery_key`]).
fn submission(name: &str, spec: &WebhookSpec, delivery: &str, input: Value) -> Result<Submission, ApiError> {
    let key = match &spec.idempotency_pointer {
        Some(pointer) => {
            let value = input.pointer(pointer).ok_or_else(|| {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("the body has no value at {pointer}"))
            })?;
            match value {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            }
        }
        None => delivery.to_owned(),
    };
    Ok(Submission {
        agent: spec.agent.clone(),
        input,
        kind: spec.kind.clone(),
        idempotency_key: Some(format!("webhook:{name}:{key}")),
    })
}

/// `POST /v1/webhooks/{name}`: `201` with the new task, `200` with the task
/// an earlier delivery of the same event made.
pub async fn receive(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (_, defs) =
        state.runtime.definitions().await?.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no bundle yet"))?;
    let spec =
        defs.webhooks.get(&name).ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no webhook `{name}`")))?;
    let secret = load_secret(&spec.secret).map_err(|err| {
        warn!(webhook = %name, %err, "webhook secret unavailable");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("webhook `{name}` has no secret on this edge"))
    })?;
    let now_s = state.runtime.now() / 1000;
    let verified =
        signature_header(&headers).and_then(|header| verify(secret.expose().as_bytes(), header, &body, now_s));
    let signature = match verified {
        Ok(signature) => signature,
        Err(err) => {
            warn!(webhook = %name, %err, "webhook delivery refused");
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, err.to_string()));
        }
    };
    let input: Value = serde_json::from_slice(&body)
        .map_err(|err| ApiError::new(StatusCode::BAD_REQUEST, format!("the body is not JSON: {err}")))?;
    let submission = submission(&name, spec, &signature.delivery_key(&body), input)?;
    let (task, created) = state.runtime.submit(submission, &format!("webhook:{name}")).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(json!({ "task": task.id, "state": task.state, "created": created }))))
}

#[cfg(test)]
mod tests;
