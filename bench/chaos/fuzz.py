"""
Generate malformed and odd records for every input topic, each with what it may become.

Every generated record says which outcomes the contract allows for it:
``dead_letter`` (R15), ``error_result`` (R1: a tool call whose envelope is
valid but whose arguments are not) or ``accepted`` (a valid envelope that
names things nobody knows: recorded as seen, changes nothing). A few cases
where the contract leaves room (a NUL character in a Coder field PostgreSQL
cannot store, a huge integer) allow two outcomes.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from bench.chaos import workload

DEAD = "dead_letter"
ERROR = "error_result"
ACCEPTED = "accepted"
ANSWERED = "answered"  # a non-error result: never allowed for a fuzzed record
SOURCE = "chaos-fuzz"
HUGE_BYTES = 1_000_000
OVERSIZED_ENTRIES = 60_000
ROLES = ("tool_calls", "workspace_command_results", "provisioner_job_updates", "agent_heartbeats")
TYPES = {
    "tool_calls": "chat.tool_call.v1",
    "workspace_command_results": "coder.workspace.created.v1",
    "provisioner_job_updates": "coder.provisioner_job.updated.v1",
    "agent_heartbeats": "coder.agent.heartbeat.v1",
}
_MARK = "\u2603MARK\u2603"

Header = tuple[str, bytes | None]


@dataclass(frozen=True, slots=True)
class FuzzRecord:
    """
    One record to publish on ``role``'s topic, and the outcomes the contract allows for it.

    ``tool_call_id`` is set when an error result is expected; ``ce_id`` (and
    ``agent_id`` for heartbeats, which skip the inbox) find an accepted record.
    """

    kind: str
    role: str
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...]
    allowed: frozenset[str]
    note: str
    tool_call_id: str | None = None
    ce_id: str | None = None
    agent_id: str | None = None


def headers(ce_type: str, ce_id: str, /, **replace: bytes | None) -> list[Header]:
    """
    Return binary-mode CloudEvents headers; ``replace`` swaps or (with None) nulls one.
    """
    found: list[Header] = [
        ("ce_specversion", b"1.0"),
        ("ce_id", ce_id.encode()),
        ("ce_source", SOURCE.encode()),
        ("ce_type", ce_type.encode()),
        ("ce_time", b"2025-01-31T12:00:00Z"),
        ("content-type", b"application/json"),
    ]
    return [(name, replace.get(name.replace("-", "_"), value)) for name, value in found]


def _raw(data: Any, mark: bytes) -> bytes:
    """
    Serialise ``data`` with the string ``_MARK`` replaced by raw JSON bytes ``mark``.
    """
    return orjson.dumps(data).replace(orjson.dumps(_MARK), mark)


class _Maker:
    """
    Build the records of one topic from one random generator.
    """

    def __init__(self, role: str, rng: random.Random, index: int) -> None:
        self.role = role
        self.rng = rng
        self.index = index
        self.ce_id = workload.new_uuid(rng)
        self.ids = [workload.new_uuid(rng) for _ in range(6)]

    def uuid(self, i: int) -> str:
        return self.ids[i]

    def tool_call_id(self, kind: str) -> str:
        return f"fuzz-{self.index}-{kind}-{self.ce_id[:8]}"

    def valid(self, ce_type: str | None = None) -> tuple[str, dict[str, Any]]:
        """
        Return a valid event for this topic that names nothing anybody knows.
        """
        u = self.uuid
        if self.role == "tool_calls":
            data: dict[str, Any] = {
                "tool_call_id": self.tool_call_id("call"),
                "chat_id": u(0),
                "owner_id": workload.OWNER_ID,
                "tool": "create_workspace",
                "arguments": {"template_id": "not-a-template", "name": "fuzz"},
            }
            return TYPES["tool_calls"], data
        if self.role == "workspace_command_results":
            if (ce_type or "").endswith("create_failed.v1"):
                failed = {"command_id": u(0), "chat_id": u(1), "status_code": 409}
                failed |= {"message": "nope", "detail": None, "validations": []}
                return "coder.workspace.create_failed.v1", failed
            created = {"command_id": u(0), "chat_id": u(1), "workspace_id": u(2)}
            created |= {"workspace_name": "ws", "owner_name": "alice"}
            created |= {"build_id": u(3), "job_id": u(4)}
            return TYPES[self.role], created
        if self.role == "provisioner_job_updates":
            job = {"job_id": u(0), "workspace_id": u(1), "build_id": u(2)}
            job |= {"transition": "start", "status": "running", "error": None}
            job |= {"agents": [{"id": u(3), "name": "main"}], "occurred_at": "2025-01-31T12:00:00Z"}
            return TYPES[self.role], job
        beat = {"agent_id": u(0), "workspace_id": u(1), "lifecycle_state": "ready"}
        beat |= {"occurred_at": "2025-01-31T12:00:00Z"}
        return TYPES[self.role], beat

    def record(
        self,
        kind: str,
        value: bytes | None,
        allowed: Iterable[str],
        note: str,
        *,
        hdrs: Iterable[Header] | None = None,
        ce_type: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> FuzzRecord:
        ce_type = ce_type or TYPES[self.role]
        allowed = frozenset(allowed)
        tool_call_id = None
        if ERROR in allowed and data is not None:
            tool_call_id = data.get("tool_call_id")
        agent_id = data.get("agent_id") if self.role == "agent_heartbeats" and data else None
        return FuzzRecord(
            kind,
            self.role,
            self.uuid(0).encode(),
            value,
            tuple(headers(ce_type, self.ce_id) if hdrs is None else hdrs),
            allowed,
            note,
            tool_call_id if isinstance(tool_call_id, str) else None,
            self.ce_id,
            agent_id if isinstance(agent_id, str) else None,
        )

    def accepted_or_error(self) -> frozenset[str]:
        """
        Return what a valid-but-unknown record of this topic gets: an error result for calls.
        """
        return frozenset({ERROR if self.role == "tool_calls" else ACCEPTED})


def _random_bytes(m: _Maker) -> list[FuzzRecord]:
    value = m.rng.randbytes(m.rng.randint(0, 2000))
    return [m.record("random_bytes", value, {DEAD}, f"{len(value)} random bytes")]


def _null_value(m: _Maker) -> list[FuzzRecord]:
    return [m.record("null_value", None, {DEAD}, "a null value (tombstone)")]


def _invalid_utf8(m: _Maker) -> list[FuzzRecord]:
    ce_type, data = m.valid()
    field_name = "tool_call_id" if m.role == "tool_calls" else next(iter(data))
    data[field_name] = _MARK
    value = _raw(data, b'"\xff\xfe\x80bad"')
    return [m.record("invalid_utf8", value, {DEAD}, f"{field_name} is not UTF-8", ce_type=ce_type)]


def _nul_string(m: _Maker) -> list[FuzzRecord]:
    ce_type, data = m.valid()
    if m.role == "tool_calls":
        variant = m.rng.randrange(3)
        if variant == 0:
            data["arguments"] = {"template_id": workload.TEMPLATE_ID, "parameters": {"r": "eu\0"}}
            note, allowed = "NUL in a parameter value", {ERROR}
        elif variant == 1:
            data["arguments"] = {"template_id": "\0" + workload.TEMPLATE_ID}
            note, allowed = "NUL in template_id", {ERROR}
        else:
            data["tool_call_id"] = m.tool_call_id("nul") + "\0x"
            note, allowed = "NUL in tool_call_id", {DEAD, ERROR}
    else:
        field_name = {
            "workspace_command_results": "workspace_name",
            "provisioner_job_updates": "error",
            "agent_heartbeats": "lifecycle_state",
        }[m.role]
        data[field_name] = "x\0y"
        note, allowed = f"NUL in {field_name}", {DEAD, ACCEPTED}
    value = orjson.dumps(data)
    return [m.record("nul_string", value, allowed, note, ce_type=ce_type, data=data)]


def _huge_value(m: _Maker) -> list[FuzzRecord]:
    if m.rng.random() < 0.5:
        value = m.rng.randbytes(HUGE_BYTES)
        return [m.record("huge_value", value, {DEAD}, "1 MB of random bytes")]
    ce_type, data = m.valid()
    data["padding"] = "p" * HUGE_BYTES
    note = "1 MB JSON with a huge ignored field"
    value = orjson.dumps(data)
    return [m.record("huge_value", value, m.accepted_or_error(), note, ce_type=ce_type, data=data)]


def _missing_headers(m: _Maker) -> list[FuzzRecord]:
    _, data = m.valid()
    hdrs: list[Header] = []
    if m.rng.random() < 0.5:
        hdrs = [h for h in headers(TYPES[m.role], m.ce_id) if h[0] != "ce_type"]
    note = "no headers" if not hdrs else "no ce_type"
    return [m.record("missing_headers", orjson.dumps(data), {DEAD}, note, hdrs=hdrs)]


def _wrong_headers(m: _Maker) -> list[FuzzRecord]:
    ce_type, data = m.valid()
    value = orjson.dumps(data)
    other = next(t for r, t in TYPES.items() if r != m.role)
    variants: list[tuple[str, dict[str, bytes | None]]] = [
        ("specversion 0.3", {"ce_specversion": b"0.3"}),
        ("a type of another topic", {"ce_type": other.encode()}),
        ("content-type text/plain", {"content_type": b"text/plain"}),
        ("empty ce_id", {"ce_id": b""}),
        ("NUL in ce_id", {"ce_id": b"id\0x"}),
        ("ce_source not UTF-8", {"ce_source": b"\xff\xfe"}),
    ]
    note, swap = m.rng.choice(variants)
    if m.rng.random() < 0.15:
        note, swap = (
            "structured mode, value an array",
            {"content_type": b"application/cloudevents+json"},
        )
        value = b"[1, 2, 3]"
    hdrs = headers(ce_type, m.ce_id, **swap)
    return [m.record("wrong_headers", value, {DEAD}, note, hdrs=hdrs)]


def _null_header(m: _Maker) -> list[FuzzRecord]:
    ce_type, data = m.valid()
    variant = m.rng.randrange(3)
    if variant == 0:
        hdrs = headers(ce_type, m.ce_id, ce_id=None)
        return [m.record("null_header", orjson.dumps(data), {DEAD}, "ce_id null", hdrs=hdrs)]
    hdrs = [*headers(ce_type, m.ce_id), ("x-trace", None)]
    if variant == 1:
        value = b"{not json"
        return [m.record("null_header", value, {DEAD}, "a null header on a bad record", hdrs=hdrs)]
    note = "a null header on a valid record"
    allowed = m.accepted_or_error()
    return [m.record("null_header", orjson.dumps(data), allowed, note, hdrs=hdrs, data=data)]


def _dlq_header_nul(m: _Maker) -> list[FuzzRecord]:
    hdrs = [
        *headers(TYPES[m.role], m.ce_id),
        ("dlq_\0reason", b"forged\0"),
        ("dlq_reason", b"forged"),
        ("dlq_offset", None),
    ]
    note = "dlq_ headers (NUL in a name, a null value) on a bad record"
    return [m.record("dlq_header_nul", b"\x00\x01", {DEAD}, note, hdrs=hdrs)]


def _wrong_types(m: _Maker) -> list[FuzzRecord]:
    ce_type, data = m.valid()
    if m.role == "tool_calls" and m.rng.random() < 0.5:
        data["arguments"] = {"template_id": 42}
        note, allowed = "template_id is a number", {ERROR}
    else:
        field_name = m.rng.choice([k for k in data if k != "tool"])
        data[field_name] = m.rng.choice([42, True, {"a": 1}, 1.5])
        note, allowed = f"{field_name} has a wrong JSON type", {DEAD}
        if field_name == "arguments":
            allowed = {ERROR}  # only the arguments wrong: an error result (R15)
        elif field_name == "occurred_at":
            allowed = {DEAD, ACCEPTED}  # a number is read as a Unix time (lax)
    value = orjson.dumps(data)
    return [m.record("wrong_types", value, allowed, note, ce_type=ce_type, data=data)]


def _huge_numbers(m: _Maker) -> list[FuzzRecord]:
    ce_type, data = m.valid()
    number = m.rng.choice(
        [b"1e999", b"-1e400", b"1" + b"0" * 400, b"123456789012345678901234567890"]
    )
    if m.role == "tool_calls":
        data["arguments"] = {"template_id": workload.TEMPLATE_ID, "name": _MARK}
        allowed = {DEAD, ERROR}
    elif m.role == "workspace_command_results":
        ce_type, data = m.valid("coder.workspace.create_failed.v1")
        data["status_code"] = _MARK
        allowed = {DEAD, ACCEPTED}
    else:
        data["occurred_at"] = _MARK
        allowed = {DEAD}
    value = _raw(data, number)
    note = f"the number {number[:12].decode()}… ({len(number)} digits)"
    return [m.record("huge_numbers", value, allowed, note, ce_type=ce_type, data=data)]


def _bad_uuids(m: _Maker) -> list[FuzzRecord]:
    ce_type, data = m.valid()
    bad = m.rng.choice(["not-a-uuid", "", "g" * 36, "123", "{" + "0" * 36 + "}"])
    if m.role == "tool_calls" and m.rng.random() < 0.5:
        data["arguments"] = {"template_id": bad or "x"}
        note, allowed = "template_id is not a UUID", {ERROR}
    else:
        field_name = next(k for k in data if k.endswith("_id") and k != "tool_call_id")
        data[field_name] = bad
        note, allowed = f"{field_name} is not a UUID", {DEAD}
    value = orjson.dumps(data)
    return [m.record("bad_uuids", value, allowed, note, ce_type=ce_type, data=data)]


def _oversized_validation(m: _Maker) -> list[FuzzRecord]:
    ce_type, data = m.valid()
    if m.role == "tool_calls":
        data["arguments"] = {
            "template_id": workload.TEMPLATE_ID,
            "parameters": {f"p{i}": i for i in range(OVERSIZED_ENTRIES // 2)},
        }
        note, allowed = f"{OVERSIZED_ENTRIES // 2} parameters that are not strings", {ERROR}
    elif m.role == "workspace_command_results":
        ce_type, data = m.valid("coder.workspace.create_failed.v1")
        data["validations"] = [{}] * OVERSIZED_ENTRIES
        note, allowed = f"{OVERSIZED_ENTRIES} empty validations", {DEAD}
    elif m.role == "provisioner_job_updates":
        data["agents"] = [{}] * OVERSIZED_ENTRIES
        note, allowed = f"{OVERSIZED_ENTRIES} empty agents", {DEAD}
    else:
        data = {f"f{i}": [] for i in range(OVERSIZED_ENTRIES // 4)}
        note, allowed = f"{OVERSIZED_ENTRIES // 4} unknown fields, none required", {DEAD}
    value = orjson.dumps(data)
    return [m.record("oversized_validation", value, allowed, note, ce_type=ce_type, data=data)]


def _nonsense_refs(m: _Maker) -> list[FuzzRecord]:
    if m.role != "tool_calls":
        failed = m.role == "workspace_command_results" and m.rng.random() < 0.5
        ce_type, data = m.valid("coder.workspace.create_failed.v1" if failed else None)
        note = f"valid {ce_type} naming unknown ids"
        value = orjson.dumps(data)
        return [m.record("nonsense_refs", value, {ACCEPTED}, note, ce_type=ce_type, data=data)]
    # A call with bad arguments, then a valid call of another chat reusing its id:
    # the first gets its error result, the second is ignored (R12).
    ce_type, first = m.valid()
    one = m.record("nonsense_refs", orjson.dumps(first), {ERROR}, "bad arguments", data=first)
    m.ce_id = workload.new_uuid(m.rng)
    second = first | {"chat_id": m.uuid(5)}
    second["arguments"] = {"template_id": workload.TEMPLATE_ID, "name": "reused"}
    note = "valid call of another chat reusing a tool_call_id"
    two = m.record("nonsense_refs", orjson.dumps(second), {ACCEPTED}, note)
    return [one, two]


Generator = Callable[[_Maker], list[FuzzRecord]]
GENERATORS: dict[str, Generator] = {
    "random_bytes": _random_bytes,
    "null_value": _null_value,
    "invalid_utf8": _invalid_utf8,
    "nul_string": _nul_string,
    "huge_value": _huge_value,
    "missing_headers": _missing_headers,
    "wrong_headers": _wrong_headers,
    "null_header": _null_header,
    "dlq_header_nul": _dlq_header_nul,
    "wrong_types": _wrong_types,
    "huge_numbers": _huge_numbers,
    "bad_uuids": _bad_uuids,
    "oversized_validation": _oversized_validation,
    "nonsense_refs": _nonsense_refs,
}
# Each is large (about 1 MB, or tens of thousands of entries): a few per topic.
CAPPED = frozenset({"huge_value", "oversized_validation"})


def generate(role: str, count: int, rng: random.Random, big_cap: int) -> list[FuzzRecord]:
    """
    Return ``count`` records (or one more, for a pair) for ``role``'s topic.

    Every kind appears once before any repeats; the large kinds at most
    ``big_cap`` times.
    """
    made: list[FuzzRecord] = []
    used: Counter[str] = Counter()
    kinds = list(GENERATORS)
    while len(made) < count:
        open_kinds = [k for k in kinds if k not in CAPPED or used[k] < big_cap]
        fresh = [k for k in open_kinds if not used[k]]
        kind = fresh[0] if fresh else rng.choice(open_kinds)
        used[kind] += 1
        made += GENERATORS[kind](_Maker(role, rng, len(made)))
    return made
