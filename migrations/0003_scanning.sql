-- 0003: door scanning records what the door answered (docs/scanning.md).
-- Purpose: scan results beyond the first five (a scan out: exited / not_inside; a re-entry of a
--          ticket type that allows it: reentered, so a ticket still has at most one 'admitted'
--          row), and what an offline or degraded scan carries: how it was decided (mode), which
--          way (direction), what the device had answered itself (local_result), whether it
--          changed or lost a decision (conflict), why a code was invalid (reason), its serial.
-- Locks: ALTER TABLE scans takes an ACCESS EXCLUSIVE lock; the new columns have constant
--        defaults (no rewrite); the new CHECK scans the table once. Safe while live: yes, before
--        doors open (the table is then empty or small).

ALTER TABLE scans DROP CONSTRAINT ck_scans_result;
ALTER TABLE scans
    ADD CONSTRAINT ck_scans_result CHECK (result IN ('admitted', 'duplicate', 'invalid', 'wrong_event', 'void',
                                                     'exited', 'not_inside', 'reentered')),
    ADD COLUMN mode         text    NOT NULL DEFAULT 'online',
    ADD COLUMN direction    text    NOT NULL DEFAULT 'in',
    ADD COLUMN local_result text,
    ADD COLUMN conflict     boolean NOT NULL DEFAULT false,
    ADD COLUMN reason       text,
    ADD COLUMN serial       integer,
    ADD CONSTRAINT ck_scans_mode CHECK (mode IN ('online', 'offline', 'degraded')),
    ADD CONSTRAINT ck_scans_direction CHECK (direction IN ('in', 'out'));

CREATE INDEX ix_scans_ticket ON scans (ticket_id, scanned_at);
