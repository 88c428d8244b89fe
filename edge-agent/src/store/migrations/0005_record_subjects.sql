ALTER TABLE memory_records ADD COLUMN subject TEXT;
CREATE INDEX memory_records_subject ON memory_records (subject) WHERE subject IS NOT NULL;
