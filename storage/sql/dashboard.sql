-- Read-only queries of the live page (workspaced/dashboard.py). Each reads
-- only what the workspaced_reader role may read (migration 0005): the views,
-- workspace_transitions, and the granted columns of chat_workspaces and
-- tool_calls. Durations are float seconds, ids text: the page gets JSON.

-- name: dashboard_counts
SELECT state, chats
FROM workspace_state_counts
ORDER BY array_position(
    ARRAY['none', 'creating', 'building', 'agent_waiting', 'ready', 'stopping', 'stopped', 'failed'], state);

-- name: dashboard_stuck
-- $1: at most this many rows, the most overdue first; `total` counts them all.
SELECT s.chat_id::text, s.state, c.workspace_name, c.owner_name, s.state_entered_at,
       s.deadline_at, extract(epoch FROM s.overdue_by)::float8 AS overdue_s,
       count(*) OVER () AS total
FROM workspace_stuck_chats s
LEFT JOIN chat_workspaces c USING (chat_id)
ORDER BY s.overdue_by DESC
LIMIT $1;

-- name: dashboard_durations
SELECT state, samples, p50_seconds::float8 AS p50_s, p95_seconds::float8 AS p95_s
FROM workspace_state_durations
ORDER BY array_position(
    ARRAY['none', 'creating', 'building', 'agent_waiting', 'ready', 'stopping', 'stopped', 'failed'], state);

-- name: dashboard_stale_agents
-- $1: at most this many rows, never-seen agents first, then the longest silent.
SELECT s.chat_id::text, s.state, s.agent_id::text, c.workspace_name, c.owner_name,
       s.last_seen_at, extract(epoch FROM s.silent_for)::float8 AS silent_s,
       count(*) OVER () AS total
FROM workspace_stale_agents s
LEFT JOIN chat_workspaces c USING (chat_id)
ORDER BY s.silent_for DESC NULLS FIRST
LIMIT $1;

-- name: dashboard_waiting_calls
SELECT count(*) AS waiting, min(received_at) AS oldest
FROM tool_calls WHERE answered_at IS NULL;

-- name: dashboard_latest
-- $1: the latest transitions, newest first, with the chat's current names.
SELECT t.id, t.chat_id::text, t.version, t.from_state, t.to_state, t.trigger, t.occurred_at,
       t.detail ->> 'reason' AS reason, c.workspace_name, c.owner_name
FROM workspace_transitions t
LEFT JOIN chat_workspaces c USING (chat_id)
ORDER BY t.id DESC
LIMIT $1;

-- name: dashboard_find_chats
-- Chats whose id lies between $1 and $2: a prefix padded with 0s and fs, so
-- the search by the first characters of an id uses the primary key.
SELECT chat_id::text, state, workspace_name, owner_name, updated_at
FROM chat_workspaces
WHERE chat_id BETWEEN $1 AND $2
ORDER BY chat_id
LIMIT $3;

-- name: dashboard_calls
-- One chat's tool calls, without their answers (not granted to the reader).
SELECT tool_call_id, creator, received_at, answered_at
FROM tool_calls WHERE chat_id = $1 ORDER BY received_at, tool_call_id;
