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
use serde_json::{json, Value};
use tracing::warn;

use crate::exec::connector::load_secret;
use crate::http::api::{ApiError, ApiState};
use crate::tasks::Submission;

pub use aios_shared::webhook::{
    sign, verify, Signature, SignatureError, MAX_SIGNATURES, SIGNATURE_HEADER, TOLERANCE_S,
};

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
