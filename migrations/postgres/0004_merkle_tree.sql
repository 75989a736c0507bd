-- Version 4: the log as an RFC 9162 Merkle tree (DESIGN §7). The hash of
-- every perfect subtree above the leaves (the leaves are events.leaf_hash),
-- keyed by the last leaf it covers (0-based: sequence - 1) and its level,
-- so that the nodes an append completes are adjacent, at the table's end.
-- Replicas still running the version before append events without nodes
-- until they stop. Altering log_head first locks it until this migration
-- commits (their writes, which start by locking its row, wait), and
-- log_head.tree_size says how many leaves the stored nodes cover, so a
-- writer of this version completes the tree from events.leaf_hash when they
-- appended after it.
ALTER TABLE log_head ADD COLUMN tree_size BIGINT NOT NULL DEFAULT 0;

CREATE TABLE tree_nodes (
    last_leaf BIGINT NOT NULL,
    level     BIGINT NOT NULL,
    hash      BYTEA NOT NULL,
    PRIMARY KEY (last_leaf, level)
);

-- The nodes of the events stored before this version, a level at a time:
-- level 1 from pairs of leaves, each level above from pairs of the one
-- below (a left child is an even index: (last_leaf + 1) >> level is odd).
INSERT INTO tree_nodes (last_leaf, level, hash)
    SELECT b.seq - 1, 1, sha256('\x01'::bytea || a.leaf_hash || b.leaf_hash)
    FROM events a JOIN events b ON b.seq = a.seq + 1
    WHERE a.seq % 2 = 1;
DO $$
DECLARE
    l INT := 1;
BEGIN
    LOOP
        l := l + 1;
        INSERT INTO tree_nodes (last_leaf, level, hash)
            SELECT b.last_leaf, l, sha256('\x01'::bytea || a.hash || b.hash)
            FROM tree_nodes a
            JOIN tree_nodes b
              ON b.level = l - 1 AND b.last_leaf = a.last_leaf + (1::bigint << (l - 1))
            WHERE a.level = l - 1 AND ((a.last_leaf + 1) >> (l - 1)) % 2 = 1;
        EXIT WHEN NOT FOUND;
    END LOOP;
END
$$;
UPDATE log_head SET tree_size = head;
