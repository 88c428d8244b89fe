CREATE TABLE task_view (
    edge_id TEXT NOT NULL,
    task TEXT NOT NULL,
    agent TEXT NOT NULL,
    source TEXT NOT NULL,
    state TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    finished_ms INTEGER,
    steps INTEGER NOT NULL DEFAULT 0,
    escalations INTEGER NOT NULL DEFAULT 0,
    approvals INTEGER NOT NULL DEFAULT 0,
    needs_review INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    tokens INTEGER NOT NULL DEFAULT 0,
    detail TEXT,
    PRIMARY KEY (edge_id, task)
);
CREATE INDEX task_view_recent ON task_view (created_ms);
CREATE TABLE task_events (
    task TEXT NOT NULL,
    edge_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (task, edge_id, seq)
) WITHOUT ROWID;
