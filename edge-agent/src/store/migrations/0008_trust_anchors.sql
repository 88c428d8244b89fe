-- The fleet CAs this edge trusts, as the control plane last announced them
-- (JSON: the issuing CA first, then any being retired with the time they
-- stop being trusted). NULL: only the CA pinned at enrolment (ca_der).
ALTER TABLE identity ADD COLUMN trust_anchors TEXT;
