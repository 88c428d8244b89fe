-- The sequence of the last signed checkpoint verified in each edge's chain:
-- an edge's next events may run at most CHECKPOINT_EVERY past it.
ALTER TABLE edges ADD COLUMN audit_checkpoint INTEGER NOT NULL DEFAULT 0;
UPDATE edges SET audit_checkpoint = (
    SELECT COALESCE(MAX(seq), 0) FROM audit_events
    WHERE audit_events.edge_id = edges.id AND audit_events.kind = 'audit.checkpoint'
);
