-- Jobs, their per-image results, engine attempts, output files, idempotency and the webhook outbox.
CREATE TABLE jobs (
    id                      uuid PRIMARY KEY,
    tenant_id               uuid NOT NULL REFERENCES tenants (id),
    api_key_id              uuid REFERENCES api_keys (id),
    operation               text NOT NULL CHECK (operation IN ('text-to-image', 'image-to-image', 'inpaint')),
    state                   text NOT NULL DEFAULT 'queued'
                            CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'canceled')),
    params                  jsonb NOT NULL,      -- the normalized request (input images as blob keys)
    n                       integer NOT NULL CHECK (n BETWEEN 1 AND 8),
    unit_price              bigint NOT NULL CHECK (unit_price >= 0),
    price_version_id        integer NOT NULL REFERENCES price_versions (id),
    allowed_engines         text[],
    progress                real NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 1),
    engine                  text,
    vendor_credits          double precision NOT NULL DEFAULT 0,
    gpu_seconds             double precision NOT NULL DEFAULT 0,
    images_succeeded        integer NOT NULL DEFAULT 0,
    charged                 bigint NOT NULL DEFAULT 0,
    error                   jsonb,
    download_password_hash  text,                -- argon2id
    webhook_url             text,
    cancel_requested        boolean NOT NULL DEFAULT false,
    runs                    integer NOT NULL DEFAULT 0,  -- how many times a runner claimed it
    lease_owner             text,
    lease_expires_at        timestamptz,
    deadline_at             timestamptz NOT NULL,
    created_at              timestamptz NOT NULL DEFAULT now(),
    started_at              timestamptz,
    finished_at             timestamptz,
    updated_at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX jobs_tenant_page ON jobs (tenant_id, created_at DESC, id DESC);
CREATE INDEX jobs_queued ON jobs (created_at) WHERE state = 'queued';
CREATE INDEX jobs_leases ON jobs (lease_expires_at) WHERE state = 'running';

CREATE TABLE job_results (
    job_id    uuid NOT NULL REFERENCES jobs (id),
    index     integer NOT NULL,
    status    text NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    file_id   text,
    seed      bigint,
    error     text,
    PRIMARY KEY (job_id, index)
);

CREATE TABLE job_attempts (
    id           bigserial PRIMARY KEY,
    job_id       uuid NOT NULL REFERENCES jobs (id),
    engine       text NOT NULL,
    outcome      text NOT NULL,
    latency_ms   integer NOT NULL,
    error_class  text,
    error        text,
    images       integer NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX job_attempts_job ON job_attempts (job_id, id);

-- File ids are 256-bit random tokens; the id is the only handle a download needs.
CREATE TABLE files (
    id                   text PRIMARY KEY,
    tenant_id            uuid NOT NULL REFERENCES tenants (id),
    job_id               uuid NOT NULL REFERENCES jobs (id),
    kind                 text NOT NULL CHECK (kind IN ('image', 'zip')),
    blob_key             text NOT NULL,
    content_type         text NOT NULL,
    size                 bigint NOT NULL,
    etag                 text NOT NULL,
    filename             text NOT NULL,
    expires_at           timestamptz NOT NULL,
    failed_attempts      integer NOT NULL DEFAULT 0,
    failures_since       timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX files_job ON files (job_id);
CREATE INDEX files_expiry ON files (expires_at);

-- Input images the vendors fetch by signed URL, and other blobs a job owns.
CREATE TABLE job_inputs (
    job_id        uuid NOT NULL REFERENCES jobs (id),
    role          text NOT NULL CHECK (role IN ('image', 'mask')),
    blob_key      text NOT NULL,
    content_type  text NOT NULL,
    width         integer NOT NULL,
    height        integer NOT NULL,
    PRIMARY KEY (job_id, role)
);

CREATE TABLE idempotency_keys (
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    key           text NOT NULL,
    request_hash  bytea NOT NULL,
    job_id        uuid REFERENCES jobs (id),
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, key)
);
CREATE INDEX idempotency_keys_age ON idempotency_keys (created_at);

-- Side effects that must follow a commit go through here (Standard Webhooks deliveries).
CREATE TABLE webhook_outbox (
    id               bigserial PRIMARY KEY,
    tenant_id        uuid NOT NULL REFERENCES tenants (id),
    message_id       text NOT NULL UNIQUE,
    url              text NOT NULL,
    event_type       text NOT NULL,
    payload          jsonb NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    failed_at        timestamptz,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at) WHERE delivered_at IS NULL AND failed_at IS NULL;
