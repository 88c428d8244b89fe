//! Operator accounts, their roles, API tokens and console sessions, and the
//! control plane's own hash-chained log of what operators did.
//!
//! Passwords are stored as argon2id PHC strings. API tokens and session ids
//! are random and stored only as SHA-256 hashes, so a copy of the database
//! lets nobody in. The role is always read from the database on each
//! request; nothing the client sends can name one.
//!
//! Every action an operator takes through the console or the admin API is
//! appended to `operator_events`, a chain built with the same hashing as an
//! edge's audit log (`aios_shared::audit`), under the chain id
//! [`OPERATOR_CHAIN`]; the audit page verifies it like an edge's.

use std::fmt;
use std::str::FromStr;

use aios_daemon::chain::ChainTable;
use aios_daemon::db::DbError;
use aios_shared::audit::{verify_chain, AuditEvent, CHECKPOINT_EVERY};
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use ed25519_dalek::{SigningKey, VerifyingKey};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::CpStore;

/// Where the operator log is stored.
const OPERATOR_LOG: ChainTable = aios_daemon::chain_table!("operator_events");

/// The chain id of the operator log (edges' ids are UUIDs, so no clash).
pub const OPERATOR_CHAIN: &str = "control-plane";

/// The account name the admin token file acts as.
pub const ADMIN_TOKEN_ACCOUNT: &str = "admin-token";

/// Shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 12;

/// What an account may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything.
    Admin,
    /// Approve, reject, submit tasks, work the dead-letter queue.
    Operator,
    /// Read the audit log and tasks, verify chains.
    Auditor,
    /// Read where work stands; no contents of what agents handle
    /// ([`crate::redact`]).
    Viewer,
}

/// A class of actions, checked against a [`Role`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Fleet, tasks, approvals, policies, metrics: where work stands.
    Read,
    /// What agents handled: task inputs and results, approvals' arguments,
    /// reasoning and sources, audit payloads, agent transcripts.
    Contents,
    /// The audit log and its verification.
    Audit,
    /// Approve, reject, submit, dead-letter retries and discards.
    Operate,
    /// Enrolment tokens, revocation, policy publishing, kill switch, accounts.
    Administer,
}

impl Role {
    /// Whether this role may take actions of `permission`'s class.
    pub fn allows(self, permission: Permission) -> bool {
        matches!(
            (self, permission),
            (Role::Admin, _)
                | (_, Permission::Read)
                | (Role::Operator, Permission::Operate | Permission::Contents)
                | (Role::Auditor, Permission::Audit | Permission::Contents)
        )
    }

    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Auditor => "auditor",
            Role::Viewer => "viewer",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = AccountError;

    fn from_str(s: &str) -> Result<Role, AccountError> {
        match s {
            "admin" => Ok(Role::Admin),
            "operator" => Ok(Role::Operator),
            "auditor" => Ok(Role::Auditor),
            "viewer" => Ok(Role::Viewer),
            other => Err(AccountError::Invalid(format!(
                "unknown role `{other}` (expected admin, operator, auditor or viewer)"
            ))),
        }
    }
}

/// Why an account operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// The input is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Who is making a request, as read from the database.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The account name.
    pub account: String,
    /// Its role now.
    pub role: Role,
    /// The session's CSRF token when authenticated by a console cookie.
    pub csrf: Option<String>,
}

/// An account as listed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountView {
    /// Login name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// When it was created.
    pub created_ms: i64,
    /// Live API tokens.
    pub tokens: u64,
}

/// One entry of the operator log.
#[derive(Debug, Clone, Serialize)]
pub struct OperatorEvent {
    /// Position in the chain.
    pub seq: u64,
    /// When.
    pub ts_ms: i64,
    /// What (`console.login`, `api.action`, ...).
    pub kind: String,
    /// Details: account, role, method, path, status.
    pub payload: serde_json::Value,
}

