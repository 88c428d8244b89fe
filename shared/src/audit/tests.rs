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

/// A chain as an edge writes it: a checkpoint after every
/// [`CHECKPOINT_EVERY`] events.
fn edge_chain(n: u64) -> Vec<AuditEvent> {
    let mut head = ChainHead::EMPTY;
    let mut events = Vec::new();
    while head.seq < n {
        let event = AuditEvent::next(EDGE, head, 1_000, kinds::DEBUG, format!("{{\"at\":{}}}", head.seq));
        head = event.head();
        events.push(event);
        if head.seq.is_multiple_of(CHECKPOINT_EVERY) {
            let checkpoint = AuditEvent::checkpoint(EDGE, head, 1_000, &key());
            head = checkpoint.head();
            events.push(checkpoint);
        }
    }
    events
}

/// Issue 24, finding 7: someone who can write the stored chain edits an
/// event, turns the checkpoint after it into an ordinary event and
/// recomputes every hash from there. Every link and hash checks out, but
/// the run without a signed checkpoint is too long. A chain that never had
/// checkpoints fails the same way; without the edge's key (the operator
/// log) there is no such rule.
#[test]
fn a_chain_whose_checkpoint_was_rewritten_fails() {
    let events = edge_chain(2500);
    assert_eq!(verify(&events, events.len() as u64), vec![]);
    let checkpoint = events.iter().position(|e| e.seq == 2001).unwrap();
    assert_eq!(events[checkpoint].kind, kinds::CHECKPOINT);
    let mut forged = events[..checkpoint - 1].to_vec();
    let mut head = forged.last().unwrap().head();
    for event in &events[checkpoint - 1..] {
        let (kind, payload) = match event.seq {
            2000 => (kinds::DEBUG, "{\"at\":\"edited\"}".to_owned()),
            2001 => (kinds::DEBUG, "{\"renamed\":true}".to_owned()),
            _ => (event.kind.as_str(), event.payload.clone()),
        };
        let rewritten = AuditEvent::next(EDGE, head, event.ts_ms, kind, payload);
        head = rewritten.head();
        forged.push(rewritten);
    }
    let breaks = verify(&forged, forged.len() as u64);
    assert_eq!(breaks, vec![ChainBreak::Unsigned { seq: 2002, since: 1001 }], "{breaks:?}");

    let unsigned: Vec<AuditEvent> = {
        let mut head = ChainHead::EMPTY;
        (0..1500)
            .map(|i| {
                let event = AuditEvent::next(EDGE, head, 1_000, kinds::DEBUG, format!("{{\"i\":{i}}}"));
                head = event.head();
                event
            })
            .collect()
    };
    assert_eq!(verify(&unsigned, 1500), vec![ChainBreak::Unsigned { seq: 1001, since: 0 }]);
    assert_eq!(verify_chain(EDGE, None, &unsigned, 1500), vec![], "no key, no checkpoint rule");

    // Incrementally, from a stored head and its last checkpoint, as ingest does.
    let mut verifier =
        ChainVerifier::new(EDGE, Some(key().verifying_key()), forged[1500].head()).after_checkpoint(1001);
    let mut found = Vec::new();
    for event in &forged[1501..] {
        if let Err(chain_break) = verifier.push(event) {
            found.push(chain_break);
            verifier.skip_to(event);
        }
    }
    assert_eq!(found, vec![ChainBreak::Unsigned { seq: 2002, since: 1001 }]);
}
