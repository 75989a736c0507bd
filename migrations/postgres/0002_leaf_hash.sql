-- Version 2: every event keeps its RFC 9162 leaf hash,
-- SHA-256(0x00 || data), checked whenever the event is read.
ALTER TABLE events ADD COLUMN leaf_hash BYTEA;
UPDATE events SET leaf_hash = sha256('\x00'::bytea || data);
ALTER TABLE events ALTER COLUMN leaf_hash SET NOT NULL;
