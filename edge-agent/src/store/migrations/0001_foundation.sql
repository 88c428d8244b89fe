CREATE TABLE identity (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    edge_id TEXT NOT NULL,
    control_plane TEXT NOT NULL,
    key_pkcs8 BLOB NOT NULL,
    cert_der BLOB NOT NULL,
    ca_der BLOB NOT NULL,
    bundle_key BLOB NOT NULL,
    enrolled_at_ms INTEGER NOT NULL
);
CREATE TABLE audit_log (
    seq INTEGER PRIMARY KEY,
    ts_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL
);
CREATE TABLE bundle (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL,
    body BLOB NOT NULL,
    signature BLOB NOT NULL,
    applied_at_ms INTEGER NOT NULL
);
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
