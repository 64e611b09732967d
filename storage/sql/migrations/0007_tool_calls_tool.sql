-- start_workspace and stop_workspace (docs/contract.md, "Start and stop").
--
-- The tool of each call: a call waiting on a chat is answered as its own tool
-- (created, started or stopped), and its result names it. Rows written
-- before this migration were all create_workspace calls.
ALTER TABLE tool_calls ADD COLUMN tool text NOT NULL DEFAULT 'create_workspace'
    CHECK (tool IN ('create_workspace', 'start_workspace', 'stop_workspace'));

-- Two more states: a stop build asked for or running, and a stopped workspace
-- the chat stays bound to.
ALTER TABLE chat_workspaces DROP CONSTRAINT chat_workspaces_state_check;
ALTER TABLE chat_workspaces ADD CONSTRAINT chat_workspaces_state_check CHECK (state IN
    ('none', 'creating', 'building', 'agent_waiting', 'ready', 'stopping', 'stopped', 'failed'));

CREATE OR REPLACE VIEW workspace_state_counts AS
SELECT s.state, count(c.chat_id) AS chats
FROM (VALUES ('none'), ('creating'), ('building'), ('agent_waiting'), ('ready'), ('stopping'),
             ('stopped'), ('failed'))
     AS s(state)
LEFT JOIN chat_workspaces c ON c.state = s.state
GROUP BY s.state;

-- The tool is no secret: dashboards may count waiting calls per tool.
GRANT SELECT (tool) ON tool_calls TO workspaced_reader;
