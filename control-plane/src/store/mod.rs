//! The control plane's durable state: enrolment tokens, edges, published
//! bundles, every edge's audit events, and alarms.
//!
//! Audit ingest verifies each event against the chain head already stored for
//! its edge (links, hashes, checkpoint signatures with the edge's key) and
//! commits events and the new head in one transaction; only then is the batch
//! acknowledged. A break is stored as an alarm and the events are kept anyway:
//! the auditor must see exactly what arrived. Ingest is idempotent by
//! `(edge_id, seq)`.

pub mod schema;

use std::collections::BTreeMap;
use std::path::Path;

use aios_daemon::chain::ChainTable;
use aios_daemon::db::{Db, DbError};
use aios_shared::audit::verify_chain;
use aios_shared::bundle::{BundleBody, SignedBundle};
use ed25519_dalek::VerifyingKey;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

/// Every edge's audit chain as it arrived, keyed by `(edge_id, seq)`.
pub(crate) const AUDIT_EVENTS: ChainTable = aios_daemon::chain_table!("audit_events", scope = "edge_id");

/// An enrolled edge as the fleet view shows it.
#[derive(Debug, Clone, Serialize)]
pub struct EdgeRecord {
    /// The id assigned at enrolment.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Operator labels.
    pub labels: serde_json::Value,
    /// When it enrolled.
    pub enrolled_at_ms: i64,
    /// When it was revoked, if it was.
    pub revoked_at_ms: Option<i64>,
    /// Whether a sync connection is open now.
    pub connected: bool,
    /// Last handshake or disconnect.
    pub last_seen_ms: Option<i64>,
    /// The edge's software version.
    pub agent_version: Option<String>,
    /// The bundle version it last acknowledged.
    pub bundle_version: u64,
    /// Highest audit sequence stored.
    pub audit_seq: u64,
    /// When its current certificate expires (it renews at two thirds of
    /// the certificate's life).
    pub cert_not_after_ms: Option<i64>,
}

/// An edge's identity as the sync handler needs it.
#[derive(Debug, Clone)]
pub struct EdgeAuth {
    /// The edge's id.
    pub id: String,
    /// Its ed25519 key (checkpoint signatures).
    pub public_key: VerifyingKey,
    /// Set once revoked.
    pub revoked: bool,
    /// Highest audit sequence stored.
    pub audit_seq: u64,
}

/// A stored audit event with its edge.
#[derive(Debug, Clone, Serialize)]
pub struct StoredEvent {
    /// The edge that recorded it.
    pub edge_id: String,
    /// Its position in that edge's chain.
    pub seq: u64,
    /// When the edge recorded it (ms since the epoch).
    pub ts_ms: i64,
    /// What happened.
    pub kind: String,
    /// Details (JSON).
    pub payload: serde_json::Value,
    /// Hex of the event hash.
    pub hash: String,
}

/// Filters of `audit query`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct AuditFilter {
    /// Only this edge.
    pub edge: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Recorded at or after (ms).
    pub since_ms: Option<i64>,
    /// Recorded before (ms).
    pub until_ms: Option<i64>,
    /// Only events after this sequence (with `edge`, for paging).
    pub after_seq: Option<u64>,
    /// At most this many (default 1000, at most 100000).
    pub limit: Option<u32>,
    /// Newest first instead of oldest first (for `audit tail`).
    pub newest_first: Option<bool>,
}

/// The verification report for one edge.
#[derive(Debug, Clone, Serialize)]
pub struct EdgeVerification {
    /// The edge.
    pub edge_id: String,
    /// Events stored.
    pub events: u64,
    /// Highest sequence acknowledged.
    pub acked_seq: u64,
    /// Whether the stored chain verifies end to end and no alarm was raised.
    pub ok: bool,
    /// Breaks found now by re-verifying the stored chain.
    pub breaks: Vec<String>,
    /// Alarms raised at ingest.
    pub alarms: Vec<String>,
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenRefusal {
    /// No such token.
    Unknown,
    /// Already used.
    Used,
    /// Past its expiry.
    Expired,
    /// The edge asked for labels the token does not bind.
    Labels(String),
}

impl std::fmt::Display for TokenRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenRefusal::Unknown => "unknown enrolment token",
            TokenRefusal::Used => "enrolment token already used (tokens are single-use; create a new one)",
            TokenRefusal::Expired => "enrolment token expired (create a new one)",
            TokenRefusal::Labels(problem) => problem,
        })
    }
}

/// The control plane's database.
#[derive(Clone)]
pub struct CpStore {
    pub(crate) db: Db,
}

