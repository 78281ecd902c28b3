-- Money is integer millicredits (1 credit = 1000) everywhere.

-- balance = sum of the tenant's ledger entries; held = sum of its open reservations.
-- active_jobs counts admitted, unfinished jobs: the per-tenant concurrency cap is checked against
-- it under the same row lock as the reservation, so it holds exactly across replicas.
CREATE TABLE wallets (
    tenant_id              uuid PRIMARY KEY REFERENCES tenants (id),
    balance                bigint NOT NULL DEFAULT 0,
    held                   bigint NOT NULL DEFAULT 0 CHECK (held >= 0),
    active_jobs            integer NOT NULL DEFAULT 0 CHECK (active_jobs >= 0),
    low_balance_threshold  bigint CHECK (low_balance_threshold >= 0),
    low_balance_notified   boolean NOT NULL DEFAULT false,
    updated_at             timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT wallet_available_not_negative CHECK (balance - held >= 0)
);

-- Prices are versioned; a job records the version and unit price it was admitted with.
CREATE TABLE price_versions (
    id                 serial PRIMARY KEY,
    note               text NOT NULL DEFAULT '',
    created_by_key_id  uuid REFERENCES operator_keys (id),
    created_at         timestamptz NOT NULL DEFAULT now()
);

-- unit price = clamp(base * max(1, pixels/ref_pixels) * max(1, steps/ref_steps), base, cap)
CREATE TABLE price_rules (
    version_id   integer NOT NULL REFERENCES price_versions (id),
    operation    text NOT NULL CHECK (operation IN ('text-to-image', 'image-to-image', 'inpaint')),
    model        text NOT NULL DEFAULT '',  -- '' applies to every model without its own rule
    base         bigint NOT NULL CHECK (base >= 0),
    ref_pixels   integer NOT NULL CHECK (ref_pixels > 0),
    ref_steps    integer NOT NULL CHECK (ref_steps > 0),
    cap          bigint NOT NULL,
    PRIMARY KEY (version_id, operation, model),
    CHECK (cap >= base)
);

INSERT INTO price_versions (note) VALUES ('default: 0.4 credits up to 512x512 and 30 steps, capped at 2.0');
INSERT INTO price_rules (version_id, operation, base, ref_pixels, ref_steps, cap)
SELECT 1, op, 400, 262144, 30, 2000
FROM unnest(ARRAY['text-to-image', 'image-to-image', 'inpaint']) AS op;

-- One open reservation per job; closed exactly once (state leaves 'held' in one UPDATE).
CREATE TABLE reservations (
    job_id      uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    api_key_id  uuid REFERENCES api_keys (id),
    amount      bigint NOT NULL CHECK (amount > 0),
    state       text NOT NULL DEFAULT 'held' CHECK (state IN ('held', 'settled', 'released')),
    charged     bigint NOT NULL DEFAULT 0 CHECK (charged >= 0),
    released    bigint NOT NULL DEFAULT 0 CHECK (released >= 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    closed_at   timestamptz,
    CHECK (state = 'held' OR charged + released = amount),
    CHECK (state <> 'released' OR charged = 0)
);
CREATE INDEX reservations_open ON reservations (tenant_id) WHERE state = 'held';
CREATE INDEX reservations_key_month ON reservations (api_key_id, created_at);

-- Immutable: every balance change. kind 'charge' is unique per job (charged exactly once).
CREATE TABLE ledger_entries (
    id                 bigserial PRIMARY KEY,
    tenant_id          uuid NOT NULL REFERENCES tenants (id),
    kind               text NOT NULL CHECK (kind IN ('topup', 'adjustment', 'charge')),
    amount             bigint NOT NULL,
    balance_after      bigint NOT NULL,
    job_id             uuid,
    api_key_id         uuid REFERENCES api_keys (id),
    operator_key_id    uuid REFERENCES operator_keys (id),
    reason             text NOT NULL DEFAULT '',
    created_at         timestamptz NOT NULL DEFAULT now(),
    CHECK (kind <> 'charge' OR (job_id IS NOT NULL AND amount < 0)),
    CHECK (kind <> 'topup' OR amount > 0)
);
CREATE UNIQUE INDEX ledger_one_charge_per_job ON ledger_entries (job_id) WHERE kind = 'charge';
CREATE INDEX ledger_tenant_page ON ledger_entries (tenant_id, id DESC);

-- Daily usage rollup, written in the settlement transaction, so usage views never scan jobs.
CREATE TABLE usage_daily (
    tenant_id             uuid NOT NULL REFERENCES tenants (id),
    day                   date NOT NULL,
    operation             text NOT NULL,
    engine                text NOT NULL,
    api_key_id            uuid NOT NULL,
    jobs                  bigint NOT NULL DEFAULT 0,
    images                bigint NOT NULL DEFAULT 0,
    failed_images         bigint NOT NULL DEFAULT 0,
    charged               bigint NOT NULL DEFAULT 0,
    vendor_credits        double precision NOT NULL DEFAULT 0,
    gpu_seconds           double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, day, operation, engine, api_key_id)
);
CREATE INDEX usage_daily_day ON usage_daily (day);
