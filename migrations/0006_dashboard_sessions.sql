-- Dashboard sign-in: a pasted key is exchanged for a server-side session. The browser holds only a
-- random token; its SHA-256 is the row's key. The key's own secret hash is kept so every request
-- re-checks the key: a revoked, expired or rotated-out key ends its sessions.
CREATE TABLE dashboard_sessions (
    token_hash       bytea PRIMARY KEY,
    kind             text NOT NULL CHECK (kind IN ('tenant', 'operator')),
    api_key_id       uuid REFERENCES api_keys (id),
    operator_key_id  uuid REFERENCES operator_keys (id),
    secret_hash      bytea NOT NULL,
    csrf_token       text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,
    CHECK ((kind = 'tenant') = (api_key_id IS NOT NULL)),
    CHECK ((kind = 'operator') = (operator_key_id IS NOT NULL)),
    CHECK (expires_at > created_at)
);
CREATE INDEX dashboard_sessions_expiry ON dashboard_sessions (expires_at);
CREATE INDEX dashboard_sessions_key ON dashboard_sessions (api_key_id) WHERE api_key_id IS NOT NULL;
