-- Records the broker refused for good (too large, invalid, not authorised, no
-- such topic): kept here with the broker's error instead of blocking the relay.
-- To replay one, insert it into outbox again (it goes to the end) and NOTIFY
-- workspaced_outbox.
CREATE TABLE outbox_parked (
    id          bigint PRIMARY KEY,
    topic       text NOT NULL,
    key         bytea,
    ce_id       text NOT NULL,
    ce_type     text NOT NULL,
    ce_time     timestamptz NOT NULL,
    payload     bytea,
    headers     jsonb,
    created_at  timestamptz NOT NULL,
    error       text NOT NULL,
    parked_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_parked_parked_at ON outbox_parked (parked_at);

CREATE VIEW outbox_parked_summary AS
SELECT topic, error, count(*) AS records,
       min(parked_at) AS first_parked_at, max(parked_at) AS last_parked_at
FROM outbox_parked GROUP BY topic, error;

GRANT SELECT ON outbox_parked_summary TO workspaced_reader;
