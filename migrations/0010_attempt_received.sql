-- What each engine attempt actually sent its backend, in the request's field names (a field the
-- engine does not take is absent). NULL for attempts that never reached an engine (skipped) and
-- for attempts recorded before this column existed.
ALTER TABLE job_attempts ADD COLUMN received jsonb;
