//! The edge's durable state in SQLite: identity, the audit chain, the policy
//! bundle in force and the autonomy mode last recorded.
//!
//! Every audit append reads the head and inserts in one immediate
//! transaction, so two processes appending to the same file (the daemon and
//! `aios-edge debug emit-audit`) can never fork the chain.

pub mod schema;

use std::path::Path;

use aios_shared::access::BundleAccess;
use aios_shared::audit::{kinds, AuditEvent, ChainHead};
use aios_shared::bundle::{Autonomy, BundleBody, BundleError, Offer, SignedBundle};
use aios_shared::wire::TrustedCa;
use ed25519_dalek::VerifyingKey;
use rusqlite::{params, Connection, OptionalExtension};

use crate::sync::identity::{key_from_pkcs8, key_pkcs8, Identity};
use aios_daemon::chain::ChainTable;
use aios_daemon::db::{Db, DbError};

/// A signed checkpoint is appended after every this many events (the bound
/// the control plane's verifier holds chains to).
pub use aios_shared::audit::CHECKPOINT_EVERY;

/// The edge's audit chain.
const AUDIT_LOG: ChainTable = aios_daemon::chain_table!("audit_log");

/// The edge's database.
#[derive(Clone)]
pub struct EdgeStore {
    pub(crate) db: Db,
    /// The autonomy mode as last recorded, for those who must react at once
    /// (model calls, the gateway's running streams).
    autonomy: std::sync::Arc<tokio::sync::watch::Sender<Autonomy>>,
}

/// What happened to an offered bundle.
#[derive(Debug, Clone, PartialEq)]
pub enum BundleOutcome {
    /// Newly persisted and in force.
    Applied(u64),
    /// An exact copy of the bundle in force.
    AlreadyApplied(u64),
    /// Refused; the last good bundle stays.
    Refused(BundleError),
}

