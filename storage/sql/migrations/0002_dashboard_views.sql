-- Views for ops dashboards (spec section 5). Timeouts come from the
-- settings table below, which `workspaced run` and `migrate` keep current.

CREATE TABLE workspaced_settings (
    name  text PRIMARY KEY,
    value double precision NOT NULL
);
INSERT INTO workspaced_settings (name, value) VALUES
    ('build_timeout_seconds', 600),
    ('agent_connect_timeout_seconds', 120),
    ('agent_inactivity_timeout_seconds', 30),
    ('create_timeout_seconds', 120);

CREATE VIEW workspace_state_counts AS
SELECT s.state, count(c.chat_id) AS chats
FROM (VALUES ('none'), ('creating'), ('building'), ('agent_waiting'), ('ready'), ('failed'))
     AS s(state)
LEFT JOIN chat_workspaces c ON c.state = s.state
GROUP BY s.state;

-- Chats past their timeout: a deadline that passed and has not fired yet, or
-- a chat still in agent_waiting after its agent timer fired (no deadline left).
CREATE VIEW workspace_stuck_chats AS
SELECT chat_id, state, state_entered_at, deadline_at,
       now() - coalesce(deadline_at, state_entered_at + make_interval(secs =>
           (SELECT value FROM workspaced_settings
            WHERE name = 'agent_connect_timeout_seconds'))) AS overdue_by
FROM chat_workspaces
WHERE (deadline_at IS NOT NULL AND deadline_at < now())
   OR (state = 'agent_waiting' AND deadline_at IS NULL);

-- Time spent in each state, over the transitions that left it.
CREATE VIEW workspace_state_durations AS
WITH spans AS (
    SELECT t.from_state AS state,
           t.occurred_at - lag(t.occurred_at) OVER (PARTITION BY t.chat_id ORDER BY t.version)
               AS spent
    FROM workspace_transitions t
)
SELECT state,
       count(*) AS samples,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM spent)) AS p50_seconds,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM spent)) AS p95_seconds
FROM spans
WHERE spent IS NOT NULL
GROUP BY state;

-- Agents bound to a chat whose last heartbeat is older than the inactivity timeout.
CREATE VIEW workspace_stale_agents AS
SELECT c.chat_id, c.state, c.agent_id, a.last_seen_at, now() - a.last_seen_at AS silent_for
FROM chat_workspaces c
LEFT JOIN agents a ON a.agent_id = c.agent_id
WHERE c.agent_id IS NOT NULL
  AND c.state IN ('agent_waiting', 'ready')
  AND (a.last_seen_at IS NULL OR a.last_seen_at < now() - make_interval(secs =>
        (SELECT value FROM workspaced_settings WHERE name = 'agent_inactivity_timeout_seconds')));
