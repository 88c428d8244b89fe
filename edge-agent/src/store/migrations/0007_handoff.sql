-- Sub-tasks an agent hands work to (a loop's `handoff` tool): the task that
-- asked for one, woken when it ends, and the most the sub-task may spend
-- (what its caller had left).
ALTER TABLE tasks ADD COLUMN parent_task TEXT;
ALTER TABLE tasks ADD COLUMN budget_usd REAL;
CREATE INDEX tasks_by_parent ON tasks (parent_task) WHERE parent_task IS NOT NULL;
