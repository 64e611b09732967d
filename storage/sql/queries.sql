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

-- name: facts
-- The facts a batch's decisions need, in one round trip: jobs by id ('job'),
-- the latest build of each workspace ('latest'), and the last heartbeat ('seen')
-- of the given agents and of each job's first agent.
WITH jobs AS (
    SELECT 'job' AS kind, job_id::text, workspace_id::text, build_id::text, transition,
           status, error, agents, occurred_at
    FROM provisioner_jobs WHERE job_id = ANY($1::uuid[])
), latest AS (
    SELECT DISTINCT ON (workspace_id)
           'latest' AS kind, job_id::text, workspace_id::text, build_id::text, transition,
           status, error, agents, occurred_at
    FROM provisioner_jobs WHERE workspace_id = ANY($3::uuid[])
    ORDER BY workspace_id, occurred_at DESC
), seen AS (
    -- the agent's lifecycle rides in the transition column
    SELECT 'seen' AS kind, agent_id::text AS job_id, NULL::text, NULL::text, lifecycle_state,
           NULL::text, NULL::text, NULL::jsonb, last_seen_at
    FROM agents
    WHERE agent_id = ANY($2::uuid[] || ARRAY(
        SELECT (agents -> 0 ->> 'id')::uuid FROM jobs WHERE jsonb_array_length(agents) > 0))
)
SELECT * FROM jobs UNION ALL SELECT * FROM latest UNION ALL SELECT * FROM seen;

-- name: chats_bound_to_workspaces
SELECT chat_id::text, workspace_id::text FROM chat_workspaces WHERE workspace_id = ANY($1::uuid[]);

-- name: chats_create_missing
INSERT INTO chat_workspaces (chat_id, owner_id, state, state_entered_at, created_at, updated_at)
SELECT c, o, 'none', $3, $3, $3 FROM unnest($1::uuid[], $2::uuid[]) AS t(c, o)
ORDER BY c
ON CONFLICT (chat_id) DO NOTHING;

-- name: chats_lock
-- Only the rows: their waiting calls are read by chats_waiters, in a later
-- statement. Under READ COMMITTED a statement that waited for a row lock
-- returns the row's newest version but reads everything else (a subquery
-- included) as of its start, before the transaction it waited for committed:
-- a call that transaction added, or answered, would be missed.
SELECT chat_id::text, owner_id::text, state, version, state_entered_at, created_at,
       updated_at, workspace_id::text, workspace_name, owner_name, build_id::text,
       job_id::text, agent_id::text, agent_status, template_id::text, command_id::text,
       requested_name, parameters, last_error, deadline_at
FROM chat_workspaces WHERE chat_id = ANY($1::uuid[])
ORDER BY chat_id FOR UPDATE;

-- name: chats_waiters
-- The calls waiting on chats this transaction has locked, oldest first.
SELECT chat_id::text,
       array_agg(tool_call_id ORDER BY received_at, tool_call_id) AS tool_call_ids,
       array_agg(creator ORDER BY received_at, tool_call_id) AS creators,
       array_agg(tool ORDER BY received_at, tool_call_id) AS tools
FROM tool_calls WHERE chat_id = ANY($1::uuid[]) AND answered_at IS NULL
GROUP BY chat_id;

-- name: calls_known
SELECT tool_call_id, chat_id::text, answer FROM tool_calls WHERE tool_call_id = ANY($1::text[]);

