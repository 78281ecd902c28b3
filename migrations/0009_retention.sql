-- Retention (gateway/worker/retention.py): what the sweeper finds, and how it remembers what it did.
--
-- An expired file keeps its row, so a download still answers 410 (not 404) until the job itself
-- goes after [retention] jobs_days; blob_deleted_at is the tombstone saying its blob is gone. The
-- blob is deleted first and the tombstone written after, so a sweep killed in between only leaves
-- a delete to repeat, which stores accept for a missing blob.
ALTER TABLE files ADD COLUMN blob_deleted_at timestamptz;

-- Files whose blob is still stored, by expiry: the sweeper's batches are range scans from the
-- oldest, and the index holds only about file_ttl_s worth of rows, however long the table grows.
-- files_expiry served nothing else (downloads look files up by id).
CREATE INDEX files_blob_expiry ON files (expires_at) WHERE blob_deleted_at IS NULL;
DROP INDEX files_expiry;

-- Finished jobs older than jobs_days, oldest first. Partial on purpose: a plain (created_at) index
-- lured the generic plan of GET /v1/jobs into walking every tenant's jobs in time order
-- (tests/integration/test_query_plans.py caught it); no listing query implies this predicate.
-- A job enters it once, when settlement finishes it (an update that was never HOT anyway: state
-- is indexed), and queued or running jobs cost it nothing.
CREATE INDEX jobs_finished_created ON jobs (created_at) WHERE state IN ('succeeded', 'failed', 'canceled');

-- Delivered or dead webhook messages by when they ended; pending ones (the dispatcher's) are not in it.
CREATE INDEX webhook_outbox_ended ON webhook_outbox ((coalesce(delivered_at, failed_at)))
    WHERE delivered_at IS NOT NULL OR failed_at IS NOT NULL;

-- Deleting a job checks the foreign key from idempotency_keys.job_id, once per job: without an
-- index on the referencing column that check is a scan of the whole table (a day of keys) for each
-- deleted job. Only requests that send an Idempotency-Key pay for it.
CREATE INDEX idempotency_keys_job ON idempotency_keys (job_id);
