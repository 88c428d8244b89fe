//! Inbound webhooks: a signed HTTP request becomes a task.
//!
//! `POST /v1/webhooks/{name}` with a JSON body and the header
//!
//! ```text
//! X-Aios-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>
//! ```
//!
//! The secret is the webhook's (`[webhooks.NAME] secret = "env:..."` in the
//! bundle). A signature older or newer than [`TOLERANCE_S`] is refused, so a
//! captured request cannot be replayed later; a request replayed inside the
//! window makes no second task, because the task's idempotency key is the
//! value at the webhook's `idempotency_pointer` in the body or, without one,
//! the signature itself. These routes do not take the API's bearer token:
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

/// Why a delivery was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No signature header, or one that does not parse.
    #[error("missing or malformed {SIGNATURE_HEADER} header (expected `t=<unix seconds>,v1=<hex>`)")]
    Malformed,
    /// The timestamp is outside the tolerance.
    #[error("the signature's timestamp is {0} s away from this edge's clock (at most {TOLERANCE_S} s)")]
    Stale(i64),
    /// The MAC does not match.
    #[error("the signature does not match the body")]
    Mismatch,
}

/// The signature header for `body` at `t_s`, as a sender computes it.
pub fn sign(secret: &[u8], t_s: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(format!("{t_s}.").as_bytes());
    mac.update(body);
    format!("t={t_s},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Checks `header` against `body` at `now_s`, in constant time.
pub fn verify(secret: &[u8], header: &str, body: &[u8], now_s: i64) -> Result<(), SignatureError> {
    let mut t_s = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => t_s = Some(value.parse::<i64>().map_err(|_| SignatureError::Malformed)?),
            Some(("v1", value)) => signatures.push(hex::decode(value).map_err(|_| SignatureError::Malformed)?),
            _ => {}
        }
    }
    let t_s = t_s.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    let skew = now_s.saturating_sub(t_s);
    if skew.abs() > TOLERANCE_S {
        return Err(SignatureError::Stale(skew));
    }
    // Several `v1` entries let a sender sign with the old and the new secret
    // while it rotates them.
    let matches = signatures.iter().any(|signature| {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
        mac.update(format!("{t_s}.").as_bytes());
        mac.update(body);
        mac.verify_slice(signature).is_ok()
    });
    if matches {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// The task a verified delivery makes: the body is the input.
fn submission(name: &str, spec: &WebhookSpec, header: &str, input: Value) -> Result<Submission, ApiError> {
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
        None => hex::encode(Sha256::digest(header.as_bytes())),
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
    let header = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let now_s = state.runtime.now() / 1000;
    if let Err(err) = verify(secret.expose().as_bytes(), header, &body, now_s) {
        warn!(webhook = %name, %err, "webhook delivery refused");
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, err.to_string()));
    }
    let input: Value = serde_json::from_slice(&body)
        .map_err(|err| ApiError::new(StatusCode::BAD_REQUEST, format!("the body is not JSON: {err}")))?;
    let submission = submission(&name, spec, header, input)?;
    let (task, created) = state.runtime.submit(submission, &format!("webhook:{name}")).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(json!({ "task": task.id, "state": task.state, "created": created }))))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec_test";
    const NOW: i64 = 1_800_000_000;

    #[test]
    fn a_signed_body_verifies_and_any_change_does_not() {
        let body = br#"{"order":"o-1","amount":20}"#;
        let header = sign(SECRET, NOW, body);
        assert_eq!(verify(SECRET, &header, body, NOW + 10), Ok(()));
        assert_eq!(verify(SECRET, &header, br#"{"order":"o-1","amount":90}"#, NOW), Err(SignatureError::Mismatch));
        assert_eq!(verify(b"another secret", &header, body, NOW), Err(SignatureError::Mismatch));
        // The timestamp is signed too: moving it breaks the MAC.
        let moved = header.replace(&format!("t={NOW}"), &format!("t={}", NOW + 1));
        assert_eq!(verify(SECRET, &moved, body, NOW), Err(SignatureError::Mismatch));
    }

    #[test]
    fn stale_and_malformed_signatures_are_refused() {
        let body = b"{}";
        let header = sign(SECRET, NOW, body);
        assert_eq!(verify(SECRET, &header, body, NOW + TOLERANCE_S + 1), Err(SignatureError::Stale(TOLERANCE_S + 1)));
        assert_eq!(verify(SECRET, &header, body, NOW - TOLERANCE_S - 1), Err(SignatureError::Stale(-TOLERANCE_S - 1)));
        for bad in ["", "v1=abcd", &format!("t={NOW}"), &format!("t={NOW},v1=zz"), "t=soon,v1=00"] {
            assert_eq!(verify(SECRET, bad, body, NOW), Err(SignatureError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn a_rotating_sender_may_sign_with_two_secrets() {
        let body = b"{}";
        let old = sign(b"old", NOW, body);
        let new = sign(SECRET, NOW, body);
        let both = format!("{old},{}", new.split_once(',').expect("two parts").1);
        assert_eq!(verify(SECRET, &both, body, NOW), Ok(()));
    }

    #[test]
    fn the_idempotency_key_comes_from_the_pointer_or_the_signature() {
        let spec = WebhookSpec {
            agent: "triage".into(),
            kind: None,
            secret: "env:X".into(),
            idempotency_pointer: Some("/event/id".into()),
        };
        let input = json!({ "event": { "id": "evt_9" } });
        let made = submission("shop", &spec, "t=1,v1=00", input).expect("a key");
        assert_eq!(made.idempotency_key.as_deref(), Some("webhook:shop:evt_9"));
        assert!(submission("shop", &spec, "t=1,v1=00", json!({})).is_err(), "a missing key is refused");
        let spec = WebhookSpec { idempotency_pointer: None, ..spec };
        let a = submission("shop", &spec, "t=1,v1=00", json!({})).expect("a key").idempotency_key;
        let b = submission("shop", &spec, "t=2,v1=00", json!({})).expect("a key").idempotency_key;
        assert_ne!(a, b);
    }
}