impl EdgeStore {
    /// Opens the database in `data_dir`, creating both if needed.
    pub fn open(data_dir: &Path) -> Result<EdgeStore, DbError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|err| DbError::Sqlite(format!("cannot create {}: {err}", data_dir.display())))?;
        let db = Db::open(&data_dir.join("edge.db"), schema::MIGRATIONS)?;
        let recorded = db.read_now(recorded_autonomy)?;
        Ok(EdgeStore { db, autonomy: std::sync::Arc::new(tokio::sync::watch::channel(recorded).0) })
    }

    /// The identity, if this edge has enrolled.
    pub async fn identity(&self) -> Result<Option<Identity>, DbError> {
        self.db.read(read_identity).await
    }

    /// Stores the identity and the labels the edge enrolled with (`key=value`,
    /// which the policy sees), and records the enrolment as the chain's first event.
    pub async fn save_identity(&self, identity: Identity, labels: Vec<String>, now_ms: i64) -> Result<(), DbError> {
        let key = key_pkcs8(&identity.signing_key).map_err(|err| DbError::Corrupt(err.to_string()))?;
        self.db
            .write(move |conn| {
                let existing: Option<String> =
                    conn.query_row("SELECT edge_id FROM identity", [], |r| r.get(0)).optional()?;
                if let Some(existing) = existing {
                    return Err(DbError::Corrupt(format!(
                        "this data directory already belongs to edge {existing}; use a new one to enrol again"
                    )));
                }
                conn.execute(
                    "INSERT INTO identity (id, edge_id, control_plane, key_pkcs8, cert_der, ca_der, bundle_key,
                                           enrolled_at_ms, trust_anchors)
                     VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![
                        identity.edge_id,
                        identity.control_plane,
                        key,
                        identity.cert_der,
                        identity.issuing_ca().to_vec(),
                        identity.bundle_key.as_bytes().to_vec(),
                        now_ms,
                        anchors_json(&identity.trust_anchors)
                    ],
                )?;
                let labels = serde_json::Value::from(labels);
                conn.execute("INSERT OR REPLACE INTO settings VALUES ('labels', ?1)", [labels.to_string()])?;
                let payload =
                    serde_json::json!({ "control_plane": identity.control_plane, "labels": labels }).to_string();
                append_event(conn, &identity, now_ms, kinds::ENROLLED, &payload)?;
                Ok(())
            })
            .await
    }

    /// Replaces the edge's certificate with a renewed one (same key) and
    /// records it; the next connection presents it.
    pub async fn replace_certificate(
        &self,
        identity: &Identity,
        cert_der: Vec<u8>,
        not_after_ms: i64,
        now_ms: i64,
    ) -> Result<(), DbError> {
        let identity = identity.clone();
        self.db
            .write(move |conn| {
                conn.execute("UPDATE identity SET cert_der = ?1", [cert_der])?;
                let payload = serde_json::json!({ "not_after_ms": not_after_ms }).to_string();
                append_event(conn, &identity, now_ms, kinds::CERTIFICATE_RENEWED, &payload)?;
                Ok(())
            })
            .await
    }

    /// Replaces the fleet CAs the edge trusts with an announcement it
    /// checked, and records it.
    pub async fn replace_trust_anchors(
        &self,
        identity: &Identity,
        anchors: Vec<TrustedCa>,
        now_ms: i64,
    ) -> Result<(), DbError> {
        let identity = identity.clone();
        self.db
            .write(move |conn| {
                let issuing = anchors.first().map(|ca| ca.der.clone()).unwrap_or_default();
                conn.execute(
                    "UPDATE identity SET ca_der = ?1, trust_anchors = ?2",
                    params![issuing, anchors_json(&anchors)],
                )?;
                let described: Vec<serde_json::Value> = anchors
                    .iter()
                    .map(|ca| {
                        serde_json::json!({
                            "sha256": hex::encode(aios_shared::token::fingerprint(&ca.der)),
                            "retires_at_ms": ca.retires_at_ms,
                        })
                    })
                    .collect();
                let payload = serde_json::json!({ "cas": described }).to_string();
                append_event(conn, &identity, now_ms, kinds::TRUST_CHANGED, &payload)?;
                Ok(())
            })
            .await
    }

    /// The control plane refused this edge as revoked: from now on the edge
    /// is halted (no side effects, no model calls), across restarts. Only
    /// enrolling again, in a new data directory, gives an edge autonomy back.
    pub async fn mark_revoked(&self, identity: &Identity, reason: String, now_ms: i64) -> Result<(), DbError> {
        let identity = identity.clone();
        let autonomy = self
            .db
            .write(move |conn| {
                let already: Option<String> =
                    conn.query_row("SELECT value FROM settings WHERE key = 'revoked'", [], |r| r.get(0)).optional()?;
                if already.is_none() {
                    conn.execute("INSERT INTO settings VALUES ('revoked', ?1)", [&reason])?;
                    let payload = serde_json::json!({ "reason": reason }).to_string();
                    append_event(conn, &identity, now_ms, kinds::REVOKED, &payload)?;
                }
                refresh_autonomy(conn, &identity, now_ms)
            })
            .await?;
        self.autonomy.send_replace(autonomy);
        Ok(())
    }

    /// The labels the edge enrolled with, `key=value`.
    pub async fn labels(&self) -> Result<Vec<String>, DbError> {
        self.db
            .read(|conn| {
                let text: Option<String> =
                    conn.query_row("SELECT value FROM settings WHERE key = 'labels'", [], |r| r.get(0)).optional()?;
                text.map_or(Ok(Vec::new()), |text| {
                    serde_json::from_str(&text).map_err(|err| DbError::Corrupt(format!("stored labels: {err}")))
                })
            })
            .await
    }

    /// Appends an event to the audit chain.
    pub async fn append_audit(
        &self,
        identity: &Identity,
        now_ms: i64,
        kind: &str,
        payload: String,
    ) -> Result<ChainHead, DbError> {
        let identity = identity.clone();
        let kind = kind.to_owned();
        self.db.write(move |conn| append_event(conn, &identity, now_ms, &kind, &payload)).await
    }

    /// Stored events `from_seq ..`, at most `max`.
    pub async fn load_audit(&self, from_seq: u64, max: usize) -> Result<Vec<AuditEvent>, DbError> {
        self.db.read(move |conn| AUDIT_LOG.load(conn, None, from_seq, max)).await
    }

    /// The head of the stored chain.
    pub async fn audit_head(&self) -> Result<ChainHead, DbError> {
        self.db.read(|conn| AUDIT_LOG.head(conn, None)).await
    }

    /// The bundle in force, as signed.
    pub async fn bundle(&self) -> Result<Option<SignedBundle>, DbError> {
        self.db.read(read_bundle).await
    }

    /// Verifies an offered bundle and, if it is newer and valid, persists it
    /// before returning; records the verdict and any autonomy change in the
    /// audit log in the same transaction.
    pub async fn offer_bundle(
        &self,
        identity: &Identity,
        signed: SignedBundle,
        access: &BundleAccess,
        now_ms: i64,
    ) -> Result<BundleOutcome, DbError> {
        let identity = identity.clone();
        let access = access.clone();
        self.db
            .write(move |conn| {
                let current = read_bundle(conn)?;
                let offer =
                    signed.offer(&identity.bundle_key, current.as_ref(), now_ms).and_then(|offer| match offer {
                        Offer::Apply(body) => {
                            access.check(&body.definitions).map(|()| Offer::Apply(body)).map_err(Into::into)
                        }
                        already => Ok(already),
                    });
                let outcome = match offer {
                    Ok(Offer::AlreadyApplied(body)) => {
                        return Ok((BundleOutcome::AlreadyApplied(body.version), recorded_autonomy(conn)?))
                    }
                    Ok(Offer::Apply(body)) => {
                        conn.execute(
                            "INSERT OR REPLACE INTO bundle VALUES (1, ?1, ?2, ?3, ?4)",
                            params![body.version as i64, signed.body, signed.signature, now_ms],
                        )?;
                        let payload = serde_json::json!({
                            "version": body.version,
                            "autonomy": body.autonomy,
                            "expires_at_ms": body.expires_at_ms,
                        });
                        append_event(conn, &identity, now_ms, kinds::BUNDLE_APPLIED, &payload.to_string())?;
                        BundleOutcome::Applied(body.version)
                    }
                    Err(err) => {
                        let payload = serde_json::json!({
                            "version": signed.peek_version(),
                            "reason": err.to_string(),
                        });
                        append_event(conn, &identity, now_ms, kinds::BUNDLE_REFUSED, &payload.to_string())?;
                        BundleOutcome::Refused(err)
                    }
                };
                let autonomy = refresh_autonomy(conn, &identity, now_ms)?;
                Ok((outcome, autonomy))
            })
            .await
            .map(|(outcome, autonomy)| {
                self.autonomy.send_replace(autonomy);
                outcome
            })
    }

    /// Re-evaluates the autonomy mode at `now_ms` (an expired bundle fails
    /// closed to supervised) and records a change in the audit log.
    pub async fn refresh_autonomy(&self, identity: &Identity, now_ms: i64) -> Result<Autonomy, DbError> {
        let identity = identity.clone();
        let autonomy = self.db.write(move |conn| refresh_autonomy(conn, &identity, now_ms)).await?;
        self.autonomy.send_replace(autonomy);
        Ok(autonomy)
    }

    /// The autonomy mode last recorded.
    pub async fn autonomy(&self) -> Result<Autonomy, DbError> {
        self.db.read(recorded_autonomy).await
    }

    /// The autonomy mode, watched: it changes when a bundle is applied or
    /// re-evaluated.
    pub fn watch_autonomy(&self) -> tokio::sync::watch::Receiver<Autonomy> {
        self.autonomy.subscribe()
    }

    /// Whether the kill switch is at `all`: no model may be called.
    pub fn halted(&self) -> bool {
        *self.autonomy.borrow() == Autonomy::Halted
    }
}

