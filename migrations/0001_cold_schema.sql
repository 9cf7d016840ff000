-- 0001: the cold-tier schema.
-- Purpose: organisations and their API keys, events with seat maps and GA types,
--          and the final writes only: orders, payments, tickets, scans, devices,
--          and the append-only ledger. No hold, availability or queue state lives here.
-- Locks: creates new tables only. Safe while live: yes (nothing exists yet).
-- Postgres itself refuses a second live ticket for a seat (uq_tickets_live_seat)
-- and a second admitted scan for a ticket (uq_scans_admitted_ticket).

CREATE TABLE organisations (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    name        text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_organisations PRIMARY KEY (id),
    CONSTRAINT ck_organisations_name CHECK (length(name) BETWEEN 1 AND 200)
);

-- Only a SHA-256 of the key is kept; the key itself is shown once at creation.
CREATE TABLE api_keys (
    id               bigint GENERATED ALWAYS AS IDENTITY,
    organisation_id  bigint      NOT NULL,
    key_hash         bytea       NOT NULL,
    key_prefix       text        NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    revoked_at       timestamptz,
    CONSTRAINT pk_api_keys PRIMARY KEY (id),
    CONSTRAINT fk_api_keys_organisation FOREIGN KEY (organisation_id) REFERENCES organisations (id),
    CONSTRAINT uq_api_keys_hash UNIQUE (key_hash)
);

CREATE TABLE events (
    id                  bigint GENERATED ALWAYS AS IDENTITY,
    organisation_id     bigint      NOT NULL,
    name                text        NOT NULL,
    venue               text,
    starts_at           timestamptz,
    currency            char(3)     NOT NULL,
    status              text        NOT NULL DEFAULT 'draft',
    hold_ttl_s          integer     NOT NULL,
    per_buyer_limit     integer     NOT NULL,
    queue_mode          boolean     NOT NULL DEFAULT false,
    admission_rate      double precision NOT NULL DEFAULT 50,
    settings            jsonb       NOT NULL DEFAULT '{}'::jsonb,
    signing_public_key  bytea,
    signing_private_key bytea,
    created_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_events PRIMARY KEY (id),
    CONSTRAINT fk_events_organisation FOREIGN KEY (organisation_id) REFERENCES organisations (id),
    CONSTRAINT ck_events_status CHECK (status IN ('draft', 'on_sale', 'paused', 'closed')),
    CONSTRAINT ck_events_currency CHECK (currency ~ '^[A-Z]{3}$'),
    CONSTRAINT ck_events_hold_ttl CHECK (hold_ttl_s BETWEEN 5 AND 86400),
    CONSTRAINT ck_events_per_buyer_limit CHECK (per_buyer_limit BETWEEN 1 AND 1000),
    CONSTRAINT ck_events_admission_rate CHECK (admission_rate > 0)
);
CREATE INDEX ix_events_organisation ON events (organisation_id);

CREATE TABLE price_tiers (
    id           bigint GENERATED ALWAYS AS IDENTITY,
    event_id     bigint NOT NULL,
    code         text   NOT NULL,
    price_minor  bigint NOT NULL,
    CONSTRAINT pk_price_tiers PRIMARY KEY (id),
    CONSTRAINT fk_price_tiers_event FOREIGN KEY (event_id) REFERENCES events (id) ON DELETE CASCADE,
    CONSTRAINT uq_price_tiers_code UNIQUE (event_id, code),
    CONSTRAINT ck_price_tiers_price CHECK (price_minor >= 0)
);

CREATE TABLE sections (
    id        bigint GENERATED ALWAYS AS IDENTITY,
    event_id  bigint  NOT NULL,
    position  integer NOT NULL,
    name      text    NOT NULL,
    CONSTRAINT pk_sections PRIMARY KEY (id),
    CONSTRAINT fk_sections_event FOREIGN KEY (event_id) REFERENCES events (id) ON DELETE CASCADE,
    CONSTRAINT uq_sections_name UNIQUE (event_id, name),
    CONSTRAINT uq_sections_position UNIQUE (event_id, position)
);

