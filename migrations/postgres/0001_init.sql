-- Backchannel's PostgreSQL schema, version 1: the embedded schema's tables,
-- plus the one-row log head that orders writers across replicas.
-- Records are stored as their protobuf encoding (`data`), with the columns
-- that queries filter on kept beside them.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);

CREATE TABLE parties (
    id   TEXT PRIMARY KEY,
    data BYTEA NOT NULL
);

CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,
    party_id    TEXT NOT NULL REFERENCES parties (id),
    secret_hash BYTEA NOT NULL,
    create_time BIGINT NOT NULL,
    revoke_time BIGINT
);

-- seq: the sequence of the channel's CHANNEL_OPENED event (creation order).
CREATE TABLE channels (
    seq   BIGINT PRIMARY KEY,
    id    TEXT NOT NULL UNIQUE,
    state BIGINT NOT NULL,
    data  BYTEA NOT NULL
);

-- Who is part of a channel (principals and mediators): need-to-know filter.
CREATE TABLE channel_members (
    party_id   TEXT NOT NULL,
    channel_id TEXT NOT NULL,
    PRIMARY KEY (party_id, channel_id)
);

-- seq: the sequence of the message's MESSAGE_SENT event (creation order).
CREATE TABLE messages (
    seq        BIGINT PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    channel_id TEXT NOT NULL,
    thread_id  TEXT NOT NULL,
    state      BIGINT NOT NULL,
    respond_by BIGINT,
    data       BYTEA NOT NULL
);
CREATE INDEX messages_by_channel ON messages (channel_id, seq);
CREATE INDEX messages_by_thread ON messages (thread_id, seq);
CREATE INDEX messages_by_state ON messages (state, seq);
CREATE INDEX messages_due ON messages (respond_by)
    WHERE respond_by IS NOT NULL AND state IN (1, 2, 3, 4);

-- The global log: seq is the event's sequence, gap-free, in commit order.
CREATE TABLE events (
    seq        BIGINT PRIMARY KEY,
    channel_id TEXT NOT NULL,
    message_id TEXT,
    thread_id  TEXT,
    type       BIGINT NOT NULL,
    data       BYTEA NOT NULL
);
CREATE INDEX events_by_channel ON events (channel_id, seq);
CREATE INDEX events_by_message ON events (message_id, seq) WHERE message_id IS NOT NULL;

-- Idempotency records: scoped to caller and method, kept as long as the record.
CREATE TABLE requests (
    caller      TEXT NOT NULL,
    method      TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    fingerprint BYTEA NOT NULL,
    resource_id TEXT NOT NULL,
    PRIMARY KEY (caller, method, request_id)
);

-- The last sequence handed out. Every writing transaction locks this row
-- first and holds the lock until it commits, so sequences are handed out in
-- commit order: a reader of "everything after N" can never skip an event
-- that commits late. Each replica commits many requests per transaction,
-- so the lock is taken once per batch, not once per request.
CREATE TABLE log_head (
    only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    head     BIGINT NOT NULL
);
INSERT INTO log_head (only_row, head) VALUES (TRUE, 0);
