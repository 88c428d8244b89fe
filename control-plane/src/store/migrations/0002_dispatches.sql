CREATE TABLE dispatches (
    id TEXT PRIMARY KEY,
    edge_id TEXT NOT NULL,
    agent TEXT NOT NULL,
    kind TEXT,
    input TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    received_ms INTEGER,
    task_id TEXT,
    refused TEXT
);
CREATE INDEX dispatches_by_edge ON dispatches (edge_id, received_ms);
