-- Tenants, their API keys (with rotating secrets) and operator keys.
CREATE TABLE tenants (
    id                    uuid PRIMARY KEY,
    name                  text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    status                text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    max_concurrent_jobs   integer NOT NULL DEFAULT 16 CHECK (max_concurrent_jobs > 0),
    webhook_url           text,
    -- Standard Webhooks signing secret (whsec_...). Tenants read it to verify our signatures.
    webhook_secret        text NOT NULL,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);

-- A key's identity (name, scopes, limits) is stable across rotations; its secrets are rows below.
CREATE TABLE api_keys (
    id                      uuid PRIMARY KEY,
    tenant_id               uuid NOT NULL REFERENCES tenants (id),
    name                    text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    scopes                  text[] NOT NULL,
    expires_at              timestamptz,
    revoked_at              timestamptz,
    rate_limit_per_minute   integer NOT NULL DEFAULT 600 CHECK (rate_limit_per_minute > 0),
    monthly_cap             bigint CHECK (monthly_cap >= 0),  -- millicredits
    created_by_key_id       uuid REFERENCES api_keys (id),
    created_at              timestamptz NOT NULL DEFAULT now(),
    last_used_at            timestamptz
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id, created_at);

-- Only the SHA-256 of each secret is stored. A rotated-out secret keeps working until retires_at.
CREATE TABLE api_key_secrets (
    secret_hash   bytea PRIMARY KEY,
    key_id        uuid NOT NULL REFERENCES api_keys (id),
    hint          text NOT NULL,  -- last characters, to tell keys apart in listings
    created_at    timestamptz NOT NULL DEFAULT now(),
    retires_at    timestamptz
);
CREATE INDEX api_key_secrets_key ON api_key_secrets (key_id);

CREATE TABLE operator_keys (
    id            uuid PRIMARY KEY,
    name          text NOT NULL,
    secret_hash   bytea NOT NULL UNIQUE,
    hint          text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz,
    last_used_at  timestamptz
);
