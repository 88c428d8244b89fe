CREATE TABLE memory_items (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    namespace TEXT NOT NULL,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}',
    classification TEXT NOT NULL
        CHECK (classification IN ('public', 'internal', 'confidential', 'restricted')),
    content_hash BLOB NOT NULL,
    model TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT 1,
    added_by TEXT NOT NULL,
    source TEXT NOT NULL,
    task_id TEXT,
    reason TEXT,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    expires_ms INTEGER
);
CREATE INDEX memory_items_scope ON memory_items (namespace, classification);
CREATE INDEX memory_items_hash ON memory_items (content_hash);
CREATE INDEX memory_items_retention ON memory_items (classification, updated_ms);
CREATE INDEX memory_items_expiry ON memory_items (expires_ms) WHERE expires_ms IS NOT NULL;
CREATE TABLE memory_subjects (
    subject TEXT NOT NULL,
    item INTEGER NOT NULL REFERENCES memory_items (seq) ON DELETE CASCADE,
    PRIMARY KEY (subject, item)
) WITHOUT ROWID;
CREATE INDEX memory_subjects_item ON memory_subjects (item);
CREATE TABLE memory_tags (
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    item INTEGER NOT NULL REFERENCES memory_items (seq) ON DELETE CASCADE,
    PRIMARY KEY (key, value, item)
) WITHOUT ROWID;
CREATE INDEX memory_tags_item ON memory_tags (item);
CREATE TABLE memory_vectors (
    content_hash BLOB NOT NULL,
    model TEXT NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (content_hash, model)
) WITHOUT ROWID;
CREATE VIRTUAL TABLE memory_fts USING fts5 (text, content = 'memory_items', content_rowid = 'seq');
CREATE TRIGGER memory_fts_insert AFTER INSERT ON memory_items BEGIN
    INSERT INTO memory_fts (rowid, text) VALUES (new.seq, new.text);
END;
CREATE TRIGGER memory_fts_delete AFTER DELETE ON memory_items BEGIN
    INSERT INTO memory_fts (memory_fts, rowid, text) VALUES ('delete', old.seq, old.text);
END;
CREATE TRIGGER memory_fts_update AFTER UPDATE OF text ON memory_items BEGIN
    INSERT INTO memory_fts (memory_fts, rowid, text) VALUES ('delete', old.seq, old.text);
    INSERT INTO memory_fts (rowid, text) VALUES (new.seq, new.text);
END;
CREATE TABLE memory_meta (id INTEGER PRIMARY KEY CHECK (id = 1), generation INTEGER NOT NULL);
INSERT INTO memory_meta VALUES (1, 0);
CREATE TABLE memory_records (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    updated_by TEXT NOT NULL,
    PRIMARY KEY (namespace, key)
) WITHOUT ROWID;