CREATE TABLE seat_rows (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    section_id  bigint  NOT NULL,
    position    integer NOT NULL,
    label       text    NOT NULL,
    CONSTRAINT pk_seat_rows PRIMARY KEY (id),
    CONSTRAINT fk_seat_rows_section FOREIGN KEY (section_id) REFERENCES sections (id) ON DELETE CASCADE,
    CONSTRAINT uq_seat_rows_label UNIQUE (section_id, label),
    CONSTRAINT uq_seat_rows_position UNIQUE (section_id, position)
);

-- seat_index is the seat's bit in the Redis sold/held bitmaps.
CREATE TABLE seats (
    id             bigint GENERATED ALWAYS AS IDENTITY,
    event_id       bigint  NOT NULL,
    row_id         bigint  NOT NULL,
    seat_index     integer NOT NULL,
    label          text    NOT NULL,
    price_tier_id  bigint  NOT NULL,
    CONSTRAINT pk_seats PRIMARY KEY (id),
    CONSTRAINT fk_seats_event FOREIGN KEY (event_id) REFERENCES events (id) ON DELETE CASCADE,
    CONSTRAINT fk_seats_row FOREIGN KEY (row_id) REFERENCES seat_rows (id) ON DELETE CASCADE,
    CONSTRAINT fk_seats_price_tier FOREIGN KEY (price_tier_id) REFERENCES price_tiers (id),
    CONSTRAINT uq_seats_index UNIQUE (event_id, seat_index),
    CONSTRAINT uq_seats_label UNIQUE (event_id, label),
    CONSTRAINT ck_seats_index CHECK (seat_index >= 0)
);

CREATE TABLE ticket_types (
    id           bigint GENERATED ALWAYS AS IDENTITY,
    event_id     bigint  NOT NULL,
    code         text    NOT NULL,
    name         text    NOT NULL,
    capacity     integer NOT NULL,
    price_minor  bigint  NOT NULL,
    CONSTRAINT pk_ticket_types PRIMARY KEY (id),
    CONSTRAINT fk_ticket_types_event FOREIGN KEY (event_id) REFERENCES events (id) ON DELETE CASCADE,
    CONSTRAINT uq_ticket_types_code UNIQUE (event_id, code),
    CONSTRAINT ck_ticket_types_capacity CHECK (capacity >= 0),
    CONSTRAINT ck_ticket_types_price CHECK (price_minor >= 0)
);

-- Order ids are made by the gateway (the sale is final in Redis before it reaches here).
CREATE TABLE orders (
    id               uuid        NOT NULL,
    event_id         bigint      NOT NULL,
    hold_id          text        NOT NULL,
    buyer            text        NOT NULL,
    email            text,
    status           text        NOT NULL,
    total_minor      bigint      NOT NULL,
    currency         char(3)     NOT NULL,
    idempotency_key  text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    paid_at          timestamptz,
    refunded_at      timestamptz,
    CONSTRAINT pk_orders PRIMARY KEY (id),
    CONSTRAINT fk_orders_event FOREIGN KEY (event_id) REFERENCES events (id),
    CONSTRAINT uq_orders_hold UNIQUE (hold_id),
    CONSTRAINT ck_orders_status CHECK (status IN ('paid', 'refunded')),
    CONSTRAINT ck_orders_total CHECK (total_minor >= 0)
);
CREATE INDEX ix_orders_event ON orders (event_id, created_at);

CREATE TABLE payments (
    id            uuid        NOT NULL,
    order_id      uuid,
    hold_id       text        NOT NULL,
    provider      text        NOT NULL,
    provider_ref  text        NOT NULL,
    kind          text        NOT NULL,
    amount_minor  bigint      NOT NULL,
    currency      char(3)     NOT NULL,
    status        text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_payments PRIMARY KEY (id),
    CONSTRAINT fk_payments_order FOREIGN KEY (order_id) REFERENCES orders (id),
    CONSTRAINT uq_payments_provider_ref UNIQUE (provider, provider_ref, kind),
    CONSTRAINT ck_payments_kind CHECK (kind IN ('capture', 'refund')),
    CONSTRAINT ck_payments_amount CHECK (amount_minor >= 0)
);
CREATE INDEX ix_payments_order ON payments (order_id);

