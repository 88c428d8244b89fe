//! Rotating the control plane's keys while it runs: the bundle-signing key
//! and the fleet CA.
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
//!
//! `POST /v1/pki/ca/rotate` (administrators) replaces the fleet CA with an
//! overlap (`crate::fleet_ca`): connected edges hear of the new CA when
//! they next connect, renew their certificate from it, and drop the old CA
//! when the overlap ends.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

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

/// The body of `POST /v1/pki/ca/rotate`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateCa {
    /// Days both CAs are trusted; every edge must connect within them.
    pub overlap_days: u32,
}

/// The shortest and longest overlap a rotation may have, in days.
pub const OVERLAP_DAYS: std::ops::RangeInclusive<u32> = 1..=365;

/// `POST /v1/pki/ca/rotate`.
pub async fn rotate_ca(
    State(state): State<ApiState>,
    Json(request): Json<RotateCa>,
) -> Result<Json<crate::fleet_ca::Rotated>, ApiError> {
    if !OVERLAP_DAYS.contains(&request.overlap_days) {
        let message = format!("overlap_days must be within {}..={}", OVERLAP_DAYS.start(), OVERLAP_DAYS.end());
        return Err(ApiError(StatusCode::BAD_REQUEST, message));
    }
    let overlap = std::time::Duration::from_secs(u64::from(request.overlap_days) * 86_400);
    match state.pki.ca.rotate(overlap, state.clock.unix_ms()) {
        Ok(rotated) => {
            tracing::info!(
                generation = rotated.generation,
                until_ms = rotated.old_ca_retires_at_ms,
                "fleet CA rotated"
            );
            Ok(Json(rotated))
        }
        Err(err @ crate::pki::PkiError::RotationRunning { .. }) => Err(ApiError(StatusCode::CONFLICT, err.to_string())),
        Err(err) => Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, err.to_string())),
    }
}
