-- Read-only queries for people: `workspaced show` and the dashboard.

-- name: show_chat
SELECT chat_id::text, owner_id::text, state, version, workspace_id::text, workspace_name,
       owner_name, build_id::text, job_id::text, agent_id::text, agent_status,
       template_id::text, requested_name, last_error, state_entered_at, deadline_at,
       created_at, updated_at
FROM chat_workspaces WHERE chat_id = $1;

-- name: show_calls
SELECT tool_call_id, creator, received_at, answered_at, answer
FROM tool_calls WHERE chat_id = $1 ORDER BY received_at, tool_call_id;

-- name: show_history
SELECT from_state, to_state, trigger, event_id, occurred_at, detail
FROM workspace_transitions WHERE chat_id = $1 ORDER BY id;

-- name: metrics_gauges
-- The gauges read at scrape time: outbox depth and age, timers pending.
SELECT (SELECT count(*) FROM outbox) AS outbox_rows,
       coalesce((SELECT extract(epoch FROM now() - min(created_at)) FROM outbox), 0)::float8
           AS outbox_oldest_age_s,
       (SELECT count(*) FROM chat_workspaces WHERE deadline_at IS NOT NULL) AS timers_pending;

-- name: relay_leader_known
-- Whether any session holds the relay's advisory lock ($1, a bigint key).
SELECT EXISTS (
    SELECT FROM pg_locks
    WHERE locktype = 'advisory' AND granted
      AND classid = ($1::bigint >> 32)::oid
      AND objid = ($1::bigint & 4294967295)::oid AND objsubid = 1);
