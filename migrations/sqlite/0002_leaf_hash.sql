-- Version 2: every event keeps its RFC 9162 leaf hash,
-- SHA-256(0x00 || data), checked whenever the event is read. The server
-- fills it in for events stored before this version (SQLite has no SHA-256
-- of its own), in the same transaction.
ALTER TABLE events ADD COLUMN leaf_hash BLOB;
