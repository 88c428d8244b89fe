//! The edge database's schema: `edge.db`, one migration list.
//!
//! Each migration is one SQL file under `migrations/`, applied in order by
//! `aios_daemon::db` inside one transaction that also bumps SQLite's
//! `user_version` to the migration's position in [`MIGRATIONS`]. A released
//! migration is never edited: a change to the schema is a new file at the
//! end of the list. Domain modules read and write their tables through the
//! store; none of them owns a piece of the schema.

/// Every migration of this database, in the order they apply.
pub const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_foundation.sql"),
    include_str!("migrations/0002_tasks.sql"),
    include_str!("migrations/0003_memory.sql"),
    include_str!("migrations/0004_outbox.sql"),
    include_str!("migrations/0005_record_subjects.sql"),
    include_str!("migrations/0006_agent_loop.sql"),
    include_str!("migrations/0007_handoff.sql"),
    include_str!("migrations/0008_trust_anchors.sql"),
];
