CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    agent TEXT NOT NULL,
    agent_version INTEGER NOT NULL,
    kind TEXT,
    input TEXT NOT NULL,
    idempotency_key TEXT UNIQUE,
    source TEXT NOT NULL,
    state TEXT NOT NULL,
    next_step INTEGER NOT NULL DEFAULT 0,
    starts INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    deadline_ms INTEGER NOT NULL,
    not_before_ms INTEGER NOT NULL DEFAULT 0,
    wait_reason TEXT,
    output TEXT,
    error TEXT,
    needs_review INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0
);
CREATE INDEX tasks_by_state ON tasks (state, not_before_ms, created_ms);
CREATE INDEX tasks_by_agent ON tasks (agent, created_ms);
CREATE TABLE task_steps (
    task_id TEXT NOT NULL REFERENCES tasks (id),
    seq INTEGER NOT NULL,
    step_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    output TEXT NOT NULL,
    value TEXT,
    tier TEXT,
    reason TEXT,
    tokens_in INTEGER NOT NULL DEFAULT 0,
    tokens_out INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    latency_ms INTEGER NOT NULL DEFAULT 0,
    confidence REAL,
    needs_review INTEGER NOT NULL DEFAULT 0,
    call_id TEXT,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (task_id, seq)
);
CREATE TABLE agent_spend (
    agent TEXT NOT NULL,
    day INTEGER NOT NULL,
    usd REAL NOT NULL,
    PRIMARY KEY (agent, day)
);
