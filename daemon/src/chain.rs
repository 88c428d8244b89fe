//! A hash-chained event table in SQLite: the one implementation behind the
//! edge's audit log, the control plane's copy of every edge's log and the
//! control plane's operator log.
//!
//! The rows are `seq, ts_ms, kind, payload, prev_hash, hash`, optionally
//! after a scope column (the control plane keeps every edge's chain in one
//! table, keyed by `(edge_id, seq)`) and before a `received_at_ms` column.
//! Everything here runs inside the caller's transaction, so an append and
//! whatever it records commit together. Hashing and verification are
//! `aios_shared::audit`'s; this module only stores and reads.

use aios_shared::audit::{AuditEvent, ChainHead, Hash};
use rusqlite::{params, CachedStatement, Connection, OptionalExtension, Row};

use crate::db::DbError;

/// Where one kind of chain is stored: its SQL, written out at compile time
/// by [`chain_table!`](crate::chain_table) so that appending and ingesting
/// cost no formatting and no statement preparation per event.
#[derive(Debug, Clone, Copy)]
pub struct ChainTable {
    /// `seq, hash` of the newest row of one chain (`?1`: the scope).
    head_sql: &'static str,
    /// One row (`?1..?6` the event, then `?7` scope and `?8` received time
    /// in a scoped table).
    insert_sql: &'static str,
    /// Rows of one chain from a sequence number (`?1` scope, `?2` first
    /// seq, `?3` limit).
    load_sql: &'static str,
    /// Whether rows carry a scope and a received time.
    scoped: bool,
}

/// A [`ChainTable`] for a table of one chain (`chain_table!("audit_log")`),
/// or of many told apart by a scope column, each row stamped with the time
/// it was received (`chain_table!("audit_events", scope = "edge_id")`).
#[macro_export]
macro_rules! chain_table {
    ($table:literal) => {
        $crate::chain::ChainTable::from_sql(
            concat!("SELECT seq, hash FROM ", $table, " WHERE ?1 IS NULL ORDER BY seq DESC LIMIT 1"),
            concat!(
                "INSERT INTO ",
                $table,
                " (seq, ts_ms, kind, payload, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
            ),
            concat!(
                "SELECT seq, ts_ms, kind, payload, prev_hash, hash FROM ",
                $table,
                " WHERE ?1 IS NULL AND seq >= ?2 ORDER BY seq LIMIT ?3"
            ),
            false,
        )
    };
    ($table:literal, scope = $scope:literal) => {
        $crate::chain::ChainTable::from_sql(
            concat!("SELECT seq, hash FROM ", $table, " WHERE ", $scope, " = ?1 ORDER BY seq DESC LIMIT 1"),
            concat!(
                "INSERT OR IGNORE INTO ",
                $table,
                " (",
                $scope,
                ", seq, ts_ms, kind, payload, prev_hash, hash, received_at_ms)",
                " VALUES (?7, ?1, ?2, ?3, ?4, ?5, ?6, ?8)"
            ),
            concat!(
                "SELECT seq, ts_ms, kind, payload, prev_hash, hash FROM ",
                $table,
                " WHERE ",
                $scope,
                " = ?1 AND seq >= ?2 ORDER BY seq LIMIT ?3"
            ),
            true,
        )
    };
}

impl ChainTable {
    /// Made by [`chain_table!`](crate::chain_table); not for direct use.
    #[doc(hidden)]
    pub const fn from_sql(
        head_sql: &'static str,
        insert_sql: &'static str,
        load_sql: &'static str,
        scoped: bool,
    ) -> ChainTable {
        ChainTable { head_sql, insert_sql, load_sql, scoped }
    }

    /// The head of the chain as stored ([`ChainHead::EMPTY`] when empty).
    pub fn head(&self, conn: &Connection, scope: Option<&str>) -> Result<ChainHead, DbError> {
        let row = conn
            .prepare_cached(self.head_sql)?
            .query_row(params![scope], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
            .optional()?;
        match row {
            None => Ok(ChainHead::EMPTY),
            Some((seq, hash)) => Ok(ChainHead { seq: seq as u64, hash: to_hash(&hash)? }),
        }
    }

    /// Inserts one event; see [`Inserter::insert`].
    pub fn insert(
        &self,
        conn: &Connection,
        scope: Option<&str>,
        event: &AuditEvent,
        received_at_ms: i64,
    ) -> Result<bool, DbError> {
        self.inserter(conn)?.insert(scope, event, received_at_ms)
    }

    /// A prepared insert, for a batch.
    pub fn inserter<'c>(&self, conn: &'c Connection) -> Result<Inserter<'c>, DbError> {
        Ok(Inserter { stmt: conn.prepare_cached(self.insert_sql)?, scoped: self.scoped })
    }

    /// Events `from_seq ..` in order, at most `max`.
    pub fn load(
        &self,
        conn: &Connection,
        scope: Option<&str>,
        from_seq: u64,
        max: usize,
    ) -> Result<Vec<AuditEvent>, DbError> {
        let mut stmt = conn.prepare_cached(self.load_sql)?;
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let mut rows = stmt.query(params![scope, from_seq as i64, limit])?;
        let mut events = Vec::new();
        while let Some(row) = rows.next()? {
            events.push(event_from_row(row)?);
        }
        Ok(events)
    }

    /// The whole chain, in order.
    pub fn load_all(&self, conn: &Connection, scope: Option<&str>) -> Result<Vec<AuditEvent>, DbError> {
        self.load(conn, scope, 0, usize::MAX)
    }
}

