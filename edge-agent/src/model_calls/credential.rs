//! A secret an edge holds for someone else: a remote tier's API key, a
//! connector's password, the gateway's token. Loaded from an environment
//! variable or a file named in the configuration (`env:NAME`,
//! `file:/path`), never printed (`Debug` shows `***`), compared in
//! constant time, and redacted from any text that echoes it.

use std::fmt;
use std::path::PathBuf;

/// A secret bearer token. Never printed: `Debug` shows `***` and there is no
/// `Display`.
#[derive(Clone)]
pub struct Credential {
    /// The token.
    secret: String,
}

/// Why a credential could not be loaded. No variant carries the secret.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The reference is neither `env:NAME` nor `file:/path`.
    #[error("credential reference `{0}` must be `env:NAME` or `file:/path`")]
    BadReference(String),
    /// The credential is empty.
    #[error("the credential from `{0}` is empty")]
    Empty(String),
    /// The file could not be read.
    #[error("cannot read the credential file {path}: {source}")]
    File {
        /// The file named by the reference.
        path: PathBuf,
        /// Why reading failed.
        #[source]
        source: std::io::Error,
    },
    /// The credential holds characters that cannot go in an HTTP header.
    #[error("the credential from `{0}` contains characters not allowed in an HTTP header")]
    InvalidCharacters(String),
    /// The environment variable is not set (or not UTF-8).
    #[error("environment variable `{0}` named by the credential reference is not set")]
    MissingEnv(String),
}

impl Credential {
    /// Loads the credential a reference names: `env:NAME` reads an
    /// environment variable, `file:/path` a file (surrounding whitespace,
    /// such as a trailing newline, is dropped).
    pub fn load(reference: &str) -> Result<Credential, CredentialError> {
        let secret = if let Some(name) = reference.strip_prefix("env:") {
            std::env::var(name).map_err(|_| CredentialError::MissingEnv(name.to_owned()))?
        } else if let Some(path) = reference.strip_prefix("file:") {
            let path = PathBuf::from(path);
            std::fs::read_to_string(&path).map_err(|source| CredentialError::File { path, source })?
        } else {
            return Err(CredentialError::BadReference(reference.to_owned()));
        };
        Credential::checked(secret.trim().to_owned(), reference)
    }

    /// A credential from a value already in memory (tests, generated tokens).
    pub fn new(secret: impl Into<String>) -> Result<Credential, CredentialError> {
        Credential::checked(secret.into(), "memory")
    }

    fn checked(secret: String, origin: &str) -> Result<Credential, CredentialError> {
        if secret.is_empty() {
            return Err(CredentialError::Empty(origin.to_owned()));
        }
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(CredentialError::InvalidCharacters(origin.to_owned()));
        }
        Ok(Credential { secret })
    }

    /// The secret itself, for a connector that must send it (an SMTP
    /// password, a bearer header it builds itself). Never log it.
    pub fn expose(&self) -> &str {
        &self.secret
    }

    /// Whether `presented` is this credential, compared in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        let (a, b) = (self.secret.as_bytes(), presented.as_bytes());
        constant_time_eq(a, b)
    }

    /// Replaces every occurrence of the secret in `text` with `***`.
    pub(crate) fn redact(&self, text: &str) -> String {
        text.replace(&self.secret, "***")
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credential(***)")
    }
}

/// Whether `a` equals `b`, in time that depends on their lengths only (a
/// timing side channel must not reveal how much of a guess was right).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_load_from_env_and_file_and_never_print() {
        std::env::set_var("AIOS_TEST_CLOUD_CREDENTIAL", "sk-test-123");
        let from_env = Credential::load("env:AIOS_TEST_CLOUD_CREDENTIAL").unwrap();
        assert_eq!(format!("{from_env:?}"), "Credential(***)");
        assert!(from_env.matches("sk-test-123") && !from_env.matches("sk-test-124") && !from_env.matches("sk"));
        assert_eq!(from_env.redact("bad key sk-test-123 given"), "bad key *** given");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "sk-file-456\n").unwrap();
        let from_file = Credential::load(&format!("file:{}", path.display())).unwrap();
        assert!(from_file.matches("sk-file-456"));
        let errors = [
            Credential::load("AIOS_TEST_CLOUD_CREDENTIAL").unwrap_err(),
            Credential::load("env:AIOS_TEST_CLOUD_CREDENTIAL_MISSING").unwrap_err(),
            Credential::load("file:/nonexistent/aios-key").unwrap_err(),
            Credential::new("two words").unwrap_err(),
            Credential::new("").unwrap_err(),
        ];
        let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(messages[0], "credential reference `AIOS_TEST_CLOUD_CREDENTIAL` must be `env:NAME` or `file:/path`");
        assert_eq!(
            messages[1],
            "environment variable `AIOS_TEST_CLOUD_CREDENTIAL_MISSING` named by the credential reference is not set"
        );
        assert!(messages[2].starts_with("cannot read the credential file /nonexistent/aios-key: "), "{}", messages[2]);
        assert_eq!(messages[3], "the credential from `memory` contains characters not allowed in an HTTP header");
        assert_eq!(messages[4], "the credential from `memory` is empty");
    }
}
