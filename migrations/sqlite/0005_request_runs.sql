-- Idempotency records in sorted runs instead of one B-tree keyed by the
-- client's random UUID: a move (src/store/recent.rs) appends its records,
-- in key order, as a run of their own, so every page it writes is a new
-- one, filled; inserting them into the one B-tree dirtied a page for every
-- few records, and more as it grew. Runs of like size are merged into one
-- (src/store/runs.rs), so a lookup reads a few of them, and only when the
-- filter of keys says it must.
CREATE TABLE request_runs (
    run         INTEGER NOT NULL,
    caller      TEXT NOT NULL,
    method      TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    fingerprint BLOB NOT NULL,
    resource_id TEXT NOT NULL,
    PRIMARY KEY (run, caller, method, request_id)
) WITHOUT ROWID;

-- The runs. state: 0 being written (a move or a merge under way; its
-- records are still found elsewhere), 1 live (lookups read it), 2 dead
-- (merged into another; its rows are being removed).
CREATE TABLE request_run_list (
    run     INTEGER PRIMARY KEY,
    state   INTEGER NOT NULL,
    records INTEGER NOT NULL
);

-- The records of `requests` become the first run.
INSERT INTO request_runs (run, caller, method, request_id, fingerprint, resource_id)
    SELECT 1, caller, method, request_id, fingerprint, resource_id FROM requests
    ORDER BY caller, method, request_id;
INSERT INTO request_run_list (run, state, records)
    SELECT 1, 1, count(*) FROM request_runs WHERE run = 1 HAVING count(*) > 0;
DROP TABLE requests;
