-- 0004: scheduled sales.
-- Purpose: an event's sale may open and close by itself (sale_opens_at, sale_closes_at) and, with a
--          waiting room, open its pre-queue before (prequeue_opens_at; prequeue_opened_at records
--          that it was opened). The scheduler (gateway/organisers/schedule.py) finds due events
--          through the two partial indexes, so its cost grows with scheduled events only.
-- Locks: ALTER TABLE events takes an ACCESS EXCLUSIVE lock for a moment (nullable columns, no
--        rewrite); the indexes are built on a table of modest size. Safe while live: yes.

ALTER TABLE events
    ADD COLUMN sale_opens_at      timestamptz,
    ADD COLUMN sale_closes_at     timestamptz,
    ADD COLUMN prequeue_opens_at  timestamptz,
    ADD COLUMN prequeue_opened_at timestamptz,
    ADD CONSTRAINT ck_events_sale_window CHECK (sale_closes_at IS NULL OR sale_opens_at IS NULL
                                                OR sale_closes_at > sale_opens_at);

CREATE INDEX ix_events_due_to_open ON events (least(prequeue_opens_at, sale_opens_at))
    WHERE status = 'draft' AND sale_opens_at IS NOT NULL;
CREATE INDEX ix_events_due_to_close ON events (sale_closes_at)
    WHERE status IN ('on_sale', 'paused') AND sale_closes_at IS NOT NULL;
