"""
Plan the tool calls of a chaos run: which chats, when, how many calls, which outcome.

The plan is built so that exactly one create command per chat is legitimate,
which makes a second ``command_id`` for a chat a duplicate without further
reasoning: chats whose build succeeds may get several calls (they all wait on
the one create, or find the workspace ready and reachable with the long
inactivity timeout the runs use), and chats that fail get a single call (a
second call after the failure would rightly create again). Redeliveries
repeat a call with the same ``tool_call_id`` and a new ``ce_id``; they never
create (R12).
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field

TEMPLATE_ID = "8a1b2c3d-4e5f-4a6b-9c7d-0e1f2a3b4c5d"
OWNER_ID = "5f0c6d2a-9b1e-4c3d-8e7f-a1b2c3d4e5f6"

# The simulator forces an outcome by a word in the workspace name.
OUTCOMES = {"ok": 0.7, "noagent": 0.1, "fail": 0.1, "reject": 0.1}
SUCCEEDS = frozenset({"ok", "noagent"})
MAX_CALLS_PER_CHAT = 3
REDELIVERY_SHARE = 0.1


@dataclass(frozen=True, slots=True)
class Call:
    """
    One tool call record to publish at ``at_s`` seconds into the run.
    """

    at_s: float
    chat_id: str
    tool_call_id: str
    name: str
    redelivery: bool = False


@dataclass(frozen=True, slots=True)
class Plan:
    """
    Every chat of a run with its outcome, and every call in the order to send it.
    """

    outcomes: dict[str, str]
    calls: list[Call] = field(default_factory=list)

    def tool_call_ids(self) -> dict[str, str]:
        """
        Return each distinct tool call id with its chat.
        """
        return {c.tool_call_id: c.chat_id for c in self.calls}

    def expects_error(self, chat_id: str) -> bool:
        """
        Tell whether the calls of ``chat_id`` must get an error result.
        """
        return self.outcomes[chat_id] not in SUCCEEDS


def new_uuid(rng: random.Random) -> str:
    """
    Return a random UUID drawn from ``rng``, so a seed repeats a run.
    """
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _outcome(rng: random.Random, outcomes: dict[str, float]) -> str:
    return rng.choices(list(outcomes), weights=list(outcomes.values()))[0]


def plan(
    n_chats: int,
    window_s: float,
    rng: random.Random,
    outcomes: dict[str, float] | None = None,
    redelivery_share: float = REDELIVERY_SHARE,
) -> Plan:
    """
    Spread ``n_chats`` chats over ``window_s`` seconds, with bursts and redeliveries.

    A redelivery comes 0.5 to 5 s after its call, so the last calls may come
    up to 5 s after the window.
    """
    weights = outcomes or OUTCOMES
    chats: dict[str, str] = {}
    calls: list[Call] = []
    for i in range(n_chats):
        chat_id = new_uuid(rng)
        outcome = _outcome(rng, weights)
        chats[chat_id] = outcome
        name = f"w{i}" if outcome == "ok" else f"{outcome}-{i}"
        at = rng.uniform(0, window_s)
        burst = rng.randint(1, MAX_CALLS_PER_CHAT) if outcome in SUCCEEDS else 1
        for j in range(burst):
            tool_call_id = f"call-{i}-{j}-{rng.getrandbits(32):08x}"
            calls.append(Call(at + rng.uniform(0, 0.05), chat_id, tool_call_id, name))
            if rng.random() < redelivery_share:
                later = at + rng.uniform(0.5, 5.0)
                calls.append(Call(later, chat_id, tool_call_id, name, redelivery=True))
    calls.sort(key=lambda c: c.at_s)
    return Plan(chats, calls)


def tool_call_data(call: Call) -> dict[str, object]:
    """
    Return the ``chat.tool_call.v1`` data of ``call``.
    """
    return {
        "tool_call_id": call.tool_call_id,
        "chat_id": call.chat_id,
        "owner_id": OWNER_ID,
        "tool": "create_workspace",
        "arguments": {"template_id": TEMPLATE_ID, "name": call.name},
    }
