-- 0005: sales Postgres refused because they collide with a sale it already holds.
-- Purpose: Redis restored from older data (a failover to a replica that had not received the
--          latest writes, a restart from an old snapshot) forgets confirmed sales that the ledger
--          already wrote; it may then sell the same seat, or issue the same ticket serial, again.
--          uq_tickets_live_seat and uq_tickets_serial (0001) refuse the second ticket. The ledger
--          worker records the refused order here (its order row and captured payment are kept,
--          without tickets), refunds it through the provider and marks it refunded; the audit
--          reports every row (docs/operations.md, "Runbook: Redis").
-- Locks: creates a new table only. Safe while live: yes.

CREATE TABLE sale_conflicts (
    order_id        uuid        NOT NULL,
    event_id        bigint      NOT NULL,
    stream_id       text        NOT NULL,
    seats           integer[]   NOT NULL,
    serials         integer[]   NOT NULL,
    other_orders    uuid[]      NOT NULL,
    detected_at     timestamptz NOT NULL DEFAULT now(),
    refund_ref      text,
    refunded_at     timestamptz,
    CONSTRAINT pk_sale_conflicts PRIMARY KEY (order_id),
    CONSTRAINT fk_sale_conflicts_order FOREIGN KEY (order_id) REFERENCES orders (id),
    CONSTRAINT fk_sale_conflicts_event FOREIGN KEY (event_id) REFERENCES events (id)
);
CREATE INDEX ix_sale_conflicts_event ON sale_conflicts (event_id, detected_at);
-- The ledger worker looks for refunds still to make every round: only those rows.
CREATE INDEX ix_sale_conflicts_unrefunded ON sale_conflicts (detected_at) WHERE refunded_at IS NULL;
