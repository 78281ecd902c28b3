-- Observability: the request that created a job, so an operator can go from a job (or its webhook)
-- to that request's log lines and trace, and the job's later run can link to the request's span.
-- request_id is the X-Request-Id the gateway answered with; traceparent the W3C trace context of
-- the request's span, set only while tracing was on. Webhook deliveries repeat the job's request id
-- in their X-Request-Id header. Nullable: rows from before, and balance alerts, have none.
ALTER TABLE jobs ADD COLUMN request_id text;
ALTER TABLE jobs ADD COLUMN traceparent text;
ALTER TABLE webhook_outbox ADD COLUMN request_id text;
