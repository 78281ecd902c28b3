-- The outbox's wake-up trigger fired once per INSERT statement, also for one that inserted no row
-- (a statement-level trigger always fires). Settlement's INSERT ... SELECT of a job's webhook runs for
-- every job, with or without a webhook URL, so every settled job ran the trigger's PL/pgSQL and a
-- NOTIFY, and every dispatcher it woke ran two queries to find nothing due: about 0.4 transactions
-- per sync request in bench/gateway.py, where no tenant has a webhook. A row-level trigger fires
-- only for rows, and NOTIFY folds the identical notifications of one transaction into one.
DROP TRIGGER webhook_outbox_notify ON webhook_outbox;

CREATE TRIGGER webhook_outbox_notify
    AFTER INSERT ON webhook_outbox
    FOR EACH ROW
    EXECUTE FUNCTION notify_webhook_outbox();
