-- ferry schema 2: claimed attempts, and statuses ferry does not know.
--
-- Before a request that creates a record on the server, ferry records the attempt
-- (its Idempotency-Key, the record version and a hash of the body it carries). Until
-- a definite answer every retry reuses that key, so a crash, a reload or a change of
-- the record in between can never make the server create the record twice.
ALTER TABLE sync_tracking ADD COLUMN claim_key TEXT;        -- the Idempotency-Key sent
ALTER TABLE sync_tracking ADD COLUMN claim_version TEXT;    -- the record version it carried
ALTER TABLE sync_tracking ADD COLUMN claim_fingerprint TEXT; -- that version's content fingerprint
ALTER TABLE sync_tracking ADD COLUMN claim_body_hash TEXT;  -- FNV-1a of the body, 16 hex digits
ALTER TABLE sync_tracking ADD COLUMN claim_state TEXT;      -- 'sending' (before the request) | 'unsure'
ALTER TABLE sync_tracking ADD COLUMN claim_body BLOB;       -- the body, kept once the attempt's fate is unknown

-- A fingerprint of the content of `version` (16 hex digits): two writes within one
-- tick of updated_at differ here.
ALTER TABLE sync_tracking ADD COLUMN fingerprint TEXT;

-- Why the last attempt got no answer, as a code `ferry diagnose` groups by ('timeout',
-- 'refused', 'dns', 'tls', 'connection', 'request', 'no_remote_id'); NULL when the
-- answer's status (last_http_status) says it.
ALTER TABLE sync_tracking ADD COLUMN error_cause TEXT;

-- 1 once the server is known to hold some version of the record: an update that
-- fails later is an update, never a second create.
ALTER TABLE sync_tracking ADD COLUMN created INTEGER NOT NULL DEFAULT 0;
UPDATE sync_tracking SET created = 1 WHERE sync_status = 'success' OR remote_id IS NOT NULL;

-- A status written by another program (the seed service's tools, a hand edit) that
-- ferry does not know is tried again rather than left stuck.
UPDATE sync_tracking SET sync_status = 'pending', next_attempt_at = 0
 WHERE sync_status NOT IN ('pending', 'success', 'failed');
