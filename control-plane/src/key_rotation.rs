//! Rotating the bundle-signing key on a running control plane.
//!
//! `POST /v1/pki/bundle-key/rotate` (administrators): the current key
//! endorses a new one (`Pki::rotate_bundle_key`), and the bundle in force
//! is published again, one version up, signed with the new key and carrying
//! every endorsement so far. That bundle announces the rotation: an edge
//! checks the endorsement with the key it already trusts before it accepts
//! the new one, applies the bundle, and from then on takes bundles and
//! commands only from the new key. Edges offline meanwhile catch up with
//! whichever bundle reaches them next, since every bundle carries the whole
//! chain (`aios_shared::rotation`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use crate::api::{ApiError, ApiState};

/// `POST /v1/pki/bundle-key/rotate`.
pub async fn rotate(State(state): State<ApiState>) -> Result<Json<serde_json::Value>, ApiError> {
    let _guard = state.publish_lock.lock().await;
    let internal = |err: &dyn std::fmt::Display| ApiError(StatusCode::INTERNAL_SERVER_ERROR, err.to_string());
    let latest = state.store.bundle(None).await?;
    let new_key = state.pki.rotate_bundle_key().map_err(|err| internal(&err))?;
    let key = hex::encode(new_key.as_bytes());
    let Some((version, signed)) = latest else {
        tracing::info!(%key, "bundle key rotated; no bundle to announce it with yet");
        return Ok(Json(serde_json::json!({ "bundle_key": key, "announced_in": null })));
    };
    let mut body = signed.open(&state.pki.bundle_root()).map_err(|err| internal(&err))?;
    let now = state.clock.unix_ms();
    body.version = version + 1;
    body.expires_at_ms = now.saturating_add(body.expires_at_ms.saturating_sub(body.issued_at_ms));
    body.issued_at_ms = now;
    body.key_endorsements = state.pki.endorsements();
    let signed = body.sign(&state.pki.bundle_key());
    if !state.store.insert_bundle(body.version, signed.clone(), now).await? {
        return Err(ApiError(StatusCode::CONFLICT, format!("version {} is not above the current one", body.version)));
    }
    state.bundles.send_replace(Some((body.version, signed)));
    tracing::info!(%key, version = body.version, "bundle key rotated and announced");
    Ok(Json(serde_json::json!({ "bundle_key": key, "announced_in": body.version })))
}
