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
