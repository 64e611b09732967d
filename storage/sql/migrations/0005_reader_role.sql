-- A role for dashboards (the live page, Grafana): it reads the state, its
-- history and the dashboard views, and nothing else. It is NOLOGIN; grant it
-- to a login (docs/dashboard.md):
--     CREATE ROLE grafana LOGIN PASSWORD '...'; GRANT workspaced_reader TO grafana;
--
-- Roles belong to the whole server, not to one database: the role may exist
-- already (another database on the server was migrated first, or an
-- administrator made it), and two databases may be migrated at once, so the
-- role is created only when missing and a concurrent creation is not an error.
-- A migrating login without CREATEROLE gets an error saying what to do; the
-- grants below need only ownership of the tables, which the migrating login has.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'workspaced_reader') THEN
        BEGIN
            CREATE ROLE workspaced_reader NOLOGIN;
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN
                NULL;  -- created by a concurrent migration of another database
            WHEN insufficient_privilege THEN
                RAISE EXCEPTION 'cannot create role workspaced_reader: %', SQLERRM
                    USING HINT = 'Have an administrator run CREATE ROLE workspaced_reader '
                                 'NOLOGIN, or give this login CREATEROLE, then migrate again.';
        END;
    END IF;
    -- The schema the tables were created in (the search path's first).
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO workspaced_reader', current_schema());
END
$$;

-- The views: their queries run with the owner's rights, so the role needs no
-- grant on what they read (agents, workspaced_settings).
GRANT SELECT ON workspace_state_counts, workspace_stuck_chats, workspace_state_durations,
    workspace_stale_agents TO workspaced_reader;

-- The history, whole: every column is about the state machine.
GRANT SELECT ON workspace_transitions TO workspaced_reader;

-- The state of each chat, except `parameters`: the create command's
-- parameter values, which the chat's model chose and may hold what the user
-- typed (a repository URL with a token, say). A dashboard never needs them.
GRANT SELECT (chat_id, owner_id, state, workspace_id, workspace_name, owner_name, build_id,
    job_id, agent_id, agent_status, template_id, command_id, requested_name, last_error,
    state_entered_at, deadline_at, version, created_at, updated_at)
    ON chat_workspaces TO workspaced_reader;

-- Tool calls, except `answer`: enough to count calls still waiting and to time
-- answers, without the results sent back to the chat.
GRANT SELECT (tool_call_id, chat_id, creator, event_id, received_at, answered_at)
    ON tool_calls TO workspaced_reader;

-- Nothing on inbox, outbox (payloads, dead letters' original bytes),
-- provisioner_jobs, agents, workspaced_settings, bridge_watches or
-- schema_migrations, and no default privileges: a table added later is not
-- readable until the migration that adds it grants it on purpose.
