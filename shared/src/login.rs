//! The console's login form, before anyone is authenticated: decoding the
//! body and deciding whether it can name an account at all, as pure
//! functions (so they can be fuzzed without the control plane).
//!
//! Everything here is reachable by anyone who reaches the console, so it
//! is bounded: the body's size, the name's and the password's lengths. A
//! name no account can have is refused without a database lookup, and the
//! caller's text never becomes a rate-limiter key ([`screen`]).

/// The largest login body accepted, in bytes.
pub const MAX_FORM_BYTES: usize = 4 * 1024;

/// The longest password checked, in bytes (argon2 hashes the rest for
/// nothing).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// The longest account name.
pub const MAX_NAME_LEN: usize = 64;

/// The login form's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginForm {
    /// Account name, as typed.
    pub name: String,
    /// Password.
    pub password: String,
}

/// Why a login body is not a login form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    /// Larger than [`MAX_FORM_BYTES`].
    #[error("the form is larger than {MAX_FORM_BYTES} bytes")]
    TooLarge,
    /// A field is missing or given twice.
    #[error("the form needs exactly one `{0}`")]
    Field(&'static str),
}

/// Decodes an `application/x-www-form-urlencoded` login body: exactly one
/// `name` and one `password`; other fields are ignored.
pub fn decode_form(body: &[u8]) -> Result<LoginForm, FormError> {
    if body.len() > MAX_FORM_BYTES {
        return Err(FormError::TooLarge);
    }
    let (mut name, mut password) = (None, None);
    for (key, value) in url::form_urlencoded::parse(body) {
        let (slot, field) = match key.as_ref() {
            "name" => (&mut name, "name"),
            "password" => (&mut password, "password"),
            _ => continue,
        };
        if slot.replace(value.into_owned()).is_some() {
            return Err(FormError::Field(field));
        }
    }
    Ok(LoginForm {
        name: name.ok_or(FormError::Field("name"))?,
        password: password.ok_or(FormError::Field("password"))?,
    })
}

/// Whether `name` can be an account's: 1 to [`MAX_NAME_LEN`] of `a-z`,
/// `0-9`, `.`, `_`, `-`.
pub fn valid_account_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// What a login attempt is, before any lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Screened<'a> {
    /// It may name an account: look it up, limited per this name and the
    /// caller's address.
    Candidate {
        /// The name, trimmed.
        name: &'a str,
    },
    /// No account has this name, or the password is longer than any
    /// checked: refused, limited per address only.
    Impossible,
}

/// Screens a login attempt.
pub fn screen(form: &LoginForm) -> Screened<'_> {
    let name = form.name.trim();
    if valid_account_name(name) && form.password.len() <= MAX_PASSWORD_BYTES {
        Screened::Candidate { name }
    } else {
        Screened::Impossible
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_body_decodes_strictly_and_within_bounds() {
        let form = decode_form(b"name=alice&password=p%40ss+word&csrf=x").unwrap();
        assert_eq!(form, LoginForm { name: "alice".into(), password: "p@ss word".into() });
        assert_eq!(decode_form(b"name=a&name=b&password=x"), Err(FormError::Field("name")));
        assert_eq!(decode_form(b"name=a"), Err(FormError::Field("password")));
        assert_eq!(decode_form(&vec![b'a'; MAX_FORM_BYTES + 1]), Err(FormError::TooLarge));
        // Invalid percent-encoding and UTF-8 are replaced, never a panic.
        assert!(decode_form(b"name=%ff%&password=%").is_ok());
    }

    #[test]
    fn only_a_possible_account_name_is_looked_up() {
        let form = |name: &str, password: &str| LoginForm { name: name.into(), password: password.into() };
        assert_eq!(screen(&form(" admin ", "x")), Screened::Candidate { name: "admin" });
        assert_eq!(screen(&form("Admin", "x")), Screened::Impossible);
        assert_eq!(screen(&form("", "x")), Screened::Impossible);
        assert_eq!(screen(&form(&"a".repeat(65), "x")), Screened::Impossible);
        assert_eq!(screen(&form("a", &"x".repeat(MAX_PASSWORD_BYTES + 1))), Screened::Impossible);
    }
}
