-- Idempotency records as they arrive, in arrival order: appending one
-- dirties the page the previous one filled, where inserting it into
-- `requests` (keyed by the client's random UUID) dirtied a random page.
-- The writer holds these in memory and moves them into `requests`, in key
-- order, a chunk at a time, once enough have gathered
-- (src/store/recent.rs). A record is in one table or the other, or in
-- both for the moment of a move.
CREATE TABLE requests_recent (
    seq         INTEGER PRIMARY KEY,
    caller      TEXT NOT NULL,
    method      TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    fingerprint BLOB NOT NULL,
    resource_id TEXT NOT NULL
);
