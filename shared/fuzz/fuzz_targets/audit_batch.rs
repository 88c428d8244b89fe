//! Arbitrary frame bodies decoded as audit batches and run through chain
//! verification: a clean verdict, never a panic.
#![no_main]

use aios_shared::audit::{verify_chain, ChainHead, ChainVerifier};
use aios_shared::wire::{decode_frame_body, Frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Frame::AuditBatch(events)) = decode_frame_body(data) {
        let mut verifier = ChainVerifier::new("edge-fuzz", None, ChainHead::EMPTY);
        for event in &events {
            if verifier.push(event).is_err() {
                verifier.skip_to(event);
            }
        }
        let _ = verify_chain("edge-fuzz", None, &events, events.len() as u64);
    }
});
