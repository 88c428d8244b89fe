//! Any header and body fed to the webhook signature check (reachable
//! without authentication) is refused cleanly or verifies; never a panic.
//! A header that parses re-checks the same way.
#![no_main]

use aios_shared::webhook::{verify, Signature};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.first().copied().unwrap_or(0) as usize % (data.len() + 1);
    let (header, body) = data.split_at(split);
    let Ok(header) = std::str::from_utf8(header) else { return };
    let now = 1_800_000_000;
    let parsed = Signature::parse(header);
    let checked = verify(b"whsec_fuzz", header, body, now);
    assert_eq!(
        parsed.is_err(),
        checked.as_ref().is_err_and(|err| matches!(err, aios_shared::webhook::SignatureError::Malformed(_)))
    );
    if let Ok(signature) = parsed {
        assert!(!signature.macs.is_empty() && signature.macs.len() <= aios_shared::webhook::MAX_SIGNATURES);
        let _ = signature.delivery_key(body);
    }
});