/// Checks a login name: 1 to 64 of `a-z 0-9 . _ -`.
pub fn check_name(name: &str) -> Result<(), AccountError> {
    let ok = aios_shared::login::valid_account_name(name) && name != ADMIN_TOKEN_ACCOUNT;
    if ok {
        Ok(())
    } else {
        Err(AccountError::Invalid(format!(
            "invalid account name `{name}`: use 1 to 64 of a-z, 0-9, '.', '_', '-' (and not `{ADMIN_TOKEN_ACCOUNT}`)"
        )))
    }
}

/// Hashes a password with argon2id and a random salt (slow on purpose:
/// call it off the async workers).
pub fn hash_password(password: &str) -> Result<String, AccountError> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(AccountError::Invalid(format!("a password needs at least {MIN_PASSWORD_LEN} characters")));
    }
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|err| AccountError::Invalid(format!("cannot hash the password: {err}")))
}

/// Checks a password against a stored hash (constant time in the password).
pub fn verify_password(stored: &str, password: &str) -> bool {
    PasswordHash::new(stored).is_ok_and(|hash| Argon2::default().verify_password(password.as_bytes(), &hash).is_ok())
}

/// Login checks waiting for the verifier thread, at most; more are refused
/// as busy.
const VERIFY_QUEUE: usize = 32;

type VerifyJob = (Option<String>, String, tokio::sync::oneshot::Sender<bool>);

/// Checks a login's password (against the decoy when the account does not
/// exist) on one thread of its own, one at a time: an Argon2 check takes
/// 19 MiB, and a login flood must not hold that much on every worker
/// thread. `None`: the queue is full, try later.
pub async fn verify_login(stored: Option<String>, password: String) -> Option<bool> {
    static VERIFIER: std::sync::OnceLock<std::sync::mpsc::SyncSender<VerifyJob>> = std::sync::OnceLock::new();
    let queue = VERIFIER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<VerifyJob>(VERIFY_QUEUE);
        std::thread::Builder::new()
            .name("aios-verify".into())
            .spawn(move || {
                // The Argon2 memory, allocated once and reused by every check.
                let mut blocks: Vec<argon2::Block> = Vec::new();
                for (stored, password, reply) in rx {
                    let hash = stored.as_deref().unwrap_or_else(|| decoy_hash());
                    let _ = reply.send(verify_with_memory(hash, &password, &mut blocks) && stored.is_some());
                }
            })
            .expect("the verifier thread starts");
        tx
    });
    let (reply, verdict) = tokio::sync::oneshot::channel();
    queue.try_send((stored, password, reply)).ok()?;
    verdict.await.ok()
}

/// [`verify_password`] with Argon2's memory in `blocks` (grown once to the
/// hash's parameters), so that checks allocate nothing; the output is
/// compared in constant time.
fn verify_with_memory(stored: &str, password: &str, blocks: &mut Vec<argon2::Block>) -> bool {
    let Ok(hash) = PasswordHash::new(stored) else { return false };
    let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else { return false };
    let (Ok(params), Ok(algorithm)) = (argon2::Params::try_from(&hash), argon2::Algorithm::try_from(hash.algorithm))
    else {
        return false;
    };
    let Ok(version) = hash.version.map(argon2::Version::try_from).transpose() else { return false };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else { return false };
    blocks.resize(params.block_count(), argon2::Block::default());
    let mut out = vec![0u8; expected.len()];
    Argon2::new(algorithm, version.unwrap_or_default(), params)
        .hash_password_into_with_memory(password.as_bytes(), salt, &mut out, &mut blocks[..])
        .is_ok()
        && argon2::password_hash::Output::new(&out).is_ok_and(|computed| computed == expected)
}

/// A hash to verify against when the account does not exist, so that a
/// login for an unknown name takes as long as one with a wrong password.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password("decoy-password-never-valid").expect("a long enough literal"))
}

/// A new random secret (API token or session id) with a readable prefix.
pub fn new_secret(prefix: &str) -> String {
    format!("{prefix}{}", hex::encode(rand::random::<[u8; 32]>()))
}

/// The stored form of a token or session id.
pub fn secret_hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.trim().as_bytes()).to_vec()
}

/// A random password for generated accounts: 20 characters that are easy to
/// read aloud (no 0/O, 1/l/I).
pub fn generate_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let bytes: [u8; 20] = rand::random();
    bytes.iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect()
}