CREATE TABLE tickets (
    id              uuid        NOT NULL,
    order_id        uuid        NOT NULL,
    event_id        bigint      NOT NULL,
    serial          integer     NOT NULL,
    seat_index      integer,
    ticket_type     text,
    status          text        NOT NULL DEFAULT 'valid',
    created_at      timestamptz NOT NULL DEFAULT now(),
    voided_at       timestamptz,
    CONSTRAINT pk_tickets PRIMARY KEY (id),
    CONSTRAINT fk_tickets_order FOREIGN KEY (order_id) REFERENCES orders (id),
    CONSTRAINT fk_tickets_event FOREIGN KEY (event_id) REFERENCES events (id),
    CONSTRAINT uq_tickets_serial UNIQUE (event_id, serial),
    CONSTRAINT ck_tickets_status CHECK (status IN ('valid', 'void')),
    CONSTRAINT ck_tickets_kind CHECK ((seat_index IS NULL) <> (ticket_type IS NULL))
);
-- Ticket codes are not stored: an Ed25519 signature is deterministic, so a code is
-- re-derived from the event's key and the serial whenever it is shown (docs/ticket-codes.md).
-- A seat has at most one live ticket.
CREATE UNIQUE INDEX uq_tickets_live_seat ON tickets (event_id, seat_index)
    WHERE status = 'valid' AND seat_index IS NOT NULL;
CREATE INDEX ix_tickets_order ON tickets (order_id);

-- Only a SHA-256 of the device token is kept.
CREATE TABLE devices (
    id          uuid        NOT NULL,
    event_id    bigint      NOT NULL,
    gate        text        NOT NULL,
    name        text,
    token_hash  bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    CONSTRAINT pk_devices PRIMARY KEY (id),
    CONSTRAINT fk_devices_event FOREIGN KEY (event_id) REFERENCES events (id),
    CONSTRAINT uq_devices_token UNIQUE (token_hash)
);

CREATE TABLE scans (
    id              uuid        NOT NULL,
    event_id        bigint      NOT NULL,
    ticket_id       uuid,
    device_id       uuid        NOT NULL,
    device_scan_id  text        NOT NULL,
    gate            text        NOT NULL,
    result          text        NOT NULL,
    scanned_at      timestamptz NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_scans PRIMARY KEY (id),
    CONSTRAINT fk_scans_event FOREIGN KEY (event_id) REFERENCES events (id),
    CONSTRAINT fk_scans_ticket FOREIGN KEY (ticket_id) REFERENCES tickets (id),
    CONSTRAINT fk_scans_device FOREIGN KEY (device_id) REFERENCES devices (id),
    CONSTRAINT uq_scans_device_scan UNIQUE (device_id, device_scan_id),
    CONSTRAINT ck_scans_result CHECK (result IN ('admitted', 'duplicate', 'invalid', 'wrong_event', 'void'))
);
-- A ticket is admitted at most once.
CREATE UNIQUE INDEX uq_scans_admitted_ticket ON scans (ticket_id) WHERE result = 'admitted';
CREATE INDEX ix_scans_event ON scans (event_id, scanned_at);

-- Append-only copy of the Redis ledger stream; (event_id, stream_id) makes replays idempotent.
-- json, not jsonb: kept as written (an archive, not queried by key), and cheaper to store.
CREATE TABLE ledger_entries (
    event_id    bigint      NOT NULL,
    stream_id   text        NOT NULL,
    kind        text        NOT NULL,
    payload     json        NOT NULL,
    written_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_ledger_entries PRIMARY KEY (event_id, stream_id)
);
