-- Certificate renewal: the certificate issued to an edge but not yet
-- presented by it (accepted alongside the current one until the edge
-- connects with it), and both certificates' expiry for the fleet view.
ALTER TABLE edges ADD COLUMN pending_fingerprint TEXT;
ALTER TABLE edges ADD COLUMN pending_not_after_ms INTEGER;
ALTER TABLE edges ADD COLUMN cert_not_after_ms INTEGER;