impl CpStore {
    /// Opens `data_dir/control-plane.db`.
    pub fn open(data_dir: &Path) -> Result<CpStore, DbError> {
        let store = CpStore { db: Db::open(&data_dir.join("control-plane.db"), schema::MIGRATIONS)? };
        Ok(store)
    }

    /// Records a new token by the hash of its secret.
    pub async fn create_token(
        &self,
        secret_hash: String,
        now_ms: i64,
        expires_at_ms: i64,
        labels: BTreeMap<String, String>,
    ) -> Result<(), DbError> {
        let labels = serde_json::to_string(&labels).map_err(|err| DbError::Corrupt(err.to_string()))?;
        self.db
            .write(move |c| {
                c.execute(
                    "INSERT INTO tokens (secret_hash, created_at_ms, expires_at_ms, used_at_ms, used_by, labels)
                     VALUES (?1, ?2, ?3, NULL, NULL, ?4)",
                    params![secret_hash, now_ms, expires_at_ms, labels],
                )?;
                Ok(())
            })
            .await
    }

    /// Checks a token without using it (before the certificate is issued).
    /// Checks a token without using it (before the certificate is issued);
    /// the labels it binds.
    pub async fn check_token(
        &self,
        secret_hash: String,
        now_ms: i64,
    ) -> Result<Result<BTreeMap<String, String>, TokenRefusal>, DbError> {
        self.db.read(move |c| token_state(c, &secret_hash, now_ms)).await
    }