fn read_identity(conn: &Connection) -> Result<Option<Identity>, DbError> {
    let row = conn
        .query_row(
            "SELECT edge_id, control_plane, key_pkcs8, cert_der, ca_der, bundle_key, trust_anchors FROM identity",
            [],
            |r| {
                Ok((
                    (r.get::<_, String>(0)?, r.get::<_, String>(1)?),
                    (r.get::<_, Vec<u8>>(2)?, r.get::<_, Vec<u8>>(3)?),
                    (r.get::<_, Vec<u8>>(4)?, r.get::<_, Vec<u8>>(5)?, r.get::<_, Option<String>>(6)?),
                ))
            },
        )
        .optional()?;
    let Some(((edge_id, control_plane), (key, cert_der), (ca_der, bundle_key, anchors))) = row else {
        return Ok(None);
    };
    let trust_anchors = match anchors {
        Some(text) => serde_json::from_str(&text)
            .map_err(|err| DbError::Corrupt(format!("stored trust anchors do not parse: {err}")))?,
        None => vec![TrustedCa { der: ca_der, retires_at_ms: None }],
    };
    let signing_key = key_from_pkcs8(&key).map_err(|err| DbError::Corrupt(err.to_string()))?;
    let bundle_key = <[u8; 32]>::try_from(bundle_key.as_slice())
        .ok()
        .and_then(|bytes| VerifyingKey::from_bytes(&bytes).ok())
        .ok_or_else(|| DbError::Corrupt("stored bundle key is not an ed25519 key".into()))?;
    Ok(Some(Identity { edge_id, control_plane, signing_key, cert_der, trust_anchors, bundle_key }))
}

fn anchors_json(anchors: &[TrustedCa]) -> String {
    serde_json::to_string(anchors).expect("trust anchors encode")
}

