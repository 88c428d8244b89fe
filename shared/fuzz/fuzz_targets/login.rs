//! Any body posted to the console's login (reachable without
//! authentication) decodes or is refused cleanly, never a panic; a decoded
//! form is screened, and only a name an account could have is ever looked
//! up or used as a rate-limiter key.
#![no_main]

use aios_shared::login::{decode_form, screen, valid_account_name, Screened, MAX_FORM_BYTES, MAX_PASSWORD_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(form) = decode_form(data) else {
        return;
    };
    assert!(data.len() <= MAX_FORM_BYTES);
    if let Screened::Candidate { name } = screen(&form) {
        assert!(valid_account_name(name));
        assert!(name.len() <= 64 && form.password.len() <= MAX_PASSWORD_BYTES);
    }
});
