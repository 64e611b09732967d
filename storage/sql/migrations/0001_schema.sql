-- The state of every chat's workspace, its history, and the tables that make
-- event handling idempotent (inbox), durable (outbox) and order-independent
-- (provisioner_jobs, agents).

CREATE TABLE chat_workspaces (
    chat_id          uuid PRIMARY KEY,
    owner_id         uuid NOT NULL,
    state            text NOT NULL CHECK (state IN
                       ('none', 'creating', 'building', 'agent_waiting', 'ready', 'failed')),
    workspace_id     uuid,
    workspace_name   text,
    owner_name       text,
    build_id         uuid,
    job_id           uuid,
    agent_id         uuid,
    agent_status     text,
    template_id      uuid,
    command_id       uuid,
    requested_name   text,
    parameters       jsonb NOT NULL DEFAULT '[]'::jsonb,
    last_error       text,
    state_entered_at timestamptz NOT NULL,
    deadline_at      timestamptz,
    version          bigint NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
);
-- The timer scheduler reads the earliest deadline and claims due rows.
CREATE INDEX chat_workspaces_deadline ON chat_workspaces (deadline_at)
    WHERE deadline_at IS NOT NULL;
-- Job updates are keyed by workspace; heartbeats only matter while waiting.
CREATE INDEX chat_workspaces_workspace ON chat_workspaces (workspace_id)
    WHERE workspace_id IS NOT NULL;
CREATE INDEX chat_workspaces_waiting_agent ON chat_workspaces (agent_id)
    WHERE state = 'agent_waiting';
CREATE INDEX chat_workspaces_state ON chat_workspaces (state);

CREATE TABLE workspace_transitions (
    id          bigserial PRIMARY KEY,
    chat_id     uuid NOT NULL,
    from_state  text NOT NULL,
    to_state    text NOT NULL,
    trigger     text NOT NULL,
    event_id    text NOT NULL,
    version     bigint NOT NULL,
    occurred_at timestamptz NOT NULL,
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb,
    UNIQUE (chat_id, version)
);
CREATE INDEX workspace_transitions_occurred ON workspace_transitions (occurred_at);

-- One row per tool call ever seen: the waiting ones and the answered ones
-- (the answer is kept so a redelivered call gets the same result, R14).
CREATE TABLE tool_calls (
    tool_call_id text PRIMARY KEY,
    chat_id      uuid NOT NULL,
    creator      boolean NOT NULL DEFAULT false,
    event_id     text NOT NULL,
    received_at  timestamptz NOT NULL,
    answered_at  timestamptz,
    answer       jsonb
);
CREATE INDEX tool_calls_waiting ON tool_calls (chat_id) WHERE answered_at IS NULL;

-- (ce_source, ce_id) of every input handled, for deduplication (R12).
CREATE TABLE inbox (
    source      text NOT NULL,
    id          text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, id)
);
CREATE INDEX inbox_received ON inbox (received_at);

-- Every output, written in the transaction that decided it (R16).
-- Keys, values and dead letters' headers are bytes: a dead letter is the
-- original record, whatever it holds (headers: [[name, base64], ...]).
CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    topic       text NOT NULL,
    key         bytea,
    ce_id       text NOT NULL,
    ce_type     text NOT NULL,
    ce_time     timestamptz NOT NULL,
    payload     bytea,
    headers     jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Last known status of every provisioner job, merged never backwards.
CREATE TABLE provisioner_jobs (
    job_id       uuid PRIMARY KEY,
    workspace_id uuid NOT NULL,
    build_id     uuid NOT NULL,
    transition   text NOT NULL,
    status       text NOT NULL,
    error        text,
    agents       jsonb NOT NULL DEFAULT '[]'::jsonb,
    occurred_at  timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX provisioner_jobs_workspace ON provisioner_jobs (workspace_id, occurred_at DESC);

-- Last heartbeat of every agent.
CREATE TABLE agents (
    agent_id        uuid PRIMARY KEY,
    workspace_id    uuid NOT NULL,
    lifecycle_state text,
    last_seen_at    timestamptz NOT NULL
);
