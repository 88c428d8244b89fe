//! The resend-until-receipt queue behind everything the control plane sends
//! down to one edge (dispatched tasks, operator commands).
//!
//! An item is a row stored before anything is sent, with its edge and a
//! `received_ms` left empty. Every sync connection of that edge sends the
//! rows still empty, oldest first, and keeps resending them (now, or at the
//! next connection) until the edge's receipt fills `received_ms`; the edge
//! makes applying an item idempotent on its id. A receipt only counts for
//! the edge the item was made for, and only once.

use rusqlite::types::ToSql;
use rusqlite::{Connection, Row};

use aios_daemon::db::DbError;

/// How many unacknowledged items one sync connection sends at a time.
pub const BATCH: usize = 1000;

/// One table of items for edges: it has `id`, `edge_id`, `created_ms` and
/// `received_ms` columns.
#[derive(Debug, Clone, Copy)]
pub struct ResendQueue {
    /// The table's name.
    table: &'static str,
}

impl ResendQueue {
    /// The queue kept in `table`.
    pub const fn new(table: &'static str) -> ResendQueue {
        ResendQueue { table }
    }

    /// The items `edge_id` has not acknowledged, oldest first, at most
    /// [`BATCH`]: `columns` selected and each row turned into a `T`.
    pub fn pending<T>(
        &self,
        conn: &Connection,
        edge_id: &str,
        columns: &str,
        mut item: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, DbError> {
        let sql = format!(
            "SELECT {columns} FROM {} WHERE edge_id = ?1 AND received_ms IS NULL ORDER BY created_ms, id LIMIT {BATCH}",
            self.table
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map([edge_id], |r| item(r))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records `edge_id`'s receipt for item `id` at `now_ms`, with what the
    /// receipt says (`(column, value)` pairs); `false` when the item is not
    /// that edge's or was already acknowledged.
    pub fn acknowledge(
        &self,
        conn: &Connection,
        edge_id: &str,
        id: &str,
        now_ms: i64,
        receipt: &[(&str, &dyn ToSql)],
    ) -> Result<bool, DbError> {
        let mut set = String::from("received_ms = ?3");
        for (n, (column, _)) in receipt.iter().enumerate() {
            set.push_str(&format!(", {column} = ?{}", n + 4));
        }
        let sql = format!("UPDATE {} SET {set} WHERE id = ?1 AND edge_id = ?2 AND received_ms IS NULL", self.table);
        let mut values: Vec<&dyn ToSql> = vec![&id, &edge_id, &now_ms];
        values.extend(receipt.iter().map(|(_, value)| *value));
        Ok(conn.prepare_cached(&sql)?.execute(values.as_slice())? == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_resent_until_their_own_edge_acknowledges_them() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE items (id TEXT PRIMARY KEY, edge_id TEXT NOT NULL, created_ms INTEGER NOT NULL,
                received_ms INTEGER, note TEXT);
             INSERT INTO items (id, edge_id, created_ms) VALUES ('b', 'e1', 2), ('a', 'e1', 1), ('c', 'e2', 1);",
        )
        .unwrap();
        let queue = ResendQueue::new("items");
        let pending = |edge| queue.pending(&conn, edge, "id", |r| r.get::<_, String>(0)).unwrap();
        assert_eq!(pending("e1"), ["a", "b"], "oldest first");
        assert_eq!(pending("e1"), ["a", "b"], "resent until acknowledged");
        assert!(!queue.acknowledge(&conn, "e2", "a", 5, &[]).unwrap(), "another edge's receipt does not count");
        assert!(queue.acknowledge(&conn, "e1", "a", 5, &[("note", &"done")]).unwrap());
        assert!(!queue.acknowledge(&conn, "e1", "a", 6, &[("note", &"again")]).unwrap(), "only once");
        assert_eq!(pending("e1"), ["b"]);
        let note: String = conn.query_row("SELECT note FROM items WHERE id = 'a'", [], |r| r.get(0)).unwrap();
        assert_eq!(note, "done");
    }
}
