-- Version 6: the log as an RFC 9162 Merkle tree (DESIGN §7). The hash of
-- every perfect subtree above the leaves (the leaves are events.leaf_hash),
-- keyed by the last leaf it covers (0-based: sequence - 1) and its level,
-- so that the nodes an append completes are adjacent, at the table's end.
-- The server builds the nodes of the events stored before this version, in
-- the same transaction. The log's id names it in checkpoints
-- (backchannel/<log id>); the server makes it.
CREATE TABLE tree_nodes (
    last_leaf INTEGER NOT NULL,
    level     INTEGER NOT NULL,
    hash      BLOB NOT NULL,
    PRIMARY KEY (last_leaf, level)
) WITHOUT ROWID;
