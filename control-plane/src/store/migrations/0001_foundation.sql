CREATE TABLE tokens (
    secret_hash TEXT PRIMARY KEY,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    used_at_ms INTEGER,
    used_by TEXT
);
CREATE TABLE edges (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    labels TEXT NOT NULL,
    cert_fingerprint TEXT NOT NULL UNIQUE,
    public_key BLOB NOT NULL,
    enrolled_at_ms INTEGER NOT NULL,
    revoked_at_ms INTEGER,
    connected INTEGER NOT NULL DEFAULT 0,
    last_seen_ms INTEGER,
    agent_version TEXT,
    bundle_version INTEGER NOT NULL DEFAULT 0,
    audit_seq INTEGER NOT NULL DEFAULT 0,
    audit_head BLOB NOT NULL
);
CREATE TABLE bundles (
    version INTEGER PRIMARY KEY,
    body BLOB NOT NULL,
    signature BLOB NOT NULL,
    published_at_ms INTEGER NOT NULL
);
CREATE TABLE audit_events (
    edge_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL,
    received_at_ms INTEGER NOT NULL,
    PRIMARY KEY (edge_id, seq)
) WITHOUT ROWID;
CREATE INDEX audit_events_ts ON audit_events (ts_ms);
CREATE INDEX audit_events_kind ON audit_events (kind, ts_ms);
CREATE TABLE alarms (
    id INTEGER PRIMARY KEY,
    edge_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    detail TEXT NOT NULL,
    raised_at_ms INTEGER NOT NULL
);
