-- 0002: API keys get a name and a role.
-- Purpose: several keys per organisation, each named (so an organiser knows which one to revoke)
--          and limited to a role: admin (everything), sales (figures, orders, refunds), door
--          (scanning devices only). Existing keys become admin keys named 'default'.
-- Locks: ALTER TABLE api_keys takes an ACCESS EXCLUSIVE lock for a moment (new columns with
--        constant defaults are not rewritten). Safe while live: yes.

ALTER TABLE api_keys
    ADD COLUMN name text NOT NULL DEFAULT 'default',
    ADD COLUMN role text NOT NULL DEFAULT 'admin',
    ADD CONSTRAINT ck_api_keys_name CHECK (length(name) BETWEEN 1 AND 100),
    ADD CONSTRAINT ck_api_keys_role CHECK (role IN ('admin', 'sales', 'door'));

CREATE INDEX ix_api_keys_organisation ON api_keys (organisation_id, id);