-- name: batch_save
-- Everything a batch decided, in one round trip: changed chats, history rows,
-- tool calls (waiting or answered, merged per call beforehand), outbox rows,
-- and a NOTIFY for the relays when there are outbox rows.
WITH chats AS (
    UPDATE chat_workspaces c SET
        owner_id = u.owner_id, state = u.state, version = u.version,
        state_entered_at = u.state_entered_at, updated_at = u.updated_at,
        workspace_id = u.workspace_id, workspace_name = u.workspace_name,
        owner_name = u.owner_name, build_id = u.build_id, job_id = u.job_id,
        agent_id = u.agent_id, agent_status = u.agent_status, template_id = u.template_id,
        command_id = u.command_id, requested_name = u.requested_name,
        last_error = u.last_error, deadline_at = u.deadline_at,
        parameters = u.parameters::jsonb
    FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::bigint[], $5::timestamptz[],
                $6::timestamptz[], $7::uuid[], $8::text[], $9::text[], $10::uuid[],
                $11::uuid[], $12::uuid[], $13::text[], $14::uuid[], $15::uuid[], $16::text[],
                $17::text[], $18::timestamptz[], $19::text[])
         AS u(chat_id, owner_id, state, version, state_entered_at, updated_at, workspace_id,
              workspace_name, owner_name, build_id, job_id, agent_id, agent_status,
              template_id, command_id, requested_name, last_error, deadline_at, parameters)
    WHERE c.chat_id = u.chat_id
    RETURNING 1
), history AS (
    INSERT INTO workspace_transitions
        (chat_id, from_state, to_state, trigger, event_id, version, occurred_at, detail)
    SELECT c, f, t, g, e, v, o, d::jsonb
    FROM unnest($20::uuid[], $21::text[], $22::text[], $23::text[], $24::text[], $25::bigint[],
                $26::timestamptz[], $27::text[]) AS x(c, f, t, g, e, v, o, d)
    RETURNING 1
), calls AS (
    INSERT INTO tool_calls
        (tool_call_id, chat_id, creator, event_id, received_at, answered_at, answer, tool)
    SELECT i, c, w, e, r, a, n::jsonb, t
    FROM unnest($28::text[], $29::uuid[], $30::bool[], $31::text[], $32::timestamptz[],
                $33::timestamptz[], $34::text[], $42::text[]) AS x(i, c, w, e, r, a, n, t)
    ON CONFLICT (tool_call_id) DO UPDATE SET
        answered_at = coalesce(tool_calls.answered_at, excluded.answered_at),
        answer = coalesce(tool_calls.answer, excluded.answer)
    -- An answered call never changes: leave it (and out of RETURNING).
    WHERE tool_calls.answered_at IS NULL
    RETURNING received_at AS r, answered_at AS a
), outgoing AS (
    INSERT INTO outbox (topic, key, ce_id, ce_type, ce_time, payload, headers)
    SELECT t, k, i, y, m, p, h::jsonb
    FROM unnest($35::text[], $36::bytea[], $37::text[], $38::text[], $39::timestamptz[],
                $40::bytea[], $41::text[]) AS x(t, k, i, y, m, p, h)
    RETURNING 1
)
SELECT (SELECT count(*) FROM chats) + (SELECT count(*) FROM history)
       + (SELECT count(*) FROM calls) AS written,
       (SELECT count(*) FROM outgoing) AS published,
       CASE WHEN (SELECT count(*) FROM outgoing) > 0
            THEN pg_notify('workspaced_outbox', '') END AS notified,
       -- seconds from each call's arrival to its answer, for calls answered now
       (SELECT coalesce(array_agg(extract(epoch FROM a - r)::float8), '{}')
        FROM calls WHERE a IS NOT NULL) AS waited;

-- name: outbox_add
INSERT INTO outbox (topic, key, ce_id, ce_type, ce_time, payload, headers)
SELECT t, k, i, y, m, p, h::jsonb
FROM unnest($1::text[], $2::bytea[], $3::text[], $4::text[], $5::timestamptz[],
            $6::bytea[], $7::text[]) AS x(t, k, i, y, m, p, h);

-- name: outbox_claim
-- Run on the relay leader's own session: one row with held = false, and
-- no outbox row, unless that session still holds the relay lock ($2). A
-- session-level lock is only ours while the session is; behind a
-- transaction-pooling proxy, or once someone unlocked it, it is not.
-- No outer ORDER BY: sorting the whole batch cost a third of the fetch; the
-- caller puts the rows in id order (they come so, in practice).
SELECT l.held, o.id, o.topic, o.key, o.ce_id, o.ce_type, o.ce_time, o.payload, o.headers
FROM (SELECT EXISTS (
          SELECT FROM pg_locks
          WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
            AND classid = ($2::bigint >> 32)::oid
            AND objid = ($2::bigint & 4294967295)::oid AND objsubid = 1) AS held) AS l
LEFT JOIN LATERAL (
    SELECT id, topic, key, ce_id, ce_type, ce_time, payload, headers
    FROM outbox WHERE l.held ORDER BY id LIMIT $1
) AS o ON true;

-- name: outbox_delete
-- Like outbox_claim: deletes, and answers true, only while the session leads.
WITH l AS (
    SELECT EXISTS (
        SELECT FROM pg_locks
        WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
          AND classid = ($2::bigint >> 32)::oid
          AND objid = ($2::bigint & 4294967295)::oid AND objsubid = 1) AS held
), gone AS (
    DELETE FROM outbox WHERE id = ANY($1::bigint[]) AND (SELECT held FROM l)
    RETURNING 1
)
SELECT held FROM l;

-- name: timers_next
SELECT min(deadline_at) FROM chat_workspaces WHERE deadline_at IS NOT NULL;

-- name: timers_claim
-- Due timers: past $1, and under the watermark of every partition of the
-- input topics $3 (none when $3 is null): the latest record time or
-- caught-up time it reached. A partition that has not moved since $4 (when
-- given) is not waited for; `unwatermarked` says it was behind the deadline.
WITH marks AS (
    SELECT coalesce(greatest(record_time, caught_up_at), '-infinity') AS mark,
           $4::timestamptz IS NOT NULL AND updated_at < $4 AS stale
    FROM input_watermarks WHERE topic = ANY($3::text[])
), low AS (
    SELECT coalesce(min(mark) FILTER (WHERE NOT stale), 'infinity') AS live,
           coalesce(min(mark), 'infinity') AS every
    FROM marks
)
SELECT chat_id::text, version, deadline_at, deadline_at > (SELECT every FROM low) AS unwatermarked
FROM chat_workspaces
WHERE deadline_at IS NOT NULL AND deadline_at <= least($1, (SELECT live FROM low))
ORDER BY deadline_at LIMIT $2
FOR UPDATE SKIP LOCKED;

