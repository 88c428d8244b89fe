-- The labels an enrolment token binds (a JSON object): the enrolling edge
-- gets these, not labels of its own choosing.
ALTER TABLE tokens ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
