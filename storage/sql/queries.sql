-- Named queries of workspaced. Arrays go in with unnest so that a batch of
-- any size costs one round trip per statement.

-- name: inbox_claim
INSERT INTO inbox (source, id)
SELECT * FROM unnest($1::text[], $2::text[])
ON CONFLICT DO NOTHING
RETURNING source, id;

-- name: workspaces_lock
-- Transaction-scoped advisory locks, taken in the (sorted) order given.
SELECT count(pg_advisory_xact_lock(k)) FROM unnest($1::bigint[]) AS k;

-- name: inbox_prune
DELETE FROM inbox WHERE received_at < $1;

-- name: agents_record
INSERT INTO agents (agent_id, workspace_id, lifecycle_state, last_seen_at)
SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[])
ON CONFLICT (agent_id) DO UPDATE SET
    last_seen_at = excluded.last_seen_at, lifecycle_state = excluded.lifecycle_state
-- An older or repeated heartbeat writes nothing (no dead tuple).
WHERE excluded.last_seen_at > agents.last_seen_at;

-- name: chats_waiting_on_agents
SELECT chat_id::text, agent_id::text FROM chat_workspaces
WHERE state = 'agent_waiting' AND agent_id = ANY($1::uuid[]);

-- name: agents_seen
SELECT agent_id::text, last_seen_at FROM agents WHERE agent_id = ANY($1::uuid[]);

-- name: jobs_lock
SELECT job_id::text, workspace_id::text, build_id::text, transition, status, error,
       agents, occurred_at
FROM provisioner_jobs WHERE job_id = ANY($1::uuid[])
ORDER BY job_id FOR UPDATE;

-- name: jobs_save
INSERT INTO provisioner_jobs
    (job_id, workspace_id, build_id, transition, status, error, agents, occurred_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (job_id) DO UPDATE SET
    status = excluded.status, error = excluded.error, agents = excluded.agents,
    occurred_at = excluded.occurred_at, updated_at = now();

-- name: jobs_get
SELECT job_id::text, workspace_id::text, build_id::text, transition, status, error,
       agents, occurred_at
FROM provisioner_jobs WHERE job_id = ANY($1::uuid[]);

-- name: latest_builds
SELECT DISTINCT ON (workspace_id)
       job_id::text, workspace_id::text, build_id::text, transition, status, error,
       agents, occurred_at
FROM provisioner_jobs WHERE workspace_id = ANY($1::uuid[])
ORDER BY workspace_id, occurred_at DESC;

-- name: chats_bound_to_workspaces
SELECT chat_id::text, workspace_id::text FROM chat_workspaces WHERE workspace_id = ANY($1::uuid[]);

-- name: chats_create_missing
INSERT INTO chat_workspaces (chat_id, owner_id, state, state_entered_at, created_at, updated_at)
SELECT c, o, 'none', $3, $3, $3 FROM unnest($1::uuid[], $2::uuid[]) AS t(c, o)
ORDER BY c
ON CONFLICT (chat_id) DO NOTHING;

-- name: chats_lock
SELECT chat_id::text, owner_id::text, state, version, state_entered_at, created_at,
       updated_at, workspace_id::text, workspace_name, owner_name, build_id::text,
       job_id::text, agent_id::text, agent_status, template_id::text, command_id::text,
       requested_name, parameters, last_error, deadline_at
FROM chat_workspaces WHERE chat_id = ANY($1::uuid[])
ORDER BY chat_id FOR UPDATE;

-- name: chats_save
UPDATE chat_workspaces SET
    owner_id = $2, state = $3, version = $4, state_entered_at = $5, updated_at = $6,
    workspace_id = $7, workspace_name = $8, owner_name = $9, build_id = $10, job_id = $11,
    agent_id = $12, agent_status = $13, template_id = $14, command_id = $15,
    requested_name = $16, last_error = $17, deadline_at = $18, parameters = $19
WHERE chat_id = $1;

-- name: waiters_of
SELECT tool_call_id, chat_id::text, creator FROM tool_calls
WHERE chat_id = ANY($1::uuid[]) AND answered_at IS NULL
ORDER BY received_at, tool_call_id;

-- name: calls_known
SELECT tool_call_id, chat_id::text, answer FROM tool_calls WHERE tool_call_id = ANY($1::text[]);

-- name: calls_wait
INSERT INTO tool_calls (tool_call_id, chat_id, creator, event_id, received_at)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (tool_call_id) DO NOTHING;

-- name: calls_answer
INSERT INTO tool_calls (tool_call_id, chat_id, event_id, received_at, answered_at, answer)
VALUES ($1, $2, '', $3, $3, $4)
ON CONFLICT (tool_call_id) DO UPDATE SET
    answered_at = coalesce(tool_calls.answered_at, excluded.answered_at),
    answer = coalesce(tool_calls.answer, excluded.answer);

-- name: transitions_record
INSERT INTO workspace_transitions
    (chat_id, from_state, to_state, trigger, event_id, version, occurred_at, detail)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8);

-- name: outbox_add
INSERT INTO outbox (topic, key, ce_id, ce_type, ce_time, payload, headers)
SELECT t, k, i, y, m, p, h::jsonb
FROM unnest($1::text[], $2::bytea[], $3::text[], $4::text[], $5::timestamptz[],
            $6::bytea[], $7::text[]) AS x(t, k, i, y, m, p, h);

-- name: outbox_claim
SELECT id, topic, key, ce_id, ce_type, ce_time, payload, headers
FROM outbox ORDER BY id LIMIT $1;

-- name: outbox_delete
DELETE FROM outbox WHERE id = ANY($1::bigint[]);

-- name: timers_next
SELECT min(deadline_at) FROM chat_workspaces WHERE deadline_at IS NOT NULL;

-- name: timers_claim
SELECT chat_id::text, version FROM chat_workspaces
WHERE deadline_at IS NOT NULL AND deadline_at <= $1
ORDER BY deadline_at LIMIT $2
FOR UPDATE SKIP LOCKED;

-- name: status_counts
SELECT state, chats FROM workspace_state_counts ORDER BY state;

-- name: status_recent
SELECT chat_id::text, from_state, to_state, trigger, occurred_at, detail
FROM workspace_transitions ORDER BY id DESC LIMIT $1;