    /// Atomically uses the token and records the new edge; refuses a token
    /// used in the meantime.
    #[allow(clippy::too_many_arguments)]
    pub async fn enroll_edge(
        &self,
        secret_hash: String,
        now_ms: i64,
        edge_id: String,
        name: String,
        requested: Vec<(String, String)>,
        cert_fingerprint: String,
        public_key: [u8; 32],
    ) -> Result<Result<BTreeMap<String, String>, TokenRefusal>, DbError> {
        self.db
            .write(move |c| {
                let bound = match token_state(c, &secret_hash, now_ms)? {
                    Ok(bound) => bound,
                    Err(refusal) => return Ok(Err(refusal)),
                };
                let labels = match aios_shared::token::enrolment_labels(&bound, &requested) {
                    Ok(labels) => labels,
                    Err(problem) => return Ok(Err(TokenRefusal::Labels(problem))),
                };
                c.execute(
                    "UPDATE tokens SET used_at_ms = ?2, used_by = ?3 WHERE secret_hash = ?1",
                    params![secret_hash, now_ms, edge_id],
                )?;
                c.execute(
                    "INSERT INTO edges (id, name, labels, cert_fingerprint, public_key, enrolled_at_ms, audit_head)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        edge_id,
                        name,
                        serde_json::to_string(&labels).map_err(|err| DbError::Corrupt(err.to_string()))?,
                        cert_fingerprint,
                        public_key.to_vec(),
                        now_ms,
                        vec![0u8; 32]
                    ],
                )?;
                Ok(Ok(labels))
            })
            .await
    }

    /// The edge holding the certificate with this fingerprint: its current
    /// one, or the renewed one it has not presented yet.
    pub async fn edge_by_fingerprint(&self, fingerprint: String) -> Result<Option<EdgeAuth>, DbError> {
        self.db
            .read(move |c| {
                let row = c
                    .query_row(
                        "SELECT id, public_key, revoked_at_ms, audit_seq FROM edges
                         WHERE cert_fingerprint = ?1 OR pending_fingerprint = ?1",
                        [fingerprint],
                        |r| {
                            Ok((
                                r.get::<_, String>(0)?,
                                r.get::<_, Vec<u8>>(1)?,
                                r.get::<_, Option<i64>>(2)?,
                                r.get::<_, i64>(3)?,
                            ))
                        },
                    )
                    .optional()?;
                let Some((id, key, revoked, audit_seq)) = row else { return Ok(None) };
                Ok(Some(EdgeAuth {
                    id,
                    public_key: to_key(&key)?,
                    revoked: revoked.is_some(),
                    audit_seq: audit_seq as u64,
                }))
            })
            .await
    }

    /// Records a handshake or a disconnect.
    pub async fn edge_seen(
        &self,
        edge_id: String,
        connected: bool,
        agent_version: Option<String>,
        bundle_version: Option<u64>,
        now_ms: i64,
    ) -> Result<(), DbError> {
        self.db
            .write(move |c| {
                c.execute(
                    "UPDATE edges SET connected = ?2, last_seen_ms = ?3,
                        agent_version = COALESCE(?4, agent_version),
                        bundle_version = MAX(bundle_version, COALESCE(?5, 0))
                     WHERE id = ?1",
                    params![edge_id, connected, now_ms, agent_version, bundle_version.map(|v| v as i64)],
                )?;
                Ok(())
            })
            .await
    }

    /// Records the bundle version an edge acknowledged.
    pub async fn edge_bundle_acked(&self, edge_id: String, version: u64) -> Result<(), DbError> {
        self.db
            .write(move |c| {
                c.execute(
                    "UPDATE edges SET bundle_version = MAX(bundle_version, ?2) WHERE id = ?1",
                    params![edge_id, version as i64],
                )?;
                Ok(())
            })
            .await
    }

    /// Marks every edge disconnected (at start, after a crash).
    pub async fn reset_connections(&self) -> Result<(), DbError> {
        self.db.write(|c| Ok(c.execute("UPDATE edges SET connected = 0", []).map(|_| ())?)).await
    }

    /// Revokes an edge; false if there is no such edge.
    pub async fn revoke(&self, edge_id: String, now_ms: i64) -> Result<bool, DbError> {
        self.db
            .write(move |c| {
                let n = c.execute(
                    "UPDATE edges SET revoked_at_ms = COALESCE(revoked_at_ms, ?2) WHERE id = ?1",
                    params![edge_id, now_ms],
                )?;
                Ok(n == 1)
            })
            .await
    }

    /// All edges.
    pub async fn edges(&self) -> Result<Vec<EdgeRecord>, DbError> {
        self.db
            .read(|c| {
                let mut stmt = c.prepare(
                    "SELECT id, name, labels, enrolled_at_ms, revoked_at_ms, connected, last_seen_ms, agent_version,
                            bundle_version, audit_seq, cert_not_after_ms FROM edges ORDER BY enrolled_at_ms, id",
                )?;
                let rows = stmt.query_map([], |r| {
                    Ok(EdgeRecord {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        labels: serde_json::from_str(&r.get::<_, String>(2)?).unwrap_or_default(),
                        enrolled_at_ms: r.get(3)?,
                        revoked_at_ms: r.get(4)?,
                        connected: r.get(5)?,
                        last_seen_ms: r.get(6)?,
                        agent_version: r.get(7)?,
                        bundle_version: r.get::<_, i64>(8)? as u64,
                        audit_seq: r.get::<_, i64>(9)? as u64,
                        cert_not_after_ms: r.get(10)?,
                    })
                })?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await
    }

    /// Stores a signed bundle if its version is above every stored one.
    pub async fn insert_bundle(&self, version: u64, signed: SignedBundle, now_ms: i64) -> Result<bool, DbError> {
        self.db
            .write(move |c| {
                let max: i64 = c.query_row("SELECT COALESCE(MAX(version), 0) FROM bundles", [], |r| r.get(0))?;
                if version as i64 <= max {
                    return Ok(false);
                }
                c.execute(
                    "INSERT INTO bundles VALUES (?1, ?2, ?3, ?4)",
                    params![version as i64, signed.body, signed.signature, now_ms],
                )?;
                Ok(true)
            })
            .await
    }

    /// The newest bundle, or the one of `version`.
    pub async fn bundle(&self, version: Option<u64>) -> Result<Option<(u64, SignedBundle)>, DbError> {
        self.db
            .read(move |c| {
                let sql = "SELECT version, body, signature FROM bundles WHERE (?1 IS NULL OR version = ?1) ORDER BY version DESC LIMIT 1";
                Ok(c.query_row(sql, [version.map(|v| v as i64)], |r| {
                    Ok((r.get::<_, i64>(0)? as u64, SignedBundle { body: r.get(1)?, signature: r.get(2)? }))
                })
                .optional()?)
            })
            .await
    }

    /// Versions of all stored bundles with their bodies, newest first.
    pub async fn bundle_history(&self) -> Result<Vec<(u64, i64, BundleBody)>, DbError> {
        self.db
            .read(|c| {
                let mut stmt = c.prepare("SELECT version, published_at_ms, body FROM bundles ORDER BY version DESC")?;
                let rows =
                    stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, Vec<u8>>(2)?)))?;
                let mut out = Vec::new();
                for row in rows {
                    let (version, at, body) = row?;
                    let body = serde_json::from_slice(&body).map_err(|e| DbError::Corrupt(e.to_string()))?;
                    out.push((version as u64, at, body));
                }
                Ok(out)
            })
            .await
    }

    /// Audit events matching `filter`, oldest first.
    pub async fn query_audit(&self, filter: AuditFilter) -> Result<Vec<StoredEvent>, DbError> {
        self.db
            .read(move |c| {
                let limit = filter.limit.unwrap_or(1000).min(100_000);
                let order = if filter.newest_first == Some(true) {
                    "ts_ms DESC, edge_id DESC, seq DESC"
                } else {
                    "ts_ms, edge_id, seq"
                };
                let mut stmt = c.prepare_cached(&format!(
                    "SELECT edge_id, seq, ts_ms, kind, payload, hash FROM audit_events
                     WHERE (?1 IS NULL OR edge_id = ?1) AND (?2 IS NULL OR kind = ?2)
                       AND (?3 IS NULL OR ts_ms >= ?3) AND (?4 IS NULL OR ts_ms < ?4)
                       AND (?5 IS NULL OR seq > ?5)
                     ORDER BY {order} LIMIT ?6"
                ))?;
                let rows = stmt.query_map(
                    params![
                        filter.edge,
                        filter.kind,
                        filter.since_ms,
                        filter.until_ms,
                        filter.after_seq.map(|s| s as i64),
                        limit
                    ],
                    |r| {
                        Ok(StoredEvent {
                            edge_id: r.get(0)?,
                            seq: r.get::<_, i64>(1)? as u64,
                            ts_ms: r.get(2)?,
                            kind: r.get(3)?,
                            payload: serde_json::from_str(&r.get::<_, String>(4)?).unwrap_or(serde_json::Value::Null),
                            hash: hex::encode(r.get::<_, Vec<u8>>(5)?),
                        })
                    },
                )?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await
    }

    /// Re-verifies the stored chains of one edge or all.
    pub async fn verify(&self, edge: Option<String>) -> Result<Vec<EdgeVerification>, DbError> {
        self.db.read(move |c| verify_edges(c, edge.as_deref())).await
    }
}

pub(crate) fn to_key(bytes: &[u8]) -> Result<VerifyingKey, DbError> {
    <[u8; 32]>::try_from(bytes)
        .ok()
        .and_then(|b| VerifyingKey::from_bytes(&b).ok())
        .ok_or_else(|| DbError::Corrupt("stored edge key is not an ed25519 key".into()))
}

fn token_state(
    c: &Connection,
    secret_hash: &str,
    now_ms: i64,
) -> Result<Result<BTreeMap<String, String>, TokenRefusal>, DbError> {
    let row = c
        .query_row("SELECT expires_at_ms, used_at_ms, labels FROM tokens WHERE secret_hash = ?1", [secret_hash], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Option<i64>>(1)?, r.get::<_, String>(2)?))
        })
        .optional()?;
    Ok(match row {
        None => Err(TokenRefusal::Unknown),
        Some((_, Some(_), _)) => Err(TokenRefusal::Used),
        Some((expires, None, _)) if now_ms >= expires => Err(TokenRefusal::Expired),
        Some((_, None, labels)) => {
            Ok(serde_json::from_str(&labels).map_err(|err| DbError::Corrupt(format!("token labels: {err}")))?)
        }
    })
}

