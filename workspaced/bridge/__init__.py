"""
Connect workspaced to a real Coder: run commands over its REST API, watch its workspaces.

``commands`` turns ``coder.workspace_commands`` into Coder API calls and
publishes Coder's answers; ``watches`` follows every bound workspace over
Coder's watch stream and publishes job updates and agent heartbeats;
``mapping`` is the field-by-field translation from Coder's JSON to our events.
"""
