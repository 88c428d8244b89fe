-- The journal of agent steps' tool-using loops: one row per model turn and
-- per call outcome, in order, written before the loop's next action starts.
-- `iteration` and `call` (-1 for the model turn itself) place an entry in
-- its loop; each place holds one entry.
CREATE TABLE agent_loop (
    task_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    n INTEGER NOT NULL,
    iteration INTEGER NOT NULL,
    call INTEGER NOT NULL,
    entry TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (task_id, seq, n),
    UNIQUE (task_id, seq, iteration, call)
);

-- Questions an agent step's model put to a person (`ask_human`), keyed by
-- the call's place in the loop; the task waits until one is answered.
CREATE TABLE questions (
    key TEXT PRIMARY KEY,
    task_id TEXT NOT NULL,
    agent TEXT NOT NULL,
    question TEXT NOT NULL,
    answer TEXT,
    answered_by TEXT,
    asked_ms INTEGER NOT NULL,
    answered_ms INTEGER
);
CREATE INDEX questions_by_task ON questions (task_id);
CREATE INDEX questions_open ON questions (asked_ms) WHERE answer IS NULL;