fn verify_edges(c: &Connection, only: Option<&str>) -> Result<Vec<EdgeVerification>, DbError> {
    let mut stmt =
        c.prepare("SELECT id, public_key, audit_seq FROM edges WHERE (?1 IS NULL OR id = ?1) ORDER BY id")?;
    let edges: Vec<(String, Vec<u8>, i64)> =
        stmt.query_map([only], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<Result<_, _>>()?;
    let mut reports = Vec::new();
    for (edge_id, key, acked) in edges {
        let events = AUDIT_EVENTS.load_all(c, Some(&edge_id))?;
        let breaks: Vec<String> = verify_chain(&edge_id, Some(to_key(&key)?), &events, acked as u64)
            .iter()
            .map(ToString::to_string)
            .collect();
        let mut alarm_stmt = c.prepare_cached("SELECT seq, detail FROM alarms WHERE edge_id = ?1 ORDER BY id")?;
        let alarms: Vec<String> = alarm_stmt
            .query_map([&edge_id], |r| Ok(format!("at event {}: {}", r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?
            .collect::<Result<_, _>>()?;
        reports.push(EdgeVerification {
            ok: breaks.is_empty() && alarms.is_empty(),
            edge_id,
            events: events.len() as u64,
            acked_seq: acked as u64,
            breaks,
            alarms,
        });
    }
    Ok(reports)
}