impl CpStore {
    /// Creates an account; refuses a name already taken.
    pub async fn add_account(
        &self,
        name: String,
        role: Role,
        password_hash: String,
        now_ms: i64,
    ) -> Result<(), AccountError> {
        check_name(&name)?;
        let added = self
            .db
            .write(move |c| {
                Ok(c.execute(
                    "INSERT OR IGNORE INTO accounts VALUES (?1, ?2, ?3, ?4, ?4)",
                    params![name, role.as_str(), password_hash, now_ms],
                )? == 1)
            })
            .await?;
        if added {
            Ok(())
        } else {
            Err(AccountError::Invalid("an account with that name exists".into()))
        }
    }

    /// Removes an account with its tokens and sessions; false if none.
    pub async fn remove_account(&self, name: String) -> Result<bool, DbError> {
        self.db
            .write(move |c| {
                c.execute("DELETE FROM api_tokens WHERE account = ?1", [&name])?;
                c.execute("DELETE FROM sessions WHERE account = ?1", [&name])?;
                Ok(c.execute("DELETE FROM accounts WHERE name = ?1", [&name])? == 1)
            })
            .await
    }

    /// Replaces a password and ends the account's sessions; false if no
    /// such account.
    pub async fn set_password(&self, name: String, password_hash: String, now_ms: i64) -> Result<bool, DbError> {
        self.db
            .write(move |c| {
                let changed = c.execute(
                    "UPDATE accounts SET password_hash = ?2, password_set_ms = ?3 WHERE name = ?1",
                    params![name, password_hash, now_ms],
                )? == 1;
                c.execute("DELETE FROM sessions WHERE account = ?1", [&name])?;
                Ok(changed)
            })
            .await
    }

