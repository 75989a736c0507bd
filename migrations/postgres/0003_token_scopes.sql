-- Version 3: tokens may be read-only and may expire; the server stores when
-- each last authenticated a call (kept in memory, stored every minute).
ALTER TABLE tokens ADD COLUMN read_only BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE tokens ADD COLUMN expire_time BIGINT;
ALTER TABLE tokens ADD COLUMN last_use_time BIGINT;