-- name: watermarks_record
-- Move input partitions' watermarks forward, never back; $6 dates the rows
-- that moved (a row that did not is left alone: no dead tuple). Written last
-- in a batch's transaction and sorted by the caller, so instances whose
-- assignments overlap during a rebalance take these rows in one order.
INSERT INTO input_watermarks AS w
    (topic, partition, applied_offset, record_time, caught_up_at, updated_at)
SELECT t, p, o, r, c, $6
FROM unnest($1::text[], $2::int[], $3::bigint[], $4::timestamptz[], $5::timestamptz[])
    AS x(t, p, o, r, c)
ON CONFLICT (topic, partition) DO UPDATE SET
    applied_offset = greatest(w.applied_offset, excluded.applied_offset),
    record_time = greatest(w.record_time, excluded.record_time),
    caught_up_at = greatest(w.caught_up_at, excluded.caught_up_at),
    updated_at = excluded.updated_at
WHERE excluded.applied_offset > w.applied_offset
   OR excluded.record_time > coalesce(w.record_time, '-infinity')
   OR excluded.caught_up_at > coalesce(w.caught_up_at, '-infinity');

-- name: watermarks_stale
SELECT topic, partition, greatest(record_time, caught_up_at) AS mark, updated_at
FROM input_watermarks
WHERE topic = ANY($1::text[]) AND updated_at < $2
ORDER BY topic, partition;

-- name: status_counts
SELECT state, chats FROM workspace_state_counts ORDER BY state;

-- name: status_recent
SELECT chat_id::text, from_state, to_state, trigger, occurred_at, detail
FROM workspace_transitions ORDER BY id DESC LIMIT $1;


-- Retention (storage/retention.py): each deletes at most $2 rows older than
-- $1, so no statement holds its locks long; run until fewer come back.
-- ctid = ANY(ARRAY(...)) plans as a TID scan, where ctid IN (...) may scan
-- the whole table.

-- name: prune_inbox
DELETE FROM inbox WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM inbox WHERE received_at < $1 LIMIT $2));

-- name: prune_tool_calls
-- Answered calls only: a waiting call is kept whatever its age.
DELETE FROM tool_calls WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM tool_calls WHERE answered_at < $1 LIMIT $2));

-- name: prune_transitions
-- The history of chats that failed or have no workspace, untouched since $1.
DELETE FROM workspace_transitions WHERE ctid = ANY(ARRAY(
    SELECT t.ctid
    FROM chat_workspaces c JOIN workspace_transitions t ON t.chat_id = c.chat_id
    WHERE c.state IN ('failed', 'none') AND c.updated_at < $1
    LIMIT $2));

-- name: prune_agents
-- Agents silent since $1 that no chat is bound to.
DELETE FROM agents WHERE ctid = ANY(ARRAY(
    SELECT a.ctid FROM agents a
    WHERE a.last_seen_at < $1
      AND NOT EXISTS (SELECT FROM chat_workspaces c WHERE c.agent_id = a.agent_id)
    LIMIT $2));

-- name: prune_jobs
-- Jobs last written before $1 of workspaces no chat is bound to.
DELETE FROM provisioner_jobs WHERE ctid = ANY(ARRAY(
    SELECT j.ctid FROM provisioner_jobs j
    WHERE j.updated_at < $1
      AND NOT EXISTS (SELECT FROM chat_workspaces c WHERE c.workspace_id = j.workspace_id)
    LIMIT $2));

-- name: outbox_park
-- Move refused rows to outbox_parked with the broker's error, only while the
-- session leads (as outbox_delete); answers whether it does.
WITH l AS (
    SELECT EXISTS (
        SELECT FROM pg_locks
        WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
          AND classid = ($3::bigint >> 32)::oid
          AND objid = ($3::bigint & 4294967295)::oid AND objsubid = 1) AS held
), parked AS (
    DELETE FROM outbox WHERE id = ANY($1::bigint[]) AND (SELECT held FROM l)
    RETURNING id, topic, key, ce_id, ce_type, ce_time, payload, headers, created_at
), kept AS (
    INSERT INTO outbox_parked
        (id, topic, key, ce_id, ce_type, ce_time, payload, headers, created_at, error)
    SELECT id, topic, key, ce_id, ce_type, ce_time, payload, headers, created_at, left($2, 2000)
    FROM parked
    ON CONFLICT (id) DO NOTHING
    RETURNING 1
)
SELECT held FROM l;
