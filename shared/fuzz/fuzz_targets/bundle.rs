//! Arbitrary bytes as a signed bundle (as stored or served) and as a bundle
//! file: refused cleanly, never accepted without the right signature.
#![no_main]

use aios_shared::bundle::{BundleSpec, SignedBundle};
use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = SigningKey::from_bytes(&[42; 32]).verifying_key();
    if let Ok(signed) = serde_json::from_slice::<SignedBundle>(data) {
        assert!(signed.open(&key).is_err(), "no input can carry a valid signature of this key");
        let _ = signed.offer(&key, None, 0);
    }
    let forged = SignedBundle { body: data.to_vec(), signature: vec![0; 64] };
    assert!(forged.open(&key).is_err());
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(spec) = BundleSpec::from_toml(text) {
            let _ = spec.into_body(0, 0);
        }
    }
});
