-- Version 3: tokens may be read-only and may expire; the server stores when
-- each last authenticated a call (kept in memory, stored every minute).
ALTER TABLE tokens ADD COLUMN read_only INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN expire_time INTEGER;
ALTER TABLE tokens ADD COLUMN last_use_time INTEGER;
