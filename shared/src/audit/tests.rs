use ed25519_dalek::SigningKey;
use proptest::prelude::*;

use super::*;

const EDGE: &str = "edge-under-test";

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

/// A chain of `n` events with a checkpoint every fifth event.
fn chain(n: usize) -> Vec<AuditEvent> {
    let mut head = ChainHead::EMPTY;
    let mut events = Vec::with_capacity(n);
    for i in 0..n {
        let event = if i % 5 == 4 {
            AuditEvent::checkpoint(EDGE, head, 1_000 + i as i64, &key())
        } else {
            AuditEvent::next(EDGE, head, 1_000 + i as i64, kinds::DEBUG, format!("{{\"i\":{i}}}"))
        };
        head = event.head();
        events.push(event);
    }
    events
}

fn verify(events: &[AuditEvent], acked: u64) -> Vec<ChainBreak> {
    verify_chain(EDGE, Some(key().verifying_key()), events, acked)
}

#[test]
fn intact_chain_verifies() {
    let events = chain(50);
    assert_eq!(verify(&events, 50), vec![]);
    // Every prefix verifies against its own length.
    for len in 0..events.len() {
        assert_eq!(verify(&events[..len], len as u64), vec![], "prefix {len}");
    }
}

#[test]
fn checkpoint_signed_by_another_key_is_refused() {
    let mut head = ChainHead::EMPTY;
    let first = AuditEvent::next(EDGE, head, 1, kinds::DEBUG, "{}".into());
    head = first.head();
    let forged = AuditEvent::checkpoint(EDGE, head, 2, &SigningKey::from_bytes(&[9; 32]));
    let breaks = verify(&[first, forged], 2);
    assert!(matches!(breaks.as_slice(), [ChainBreak::BadCheckpoint { seq: 2, .. }]), "{breaks:?}");
}

#[test]
fn recomputed_hashes_do_not_hide_an_edit_before_a_checkpoint() {
    // An attacker edits event 2 and recomputes every later hash: the chain
    // links again, but the checkpoint signature no longer matches the head.
    let mut events = chain(5);
    events[1].payload = "{\"i\":\"forged\"}".into();
    let mut head = ChainHead { seq: 1, hash: events[0].hash };
    for event in &mut events[1..] {
        event.prev_hash = head.hash;
        event.hash = event_hash(EDGE, event.seq, event.ts_ms, &event.kind, &event.payload, &event.prev_hash);
        head = event.head();
    }
    let breaks = verify(&events, 5);
    assert!(matches!(breaks.as_slice(), [ChainBreak::BadCheckpoint { seq: 5, .. }]), "{breaks:?}");
}

#[derive(Debug, Clone)]
enum Tamper {
    Edit { idx: usize },
    Delete { idx: usize },
    Swap { idx: usize },
    Truncate { keep: usize },
    Retime { idx: usize },
}

fn tamper() -> impl Strategy<Value = (usize, Tamper)> {
    (2usize..40).prop_flat_map(|n| {
        let op = prop_oneof![
            (0..n).prop_map(|idx| Tamper::Edit { idx }),
            (0..n).prop_map(|idx| Tamper::Delete { idx }),
            (0..n - 1).prop_map(|idx| Tamper::Swap { idx }),
            (0..n).prop_map(|keep| Tamper::Truncate { keep }),
            (0..n).prop_map(|idx| Tamper::Retime { idx }),
        ];
        (Just(n), op)
    })
}

proptest! {
    #[test]
    fn any_tampering_is_detected((n, op) in tamper()) {
        let mut events = chain(n);
        match op {
            Tamper::Edit { idx } => events[idx].payload.push(' '),
            Tamper::Delete { idx } => { events.remove(idx); }
            Tamper::Swap { idx } => events.swap(idx, idx + 1),
            Tamper::Truncate { keep } => events.truncate(keep),
            Tamper::Retime { idx } => events[idx].ts_ms += 1,
        }
        prop_assert!(!verify(&events, n as u64).is_empty());
    }
}
