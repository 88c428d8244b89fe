CREATE TABLE commands (
    id TEXT PRIMARY KEY,
    edge_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    signature BLOB NOT NULL,
    created_ms INTEGER NOT NULL,
    received_ms INTEGER,
    refused TEXT
);
CREATE INDEX commands_by_edge ON commands (edge_id, received_ms);
CREATE INDEX commands_by_subject ON commands (subject);
