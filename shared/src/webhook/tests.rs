//! Tests of the signature header parser and verification.

use super::*;

const SECRET: &[u8] = b"whsec_test";
const NOW: i64 = 1_800_000_000;

#[test]
fn a_signed_body_verifies_and_any_change_does_not() {
    let body = br#"{"order":"o-1","amount":20}"#;
    let header = sign(SECRET, NOW, body);
    assert!(verify(SECRET, &header, body, NOW + 10).is_ok());
    assert_eq!(verify(SECRET, &header, br#"{"order":"o-1","amount":90}"#, NOW), Err(SignatureError::Mismatch));
    assert_eq!(verify(b"another secret", &header, body, NOW), Err(SignatureError::Mismatch));
    // The timestamp is signed too: moving it breaks the MAC.
    let moved = header.replace(&format!("t={NOW}"), &format!("t={}", NOW + 1));
    assert_eq!(verify(SECRET, &moved, body, NOW), Err(SignatureError::Mismatch));
}

#[test]
fn stale_signatures_are_refused() {
    let body = b"{}";
    let header = sign(SECRET, NOW, body);
    assert_eq!(verify(SECRET, &header, body, NOW + TOLERANCE_S + 1), Err(SignatureError::Stale(TOLERANCE_S + 1)));
    assert_eq!(verify(SECRET, &header, body, NOW - TOLERANCE_S - 1), Err(SignatureError::Stale(-TOLERANCE_S - 1)));
}

/// Every way of rewriting a valid header that the old lenient parser
/// accepted is now refused before the MAC is even checked.
#[test]
fn only_the_canonical_form_parses() {
    let good = sign(SECRET, NOW, b"{}");
    let v1 = good.split_once(",v1=").expect("two parts").1.to_owned();
    let other = "0".repeat(64);
    let refused = [
        String::new(),
        format!("v1={v1}"),
        format!("t={NOW}"),
        format!("t={NOW},"),
        format!("t={NOW},v1={v1},x=1"),
        format!("x=1,t={NOW},v1={v1}"),
        format!("t={NOW}, v1={v1}"),
        format!(" t={NOW},v1={v1}"),
        format!("t={NOW},v1={v1} "),
        format!("t={NOW},v1={v1},v1={v1}"),
        format!("t={NOW},t={NOW},v1={v1}"),
        format!("v1={v1},t={NOW}"),
        format!("t=0{NOW},v1={v1}"),
        format!("t=+{NOW},v1={v1}"),
        format!("t=-{NOW},v1={v1}"),
        format!("t=99999999999999999999,v1={v1}"),
        format!("t={NOW},v1={}", v1.to_uppercase()),
        format!("t={NOW},v1={}", &v1[..62]),
        format!("t={NOW},v1={v1}00"),
        format!("t={NOW},v1=zz{}", &v1[2..]),
        format!("t={NOW},v1={v1},v1={other},v1={}", "1".repeat(64)),
        format!("T={NOW},v1={v1}"),
        format!("t={NOW},V1={v1}"),
        format!("t={NOW},v0={v1}"),
    ];
    for header in &refused {
        assert!(
            matches!(Signature::parse(header), Err(SignatureError::Malformed(_))),
            "{header:?} parsed as {:?}",
            Signature::parse(header)
        );
    }
    assert_eq!(Signature::parse(&good).map(|s| s.t_s), Ok(NOW));
    assert_eq!(Signature::parse(&format!("t=0,v1={other}")).map(|s| s.t_s), Ok(0));
}

#[test]
fn a_rotating_sender_may_sign_with_two_secrets_in_either_order() {
    let body = b"{}";
    let old = sign(b"old", NOW, body);
    let new = sign(SECRET, NOW, body);
    let old_mac = old.split_once(',').expect("two parts").1;
    let new_mac = new.split_once(',').expect("two parts").1;
    let both = format!("t={NOW},{old_mac},{new_mac}");
    let swapped = format!("t={NOW},{new_mac},{old_mac}");
    let a = verify(SECRET, &both, body, NOW).expect("verifies");
    let b = verify(SECRET, &swapped, body, NOW).expect("verifies");
    assert_eq!(a.delivery_key(body), b.delivery_key(body));
    assert_eq!(a.delivery_key(body), verify(SECRET, &new, body, NOW).expect("verifies").delivery_key(body));
}

#[test]
fn the_delivery_key_is_the_signed_content() {
    let body = br#"{"a":1}"#;
    let key = |t_s: i64, body: &[u8]| Signature { t_s, macs: Vec::new() }.delivery_key(body);
    assert_eq!(key(NOW, body), hex::encode(Sha256::digest(format!("{NOW}.{{\"a\":1}}").as_bytes())));
    assert_ne!(key(NOW, body), key(NOW + 1, body));
    assert_ne!(key(NOW, body), key(NOW, b"{}"));
}
