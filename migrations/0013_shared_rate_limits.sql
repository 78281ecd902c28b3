-- Per-key request rates, shared by every process and replica of the API (auth/keys.py rate_check).
-- One row per key that has made a request. `tat` is the generic cell rate algorithm's "theoretical
-- arrival time", in seconds since the Unix epoch on the database's clock: the moment the key's
-- bucket would be full again. Each request moves it one interval (60 s / the key's limit) later,
-- and is refused if that would put it more than a minute ahead of now: a token bucket holding one
-- minute's requests, refilled continuously, kept in one number. A process may take several
-- requests at once (`granted`, the last take's count) and spend them over the next second.
-- `seen` is when the row was last taken from.
-- UNLOGGED: a row is rewritten on every take, and no WAL is worth that for it. A crash of the
-- database empties the table, which gives every key a full bucket once; nothing else is lost.
CREATE UNLOGGED TABLE rate_limit_state (
    key_id   uuid PRIMARY KEY,
    tat      double precision NOT NULL,
    granted  integer NOT NULL CHECK (granted > 0),
    seen     double precision NOT NULL
);