    /// Every account, by name.
    pub async fn accounts(&self, now_ms: i64) -> Result<Vec<AccountView>, DbError> {
        self.db
            .read(move |c| {
                let mut stmt = c.prepare(
                    "SELECT name, role, created_ms,
                        (SELECT COUNT(*) FROM api_tokens t WHERE t.account = a.name AND t.expires_ms > ?1)
                     FROM accounts a ORDER BY name",
                )?;
                let rows = stmt.query_map([now_ms], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get(2)?, r.get::<_, i64>(3)?))
                })?;
                let mut out = Vec::new();
                for row in rows {
                    let (name, role, created_ms, tokens) = row?;
                    out.push(AccountView { name, role: parse_role(&role)?, created_ms, tokens: tokens as u64 });
                }
                Ok(out)
            })
            .await
    }

    /// The stored password hash and role of an account.
    pub async fn credentials(&self, name: String) -> Result<Option<(String, Role)>, DbError> {
        self.db
            .read(move |c| {
                let row: Option<(String, String)> = c
                    .query_row("SELECT password_hash, role FROM accounts WHERE name = ?1", [&name], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .optional()?;
                row.map(|(hash, role)| Ok((hash, parse_role(&role)?))).transpose()
            })
            .await
    }

    /// Stores a new API token for an account; false if no such account.
    pub async fn add_api_token(
        &self,
        account: String,
        hash: Vec<u8>,
        label: String,
        now_ms: i64,
        expires_ms: i64,
    ) -> Result<bool, DbError> {
        self.db
            .write(move |c| {
                let exists =
                    c.query_row("SELECT 1 FROM accounts WHERE name = ?1", [&account], |_| Ok(())).optional()?;
                if exists.is_none() {
                    return Ok(false);
                }
                c.execute(
                    "INSERT INTO api_tokens VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![hash, account, label, now_ms, expires_ms],
                )?;
                Ok(true)
            })
            .await
    }

    /// The account behind an unexpired API token.
    pub async fn principal_by_token(&self, hash: Vec<u8>, now_ms: i64) -> Result<Option<Principal>, DbError> {
        self.db
            .read(move |c| {
                let row: Option<(String, String)> = c
                    .query_row(
                        "SELECT a.name, a.role FROM api_tokens t JOIN accounts a ON a.name = t.account
                         WHERE t.hash = ?1 AND t.expires_ms > ?2",
                        params![hash, now_ms],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                row.map(|(account, role)| Ok(Principal { account, role: parse_role(&role)?, csrf: None })).transpose()
            })
            .await
    }

    /// Opens a console session.
    pub async fn add_session(
        &self,
        hash: Vec<u8>,
        account: String,
        csrf: String,
        now_ms: i64,
        expires_ms: i64,
    ) -> Result<(), DbError> {
        self.db
            .write(move |c| {
                c.execute("DELETE FROM sessions WHERE expires_ms <= ?1", [now_ms])?;
                c.execute(
                    "INSERT INTO sessions VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![hash, account, csrf, now_ms, expires_ms],
                )?;
                Ok(())
            })
            .await
    }

    /// The account behind an unexpired session, with its CSRF token.
    pub async fn principal_by_session(&self, hash: Vec<u8>, now_ms: i64) -> Result<Option<Principal>, DbError> {
        self.db
            .read(move |c| {
                let row: Option<(String, String, String)> = c
                    .query_row(
                        "SELECT a.name, a.role, s.csrf FROM sessions s JOIN accounts a ON a.name = s.account
                         WHERE s.hash = ?1 AND s.expires_ms > ?2",
                        params![hash, now_ms],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .optional()?;
                row.map(|(account, role, csrf)| Ok(Principal { account, role: parse_role(&role)?, csrf: Some(csrf) }))
                    .transpose()
            })
            .await
    }

    /// Ends a session.
    pub async fn end_session(&self, hash: Vec<u8>) -> Result<(), DbError> {
        self.db
            .write(move |c| {
                c.execute("DELETE FROM sessions WHERE hash = ?1", [hash])?;
                Ok(())
            })
            .await
    }

    /// Appends to the operator log.
    /// Appends to the operator log, and after every `CHECKPOINT_EVERY`
    /// events a checkpoint signed with `key` (the control plane's signing
    /// key), so the log is held to the same rule as an edge's chain.
    pub async fn record_operator_event(
        &self,
        kind: &'static str,
        payload: serde_json::Value,
        now_ms: i64,
        key: &SigningKey,
    ) -> Result<u64, DbError> {
        let key = key.clone();
        self.db
            .write(move |c| {
                let head = OPERATOR_LOG.head(c, None)?;
                let event = AuditEvent::next(OPERATOR_CHAIN, head, now_ms, kind, payload.to_string());
                OPERATOR_LOG.insert(c, None, &event, now_ms)?;
                if event.seq.is_multiple_of(CHECKPOINT_EVERY) {
                    let checkpoint = AuditEvent::checkpoint(OPERATOR_CHAIN, event.head(), now_ms, &key);
                    OPERATOR_LOG.insert(c, None, &checkpoint, now_ms)?;
                }
                Ok(event.seq)
            })
            .await
    }

    /// The newest `limit` operator events, newest first.
    pub async fn operator_events(&self, limit: usize) -> Result<Vec<OperatorEvent>, DbError> {
        self.db
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT seq, ts_ms, kind, payload FROM operator_events ORDER BY seq DESC LIMIT ?1",
                )?;
                let rows = stmt.query_map([limit as i64], |r| {
                    Ok(OperatorEvent {
                        seq: r.get::<_, i64>(0)? as u64,
                        ts_ms: r.get(1)?,
                        kind: r.get(2)?,
                        payload: serde_json::from_str(&r.get::<_, String>(3)?).unwrap_or_default(),
                    })
                })?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await
    }

    /// Verifies the whole operator log against the control plane's key:
    /// its length and any breaks (a checkpoint missing or not signed by
    /// `key` included).
    /// Verifies the operator log; its checkpoints are signed by the bundle
    /// key in force when each was written, one of `keys`.
    pub async fn verify_operator_log(&self, keys: Vec<VerifyingKey>) -> Result<(u64, Vec<String>), DbError> {
        self.db.read(move |c| verify_operator_log(c, &keys)).await
    }
}

fn verify_operator_log(c: &Connection, keys: &[VerifyingKey]) -> Result<(u64, Vec<String>), DbError> {
    let events = OPERATOR_LOG.load_all(c, None)?;
    // Verified once per key: a break is real only if every key finds it (a
    // checkpoint made before a rotation fails under the later keys only).
    let mut breaks: Option<Vec<String>> = None;
    for key in keys {
        let found: Vec<String> =
            verify_chain(OPERATOR_CHAIN, Some(*key), &events, 0).iter().map(ToString::to_string).collect();
        breaks = Some(match breaks {
            None => found,
            Some(before) => before.into_iter().filter(|b| found.contains(b)).collect(),
        });
    }
    Ok((events.len() as u64, breaks.unwrap_or_default()))
}

fn parse_role(role: &str) -> Result<Role, DbError> {
    role.parse().map_err(|err: AccountError| DbError::Corrupt(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_allow_exactly_their_permissions() {
        use Permission::*;
        let table = [
            (Role::Admin, [true, true, true, true, true]),
            (Role::Operator, [true, true, false, true, false]),
            (Role::Auditor, [true, true, true, false, false]),
            (Role::Viewer, [true, false, false, false, false]),
        ];
        for (role, expected) in table {
            let got = [Read, Contents, Audit, Operate, Administer].map(|p| role.allows(p));
            assert_eq!(got, expected, "{role}");
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
        }
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn passwords_verify_only_themselves() {
        let hash = hash_password("correct horse battery").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password(&hash, "correct horse battery"));
        assert!(!verify_password(&hash, "correct horse batterY"));
        assert!(!verify_password("not a phc string", "correct horse battery"));
        assert!(hash_password("short").is_err());
        let mut blocks = Vec::new();
        assert!(verify_with_memory(&hash, "correct horse battery", &mut blocks));
        assert_eq!(blocks.len(), 19 * 1024, "Argon2's default memory, kept for the next check");
        assert!(!verify_with_memory(&hash, "correct horse batterY", &mut blocks));
        assert!(!verify_with_memory("not a phc string", "correct horse battery", &mut blocks));
    }

    #[tokio::test]
    async fn logins_are_checked_on_the_verifier_thread() {
        let hash = hash_password("correct horse battery").unwrap();
        assert_eq!(verify_login(Some(hash.clone()), "correct horse battery".into()).await, Some(true));
        assert_eq!(verify_login(Some(hash), "wrong".into()).await, Some(false));
        assert_eq!(verify_login(None, "correct horse battery".into()).await, Some(false), "the decoy never passes");
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("ops.alice-2").is_ok());
        for bad in ["", "Alice", "a b", "x".repeat(65).as_str(), ADMIN_TOKEN_ACCOUNT, "a/b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn the_operator_log_is_a_verifiable_chain() {
        let dir = tempfile::tempdir().unwrap();
        let store = CpStore::open(dir.path()).unwrap();
        let key = SigningKey::from_bytes(&[3; 32]);
        for n in 0..3 {
            store.record_operator_event("api.action", serde_json::json!({ "n": n }), 1000 + n, &key).await.unwrap();
        }
        assert_eq!(store.verify_operator_log(vec![key.verifying_key()]).await.unwrap(), (3, vec![]));
        store
            .db
            .write(|c| {
                c.execute("UPDATE operator_events SET payload = '{\"n\":9}' WHERE seq = 2", [])?;
                Ok(())
            })
            .await
            .unwrap();
        let (count, breaks) = store.verify_operator_log(vec![key.verifying_key()]).await.unwrap();
        assert_eq!(count, 3);
        assert!(!breaks.is_empty(), "an edited entry must be found");
    }

    /// The bundle key signs the operator log's checkpoints; across a key
    /// rotation each checkpoint verifies with the key of its time, and the
    /// log verifies against all of them, not against either alone.
    #[tokio::test]
    async fn the_operator_log_verifies_across_a_key_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let store = CpStore::open(dir.path()).unwrap();
        let (old, new) = (SigningKey::from_bytes(&[3; 32]), SigningKey::from_bytes(&[5; 32]));
        for n in 0..2100 {
            let key = if n < 1500 { &old } else { &new };
            store.record_operator_event("api.action", serde_json::json!({ "n": n }), 1000, key).await.unwrap();
        }
        let both = vec![old.verifying_key(), new.verifying_key()];
        assert_eq!(store.verify_operator_log(both).await.unwrap(), (2102, vec![]));
        for alone in [old.verifying_key(), new.verifying_key()] {
            let (_, breaks) = store.verify_operator_log(vec![alone]).await.unwrap();
            assert!(!breaks.is_empty(), "one key alone cannot verify both checkpoints");
        }
    }

    /// Issue 24, finding 7, for the operator log: signed checkpoints every
    /// `CHECKPOINT_EVERY` entries; renaming one and recomputing every hash
    /// after it is caught, and so is a checkpoint signed by another key.
    #[tokio::test]
    async fn the_operator_log_is_signed() {
        let dir = tempfile::tempdir().unwrap();
        let store = CpStore::open(dir.path()).unwrap();
        let key = SigningKey::from_bytes(&[3; 32]);
        for n in 0..2100 {
            store.record_operator_event("api.action", serde_json::json!({ "n": n }), 1000, &key).await.unwrap();
        }
        let (count, breaks) = store.verify_operator_log(vec![key.verifying_key()]).await.unwrap();
        assert_eq!((count, breaks), (2102, vec![]), "two signed checkpoints");
        let other = SigningKey::from_bytes(&[4; 32]).verifying_key();
        let (_, breaks) = store.verify_operator_log(vec![other]).await.unwrap();
        assert!(breaks.iter().any(|b| b.contains("checkpoint")), "{breaks:?}");
        // Rename the first checkpoint and rebuild the chain after it.
        store
            .db
            .write(|c| {
                let events = OPERATOR_LOG.load_all(c, None)?;
                c.execute("DELETE FROM operator_events WHERE seq >= 1001", [])?;
                let mut head = events[999].head();
                for event in &events[1000..] {
                    let kind = if event.seq == 1001 { "api.action" } else { event.kind.as_str() };
                    let rebuilt = AuditEvent::next(OPERATOR_CHAIN, head, event.ts_ms, kind, event.payload.clone());
                    OPERATOR_LOG.insert(c, None, &rebuilt, event.ts_ms)?;
                    head = rebuilt.head();
                }
                Ok(())
            })
            .await
            .unwrap();
        let (_, breaks) = store.verify_operator_log(vec![key.verifying_key()]).await.unwrap();
        assert!(breaks.iter().any(|b| b.contains("event 1001") && b.contains("after the last signed checkpoint (0)")));
        assert!(breaks.iter().all(|b| !b.contains("altered") && !b.contains("link")), "hashes check out: {breaks:?}");
    }

    #[tokio::test]
    async fn tokens_and_sessions_expire_and_die_with_their_account() {
        let dir = tempfile::tempdir().unwrap();
        let store = CpStore::open(dir.path()).unwrap();
        store.add_account("alice".into(), Role::Operator, hash_password("long enough pw").unwrap(), 0).await.unwrap();
        assert!(store.add_account("alice".into(), Role::Viewer, "x".into(), 0).await.is_err());
        assert!(store.add_api_token("alice".into(), secret_hash("t1"), "cli".into(), 0, 100).await.unwrap());
        assert!(!store.add_api_token("bob".into(), secret_hash("t2"), "cli".into(), 0, 100).await.unwrap());
        assert_eq!(store.principal_by_token(secret_hash("t1"), 99).await.unwrap().unwrap().role, Role::Operator);
        assert!(store.principal_by_token(secret_hash("t1"), 100).await.unwrap().is_none(), "expired");
        store.add_session(secret_hash("s1"), "alice".into(), "c".into(), 0, 100).await.unwrap();
        assert!(store.principal_by_session(secret_hash("s1"), 50).await.unwrap().is_some());
        assert!(store.set_password("alice".into(), "h".into(), 1).await.unwrap());
        assert!(store.principal_by_session(secret_hash("s1"), 50).await.unwrap().is_none(), "password change ends it");
        assert!(store.remove_account("alice".into()).await.unwrap());
        assert!(store.principal_by_token(secret_hash("t1"), 50).await.unwrap().is_none());
    }
}
