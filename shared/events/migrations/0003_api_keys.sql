-- Tenant API keys, kept in every service's schema so each checks keys on its own.
-- Only a hash of the secret part is stored; `wabus keys add` prints the key once.
CREATE TABLE api_keys (
    key_id      text        PRIMARY KEY,
    secret_hash bytea       NOT NULL,
    tenant_id   text        NOT NULL,
    role        text        NOT NULL CHECK (role IN ('admin', 'staff', 'viewer')),
    label       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
