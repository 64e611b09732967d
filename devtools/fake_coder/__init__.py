"""
A fake Coder: a real HTTP server that speaks Coder's workspace API from memory.

Routes (coderd's, behind its session-token check): ``POST
/api/v2/users/{user}/workspaces`` (and the deprecated organization route),
``GET /api/v2/users/{user}/workspace/{name}``, ``GET /api/v2/workspaces/{id}``,
``POST /api/v2/workspaces/{id}/builds``, ``GET /api/v2/workspaces/{id}/watch-ws``
(WebSocket) and ``GET /api/v2/workspaces/{id}/watch`` (SSE). JSON fields,
status codes and message texts are Coder's; each module names the Coder file
it follows.

Any UUID is a known template (and any UUID a known user, named
``user-<first 8 hex>``) unless configured otherwise. A word in the workspace
name, hyphen-separated, forces an outcome:

- ``reject``: create answers 400 "Validation failed." with a ``name`` validation;
- ``fail``: the start build's job fails (``terraform apply: exit status 1``);
- ``noagent``: the build succeeds with a resource but no agent;
- ``lost``: the agent never connects (``timeout`` after its connection timeout);
- ``startfail``: the agent connects, its lifecycle ends ``start_error``;
- ``slowstart``: the agent connects, its lifecycle stays ``starting``;
- ``stuck``: the job stays ``pending`` (no provisioner picks it up).

Faults, from Python (``fake.faults.fail_next(n, status)``, ``throttle_next(n,
retry_after_s)``, ``delay_next(n, delay_s)``, ``watch_ws_enabled = False``,
``fake.drop_watches()``, ``fake.disconnect_agent(id)``, ``connect_agent``,
``set_lifecycle``) or over HTTP (``/fake/...``, see ``admin``).
"""

from devtools.fake_coder.server import Counters, FakeCoder, FakeCoderOptions, serve
from devtools.fake_coder.state import FORCED_WORDS

__all__ = ["FORCED_WORDS", "Counters", "FakeCoder", "FakeCoderOptions", "serve"]