/// Appends one event, and a signed checkpoint after it when one is due.
/// Runs inside the caller's transaction.
pub fn append_event(
    conn: &Connection,
    identity: &Identity,
    ts_ms: i64,
    kind: &str,
    payload: &str,
) -> Result<ChainHead, DbError> {
    let head = AUDIT_LOG.head(conn, None)?;
    let event = AuditEvent::next(&identity.edge_id, head, ts_ms, kind, payload.to_owned());
    AUDIT_LOG.insert(conn, None, &event, ts_ms)?;
    let mut head = event.head();
    if head.seq.is_multiple_of(CHECKPOINT_EVERY) {
        let checkpoint = AuditEvent::checkpoint(&identity.edge_id, head, ts_ms, &identity.signing_key);
        AUDIT_LOG.insert(conn, None, &checkpoint, ts_ms)?;
        head = checkpoint.head();
    }
    Ok(head)
}

fn read_bundle(conn: &Connection) -> Result<Option<SignedBundle>, DbError> {
    Ok(conn
        .query_row("SELECT body, signature FROM bundle", [], |r| {
            Ok(SignedBundle { body: r.get(0)?, signature: r.get(1)? })
        })
        .optional()?)
}

fn recorded_autonomy(conn: &Connection) -> Result<Autonomy, DbError> {
    let value: Option<String> =
        conn.query_row("SELECT value FROM settings WHERE key = 'autonomy'", [], |r| r.get(0)).optional()?;
    Ok(match value.as_deref() {
        Some("autonomous") => Autonomy::Autonomous,
        Some("off") => Autonomy::Off,
        Some("halted") => Autonomy::Halted,
        // Never recorded, or unreadable: fail closed.
        _ => Autonomy::Supervised,
    })
}

fn refresh_autonomy(conn: &Connection, identity: &Identity, now_ms: i64) -> Result<Autonomy, DbError> {
    let body: Option<BundleBody> = match read_bundle(conn)? {
        Some(signed) => Some(signed.open(&identity.bundle_key).map_err(|err| DbError::Corrupt(err.to_string()))?),
        None => None,
    };
    let revoked: Option<String> =
        conn.query_row("SELECT value FROM settings WHERE key = 'revoked'", [], |r| r.get(0)).optional()?;
    let (effective, reason) = match &body {
        _ if revoked.is_some() => (Autonomy::Halted, "revoked by the control plane".to_owned()),
        None => (Autonomy::Supervised, "no policy bundle yet".to_owned()),
        Some(body) if body.is_expired(now_ms) => {
            (body.effective_autonomy(now_ms), format!("bundle version {} expired", body.version))
        }
        Some(body) => (body.autonomy, format!("bundle version {}", body.version)),
    };
    let recorded: Option<String> =
        conn.query_row("SELECT value FROM settings WHERE key = 'autonomy'", [], |r| r.get(0)).optional()?;
    if recorded.as_deref() != Some(effective.as_str()) {
        conn.execute("INSERT OR REPLACE INTO settings VALUES ('autonomy', ?1)", [effective.as_str()])?;
        let payload = serde_json::json!({ "from": recorded, "to": effective, "reason": reason });
        append_event(conn, identity, now_ms, kinds::AUTONOMY_CHANGED, &payload.to_string())?;
    }
    Ok(effective)
}

/// Appends `count` debug events from outside the daemon (the test entry point).
pub fn emit_debug_events(
    data_dir: &Path,
    count: u64,
    batch: u64,
    now_ms: impl Fn() -> i64,
) -> Result<ChainHead, DbError> {
    let conn = aios_daemon::db::open_connection(&data_dir.join("edge.db"))?;
    let identity = read_identity(&conn)?
        .ok_or_else(|| DbError::Corrupt("this edge has not enrolled; run `aios-edge enroll` first".into()))?;
    let mut head = ChainHead::EMPTY;
    let mut written = 0;
    while written < count {
        let n = batch.min(count - written);
        let tx = rusqlite::Transaction::new_unchecked(&conn, rusqlite::TransactionBehavior::Immediate)?;
        for i in 0..n {
            let payload = serde_json::json!({ "n": written + i }).to_string();
            head = append_event(&tx, &identity, now_ms(), kinds::DEBUG, &payload)?;
        }
        tx.commit()?;
        written += n;
    }
    Ok(head)
}

/// An enrolled store in a temporary directory, for unit tests.
#[cfg(test)]
pub(crate) async fn test_store() -> (tempfile::TempDir, EdgeStore, Identity) {
    use ed25519_dalek::SigningKey;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = EdgeStore::open(dir.path()).expect("the store opens");
    let identity = Identity {
        edge_id: "edge-test".into(),
        control_plane: "127.0.0.1:1".into(),
        signing_key: SigningKey::from_bytes(&[7; 32]),
        cert_der: vec![],
        trust_anchors: vec![TrustedCa { der: vec![], retires_at_ms: None }],
        bundle_key: SigningKey::from_bytes(&[8; 32]).verifying_key(),
    };
    store.save_identity(identity.clone(), Vec::new(), 0).await.expect("identity saved");
    (dir, store, identity)
}
