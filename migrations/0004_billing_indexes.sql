-- Indexes that keep the billing and job read paths fast with millions of rows.
-- Each names the query it serves; tests/integration/test_query_plans.py checks the plans.
--
-- Already in place (0002, 0003) and relied on:
--   ledger_tenant_page   (tenant_id, id DESC)                  GET /v1/ledger keyset pages
--   usage_daily pkey     (tenant_id, day, operation, ...)      GET /v1/usage for one tenant
--   usage_daily_day      (day)                                 GET /v1/admin/usage across tenants
--   jobs_tenant_page     (tenant_id, created_at DESC, id DESC) GET /v1/jobs without a state filter
--   jobs_queued, jobs_leases (partial)                         the runner's claim query (BitmapOr of two
--                                                              small partial indexes; finished jobs are in neither)
--   reservations_open    (tenant_id) WHERE state = 'held'      held = sum of open reservations

-- GET /v1/jobs?state=...: with only jobs_tenant_page, finding a tenant's few running jobs means
-- walking past every finished one. Leading with state makes each filtered page a range scan.
CREATE INDEX jobs_tenant_state_page ON jobs (tenant_id, state, created_at DESC, id DESC);

-- The per-key monthly cap sums a key's reservations of this month on every admission. Carrying
-- the summed columns lets that be an index-only scan instead of one heap fetch per job.
CREATE INDEX reservations_key_month_spend ON reservations (api_key_id, created_at) INCLUDE (state, amount, charged);
DROP INDEX reservations_key_month;
