-- Retention: the indexes the prune queries of storage/sql/queries.sql need,
-- and the durations view bounded to a recent window.

-- Answered calls by age (waiting calls have their own index).
CREATE INDEX tool_calls_answered ON tool_calls (answered_at) WHERE answered_at IS NOT NULL;
-- Jobs by age, and "is any chat bound to this agent" (the partial index
-- chat_workspaces_waiting_agent covers only chats in agent_waiting).
CREATE INDEX provisioner_jobs_updated ON provisioner_jobs (updated_at);
CREATE INDEX chat_workspaces_agent ON chat_workspaces (agent_id) WHERE agent_id IS NOT NULL;
-- No index on agents (last_seen_at): every heartbeat updates it, and an index
-- would turn those HOT updates into index writes on the hottest path. Pruning
-- scans agents instead, which holds one row per agent seen within retention.

-- Time spent in each state over the last 7 days, over the transitions that
-- left it: a scan of recent history, not all of it. A span that began before
-- the window is left out (its start is not in the window).
CREATE OR REPLACE VIEW workspace_state_durations AS
WITH spans AS (
    SELECT t.from_state AS state,
           t.occurred_at - lag(t.occurred_at) OVER (PARTITION BY t.chat_id ORDER BY t.version)
               AS spent
    FROM workspace_transitions t
    WHERE t.occurred_at >= now() - interval '7 days'
)
SELECT state,
       count(*) AS samples,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM spent)) AS p50_seconds,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM spent)) AS p95_seconds
FROM spans
WHERE spent IS NOT NULL
GROUP BY state;
