//! Tests of the webhook route's header and task keys (the signature itself
//! is tested in `aios_shared::webhook`).

use super::*;

#[test]
fn one_header_exactly() {
    let mut headers = HeaderMap::new();
    assert_eq!(signature_header(&headers), Err(SignatureError::Malformed("no header")));
    headers.append(SIGNATURE_HEADER, "t=1,v1=00".parse().expect("a header value"));
    assert_eq!(signature_header(&headers), Ok("t=1,v1=00"));
    headers.append(SIGNATURE_HEADER, "t=2,v1=00".parse().expect("a header value"));
    assert_eq!(signature_header(&headers), Err(SignatureError::Malformed("more than one header")));
}

#[test]
fn the_idempotency_key_comes_from_the_pointer_or_the_delivery() {
    let spec = WebhookSpec {
        agent: "triage".into(),
        kind: None,
        secret: "env:X".into(),
        idempotency_pointer: Some("/event/id".into()),
    };
    let input = json!({ "event": { "id": "evt_9" } });
    let made = submission("shop", &spec, "d1", input).expect("a key");
    assert_eq!(made.idempotency_key.as_deref(), Some("webhook:shop:evt_9"));
    assert!(submission("shop", &spec, "d1", json!({})).is_err(), "a missing key is refused");
    let spec = WebhookSpec { idempotency_pointer: None, ..spec };
    let made = submission("shop", &spec, "d1", json!({})).expect("a key");
    assert_eq!(made.idempotency_key.as_deref(), Some("webhook:shop:d1"));
}