/// A chain table's insert statement, prepared once for many events.
pub struct Inserter<'c> {
    /// The prepared `INSERT`.
    stmt: CachedStatement<'c>,
    /// Whether it binds a scope and a received time.
    scoped: bool,
}

impl Inserter<'_> {
    /// Inserts one event. In a scoped table (ingest, idempotent on
    /// `(scope, seq)`) a row already there is left alone and `Ok(false)`
    /// returned; in a single chain (append) it is an error, because two
    /// writers appending after the same head would fork the chain.
    pub fn insert(&mut self, scope: Option<&str>, event: &AuditEvent, received_at_ms: i64) -> Result<bool, DbError> {
        let seq = event.seq as i64;
        let (prev_hash, hash) = (event.prev_hash.as_slice(), event.hash.as_slice());
        let inserted = if self.scoped {
            self.stmt.execute(params![
                seq,
                event.ts_ms,
                event.kind,
                event.payload,
                prev_hash,
                hash,
                scope,
                received_at_ms
            ])?
        } else {
            self.stmt.execute(params![seq, event.ts_ms, event.kind, event.payload, prev_hash, hash])?
        };
        Ok(inserted == 1)
    }
}

/// An event from the six chain columns at the start of a row.
pub fn event_from_row(row: &Row<'_>) -> Result<AuditEvent, DbError> {
    Ok(AuditEvent {
        seq: row.get::<_, i64>(0)? as u64,
        ts_ms: row.get(1)?,
        kind: row.get(2)?,
        payload: row.get(3)?,
        prev_hash: to_hash(&row.get::<_, Vec<u8>>(4)?)?,
        hash: to_hash(&row.get::<_, Vec<u8>>(5)?)?,
    })
}

/// A stored 32-byte hash.
pub fn to_hash(bytes: &[u8]) -> Result<Hash, DbError> {
    bytes.try_into().map_err(|_| DbError::Corrupt("a stored hash is not 32 bytes".into()))
}

#[cfg(test)]
mod tests {
    use aios_shared::audit::verify_chain;

    use super::*;

    const SCHEMA: &str = "
        CREATE TABLE one (seq INTEGER PRIMARY KEY, ts_ms INTEGER NOT NULL, kind TEXT NOT NULL,
            payload TEXT NOT NULL, prev_hash BLOB NOT NULL, hash BLOB NOT NULL);
        CREATE TABLE many (scope TEXT NOT NULL, seq INTEGER NOT NULL, ts_ms INTEGER NOT NULL, kind TEXT NOT NULL,
            payload TEXT NOT NULL, prev_hash BLOB NOT NULL, hash BLOB NOT NULL, received_at_ms INTEGER NOT NULL,
            PRIMARY KEY (scope, seq));";

    fn append(table: ChainTable, conn: &Connection, scope: Option<&str>, chain: &str, n: usize) {
        for i in 0..n {
            let head = table.head(conn, scope).unwrap();
            let event = AuditEvent::next(chain, head, i as i64, "test", format!("{i}"));
            assert!(table.insert(conn, scope, &event, 7).unwrap());
            match scope {
                Some(_) => assert!(!table.insert(conn, scope, &event, 7).unwrap(), "a second ingest is ignored"),
                None => assert!(table.insert(conn, scope, &event, 7).is_err(), "a second append is refused"),
            }
        }
    }

    #[test]
    fn both_shapes_store_chains_that_verify() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        let one = crate::chain_table!("one");
        let many = crate::chain_table!("many", scope = "scope");
        assert_eq!(one.head(&conn, None).unwrap(), ChainHead::EMPTY);
        append(one, &conn, None, "solo", 5);
        append(many, &conn, Some("a"), "a", 3);
        append(many, &conn, Some("b"), "b", 4);
        let solo = one.load_all(&conn, None).unwrap();
        assert_eq!(solo.len(), 5);
        assert!(verify_chain("solo", None, &solo, 0).is_empty());
        let b = many.load_all(&conn, Some("b")).unwrap();
        assert_eq!(b.len(), 4);
        assert!(verify_chain("b", None, &b, 0).is_empty());
        assert_eq!(many.load(&conn, Some("a"), 2, 10).unwrap().len(), 2);
        assert_eq!(many.head(&conn, Some("b")).unwrap(), b[3].head());
    }
}
