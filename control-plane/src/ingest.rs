//! Audit ingest: a batch of an edge's events verified against the head the
//! control plane holds, stored (idempotent on `(edge_id, seq)`), breaks
//! kept and raised as alarms, and the read models of `crate::views`
//! projected, all in one transaction. It sits above both the store and the
//! views, so neither depends on the other.

use aios_daemon::chain::to_hash;
use aios_daemon::db::DbError;
use aios_shared::audit::{AuditEvent, ChainBreak, ChainHead, ChainVerifier};
use rusqlite::{params, Connection};

use crate::store::{to_key, CpStore, AUDIT_EVENTS};

impl CpStore {
    /// Verifies and commits a batch of consecutive events from an edge.
    /// Returns the new stored head sequence and any breaks found.
    pub async fn ingest(
        &self,
        edge_id: String,
        events: Vec<AuditEvent>,
        now_ms: i64,
    ) -> Result<(u64, Vec<ChainBreak>), DbError> {
        self.db.write(move |c| ingest(c, &edge_id, &events, now_ms)).await
    }

    /// Rebuilds the task views from the audit log if they are missing
    /// (a database from before they existed).
    pub async fn prepare_views(&self) -> Result<(), DbError> {
        self.db.write(crate::views::rebuild_if_empty).await
    }
}

fn ingest(
    c: &Connection,
    edge_id: &str,
    events: &[AuditEvent],
    now_ms: i64,
) -> Result<(u64, Vec<ChainBreak>), DbError> {
    let (seq, head, key, checkpoint): (i64, Vec<u8>, Vec<u8>, i64) = c.query_row(
        "SELECT audit_seq, audit_head, public_key, audit_checkpoint FROM edges WHERE id = ?1",
        [edge_id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    let head = ChainHead { seq: seq as u64, hash: to_hash(&head)? };
    let mut verifier = ChainVerifier::new(edge_id, Some(to_key(&key)?), head).after_checkpoint(checkpoint as u64);
    let mut breaks = Vec::new();
    let mut insert = AUDIT_EVENTS.inserter(c)?;
    for event in events.iter().filter(|e| e.seq > head.seq) {
        if let Err(chain_break) = verifier.push(event) {
            c.prepare_cached("INSERT INTO alarms (edge_id, seq, detail, raised_at_ms) VALUES (?1, ?2, ?3, ?4)")?
                .execute(params![edge_id, event.seq as i64, chain_break.to_string(), now_ms])?;
            breaks.push(chain_break);
            verifier.skip_to(event);
        }
        let inserted = insert.insert(Some(edge_id), event, now_ms)?;
        if inserted {
            crate::views::project(c, edge_id, event)?;
        }
    }
    let new_head = verifier.head();
    c.execute(
        "UPDATE edges SET audit_seq = ?2, audit_head = ?3, audit_checkpoint = ?4 WHERE id = ?1",
        params![edge_id, new_head.seq as i64, new_head.hash.as_slice(), verifier.last_checkpoint() as i64],
    )?;
    Ok((new_head.seq, breaks))
}
