-- Backchannel's embedded schema, version 1.
-- Records are stored as their protobuf encoding (`data`), with the columns
-- that queries filter on kept beside them.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);

CREATE TABLE parties (
    id   TEXT PRIMARY KEY,
    data BLOB NOT NULL
);

CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,
    party_id    TEXT NOT NULL REFERENCES parties (id),
    secret_hash BLOB NOT NULL,
    create_time INTEGER NOT NULL,
    revoke_time INTEGER
);

-- seq: the sequence of the channel's CHANNEL_OPENED event (creation order).
CREATE TABLE channels (
    seq   INTEGER PRIMARY KEY,
    id    TEXT NOT NULL UNIQUE,
    state INTEGER NOT NULL,
    data  BLOB NOT NULL
);

-- Who is part of a channel (principals and mediators): need-to-know filter.
CREATE TABLE channel_members (
    party_id   TEXT NOT NULL,
    channel_id TEXT NOT NULL,
    PRIMARY KEY (party_id, channel_id)
) WITHOUT ROWID;

-- seq: the sequence of the message's MESSAGE_SENT event (creation order).
CREATE TABLE messages (
    seq        INTEGER PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    channel_id TEXT NOT NULL,
    thread_id  TEXT NOT NULL,
    state      INTEGER NOT NULL,
    respond_by INTEGER,
    data       BLOB NOT NULL
);
CREATE INDEX messages_by_channel ON messages (channel_id, seq);
CREATE INDEX messages_by_thread ON messages (thread_id, seq);
CREATE INDEX messages_by_state ON messages (state, seq);
-- Messages that can still expire (SUBMITTED..ACKNOWLEDGED) by deadline.
CREATE INDEX messages_due ON messages (respond_by)
    WHERE respond_by IS NOT NULL AND state IN (1, 2, 3, 4);

-- The global log: seq is the event's sequence, gap-free, in commit order.
CREATE TABLE events (
    seq        INTEGER PRIMARY KEY,
    channel_id TEXT NOT NULL,
    message_id TEXT,
    thread_id  TEXT,
    type       INTEGER NOT NULL,
    data       BLOB NOT NULL
);
CREATE INDEX events_by_channel ON events (channel_id, seq);
CREATE INDEX events_by_message ON events (message_id, seq) WHERE message_id IS NOT NULL;

-- Idempotency records: scoped to caller and method, kept as long as the record.
CREATE TABLE requests (
    caller      TEXT NOT NULL,
    method      TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    fingerprint BLOB NOT NULL,
    resource_id TEXT NOT NULL,
    PRIMARY KEY (caller, method, request_id)
) WITHOUT ROWID;
