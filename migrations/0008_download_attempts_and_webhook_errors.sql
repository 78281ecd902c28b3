-- One download password guards every file of a job, so wrong guesses are counted per job as
-- well as per file: a job with eight images and a zip must not allow nine times the guesses.
ALTER TABLE jobs
    ADD COLUMN download_failures        integer NOT NULL DEFAULT 0,
    ADD COLUMN download_failures_since  timestamptz;

-- A failed webhook delivery keeps a generic reason (`last_error`, which tenants may read) apart
-- from the exception's text (`last_error_detail`, operators only): the detail can name internal
-- addresses and ports.
ALTER TABLE webhook_outbox ADD COLUMN last_error_detail text;
