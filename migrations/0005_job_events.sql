-- Change notifications for job event streams (SSE) and the webhook dispatcher.
--
-- Triggers rather than NOTIFY calls in each query: every path that moves a job (runner, cancel,
-- lease takeover, settlement) is covered, including ones added later. NOTIFY is transactional,
-- so a listener hears of a change only once it is committed and readable. The payload is only
-- the id; listeners re-read the row, which stays the single source of truth.
CREATE FUNCTION notify_job_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('gateway_job_events', NEW.id::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_notify_event
    AFTER UPDATE OF state, progress ON jobs
    FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state OR OLD.progress IS DISTINCT FROM NEW.progress)
    EXECUTE FUNCTION notify_job_event();

-- A new outbox row wakes the dispatchers at once; retries are found by their next_attempt_at.
CREATE FUNCTION notify_webhook_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('gateway_webhooks', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER webhook_outbox_notify
    AFTER INSERT ON webhook_outbox
    FOR EACH STATEMENT
    EXECUTE FUNCTION notify_webhook_outbox();
