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
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::db::DbError;

/// Where one kind of chain is stored.
#[derive(Debug, Clone, Copy)]
pub struct ChainTable {
    /// The table's name.
    table: &'static str,
    /// The column that tells chains apart in one table, if any.
    scope: Option<&'static str>,
    /// Whether rows end with the time they were received.
    received: bool,
}

impl ChainTable {
    /// A table holding one chain.
    pub const fn single(table: &'static str) -> ChainTable {
        ChainTable { table, scope: None, received: false }
    }

    /// A table holding many chains, told apart by `scope`, each row stamped
    /// with the time it was received.
    pub const fn scoped(table: &'static str, scope: &'static str) -> ChainTable {
        ChainTable { table, scope: Some(scope), received: true }
    }

    /// The head of the chain as stored ([`ChainHead::EMPTY`] when empty).
    pub fn head(&self, conn: &Connection, scope: Option<&str>) -> Result<ChainHead, DbError> {
        let sql = format!("SELECT seq, hash FROM {} WHERE {} ORDER BY seq DESC LIMIT 1", self.table, self.filter());
        let row = conn
            .prepare_cached(&sql)?
            .query_row(params![scope], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
            .optional()?;
        match row {
            None => Ok(ChainHead::EMPTY),
            Some((seq, hash)) => Ok(ChainHead { seq: seq as u64, hash: to_hash(&hash)? }),
        }
    }

    /// Inserts one event. In a scoped table (ingest, idempotent on
    /// `(scope, seq)`) a row already there is left alone and `Ok(false)`
    /// returned; in a single chain (append) it is an error, because two
    /// writers appending after the same head would fork the chain.
    pub fn insert(
        &self,
        conn: &Connection,
        scope: Option<&str>,
        event: &AuditEvent,
        received_at_ms: i64,
    ) -> Result<bool, DbError> {
        let (scope_column, scope_value) = match self.scope {
            Some(column) => (format!("{column}, "), "?7, "),
            None => (String::new(), ""),
        };
        let (received_column, received_value) = if self.received { (", received_at_ms", ", ?8") } else { ("", "") };
        let verb = if self.scope.is_some() { "INSERT OR IGNORE" } else { "INSERT" };
        let sql = format!(
            "{verb} INTO {} ({scope_column}seq, ts_ms, kind, payload, prev_hash, hash{received_column})
             VALUES ({scope_value}?1, ?2, ?3, ?4, ?5, ?6{received_value})",
            self.table
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let seq = event.seq as i64;
        let (prev_hash, hash) = (event.prev_hash.as_slice(), event.hash.as_slice());
        let mut values: Vec<&dyn rusqlite::ToSql> =
            vec![&seq, &event.ts_ms, &event.kind, &event.payload, &prev_hash, &hash];
        // Positional parameters must be bound in order: ?7 and ?8 only when used.
        if self.scope.is_some() || self.received {
            values.push(&scope);
        }
        if self.received {
            values.push(&received_at_ms);
        }
        Ok(stmt.execute(values.as_slice())? == 1)
    }

    /// Events `from_seq ..` in order, at most `max`.
    pub fn load(
        &self,
        conn: &Connection,
        scope: Option<&str>,
        from_seq: u64,
        max: usize,
    ) -> Result<Vec<AuditEvent>, DbError> {
        let sql = format!(
            "SELECT seq, ts_ms, kind, payload, prev_hash, hash FROM {} WHERE {} AND seq >= ?2 ORDER BY seq LIMIT ?3",
            self.table,
            self.filter()
        );
        let mut stmt = conn.prepare_cached(&sql)?;
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

    /// The `WHERE` clause that selects one chain: `?1` is the scope.
    fn filter(&self) -> String {
        match self.scope {
            Some(column) => format!("{column} = ?1"),
            None => "(?1 IS NULL)".to_owned(),
        }
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
        let one = ChainTable::single("one");
        let many = ChainTable::scoped("many", "scope");
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
