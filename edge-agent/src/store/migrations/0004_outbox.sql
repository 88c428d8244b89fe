CREATE TABLE intents (
    key TEXT PRIMARY KEY,
    task_id TEXT NOT NULL,
    step_seq INTEGER NOT NULL,
    step_id TEXT NOT NULL,
    agent TEXT NOT NULL,
    connector TEXT NOT NULL,
    connector_version INTEGER NOT NULL,
    action TEXT NOT NULL,
    args TEXT NOT NULL,
    args_hash TEXT NOT NULL,
    resource TEXT NOT NULL,
    state TEXT NOT NULL,
    decision TEXT NOT NULL,
    approval_id TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    errors TEXT NOT NULL DEFAULT '[]',
    result TEXT,
    compensates TEXT,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE INDEX intents_by_state ON intents (state, updated_ms);
CREATE INDEX intents_by_task ON intents (task_id, step_seq);
CREATE TABLE approvals (
    id TEXT PRIMARY KEY,
    intent_key TEXT NOT NULL REFERENCES intents (key),
    task_id TEXT NOT NULL,
    args_hash TEXT NOT NULL,
    request TEXT NOT NULL,
    state TEXT NOT NULL,
    requested_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    decided_by TEXT,
    comment TEXT,
    decided_ms INTEGER,
    use_by_ms INTEGER
);
CREATE TABLE commands (
    id TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    outcome TEXT NOT NULL,
    applied_ms INTEGER NOT NULL
);
