"""
The pieces of the chaos suite (bench/chaos) that need no service: generators, counting, report.
"""

from __future__ import annotations

import functools
import random
import re
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.chaos import fuzz, ledger, processes, report, workload
from consumers import codec
from statemachine import events

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
MAX_BYTES = 1_048_576


@functools.cache
def _records(role: str, count: int = 400, seed: int = 7, cap: int = 2) -> list[fuzz.FuzzRecord]:
    return fuzz.generate(role, count, random.Random(seed), cap)


def _of(kind: str) -> list[fuzz.FuzzRecord]:
    return [r for role in fuzz.ROLES for r in _records(role) if r.kind == kind]


def _data(record: fuzz.FuzzRecord) -> Any:
    return orjson.loads(record.value or b"")


# The fuzz generators produce what they claim.


@pytest.mark.parametrize("role", fuzz.ROLES)
def test_every_kind_of_fuzz_appears_on_every_topic_and_the_large_ones_stay_capped(
    role: str,
) -> None:
    made = _records(role, count=300, cap=2)
    kinds = Counter(r.kind for r in made)
    assert set(kinds) == set(fuzz.GENERATORS)
    assert all(kinds[k] <= 2 for k in fuzz.CAPPED)
    assert len(made) in {300, 301}  # a pair may end the list
    assert all(r.role == role and r.allowed for r in made)


def test_the_same_seed_gives_the_same_records_and_ids_are_unique() -> None:
    one, two = _records("tool_calls", seed=3), _records("tool_calls", seed=3)
    assert [(r.value, r.headers) for r in one] == [(r.value, r.headers) for r in two]
    ids = [r.tool_call_id for r in one if r.tool_call_id]
    assert len(ids) == len(set(ids))
    assert len({r.ce_id for r in one if r.kind != "nonsense_refs"}) == len(
        [r for r in one if r.kind != "nonsense_refs"]
    )


def test_invalid_utf8_records_are_not_utf8() -> None:
    for r in _of("invalid_utf8"):
        with pytest.raises(UnicodeDecodeError):
            (r.value or b"").decode()


def test_nul_records_carry_a_nul_character_in_a_json_string() -> None:
    for r in _of("nul_string"):
        assert "\x00" in orjson.dumps(_data(r)).decode("unicode_escape")
        assert b"\\u0000" in (r.value or b"")


def test_huge_values_are_a_megabyte() -> None:
    found = _of("huge_value")
    assert found
    assert all(len(r.value or b"") >= fuzz.HUGE_BYTES for r in found)


def test_null_header_records_have_a_header_whose_value_is_null() -> None:
    for r in _of("null_header"):
        assert any(value is None for _, value in r.headers)


def test_dlq_header_records_carry_a_dlq_name_with_nul_and_a_null_value() -> None:
    for r in _of("dlq_header_nul"):
        names = [name for name, _ in r.headers]
        assert any(n.startswith("dlq_") and "\x00" in n for n in names)
        assert ("dlq_offset", None) in r.headers


def test_missing_header_records_lack_the_type_at_least() -> None:
    for r in _of("missing_headers"):
        assert "ce_type" not in [name for name, _ in r.headers]


def test_oversized_validation_records_have_tens_of_thousands_of_bad_entries() -> None:
    jobs = [r for r in _of("oversized_validation") if r.role == "provisioner_job_updates"]
    assert jobs
    for r in jobs:
        assert _data(r)["agents"] == [{}] * fuzz.OVERSIZED_ENTRIES
    for r in _of("oversized_validation"):
        assert len(r.value or b"") > 100_000


def test_huge_numbers_are_beyond_64_bits_or_a_double() -> None:
    for r in _of("huge_numbers"):
        assert re.search(rb"[:\[,]\s*-?(1e999|1e400|\d{30,})", r.value or b"")


def test_bad_uuid_records_have_an_id_that_is_not_a_uuid() -> None:
    for r in _of("bad_uuids"):
        data = _data(r)
        ids = {k: v for k, v in data.items() if k.endswith("_id") and k != "tool_call_id"}
        ids |= {"template_id": data.get("arguments", {}).get("template_id", "x")}
        assert any(not isinstance(v, str) or not UUID_RE.match(v) for v in ids.values())


def test_wrong_type_records_have_the_field_they_name_not_a_string() -> None:
    found = _of("wrong_types")
    assert found
    for r in found:
        data = _data(r)
        if r.note == "template_id is a number":
            assert data["arguments"]["template_id"] == 42
        else:
            field = r.note.removesuffix(" has a wrong JSON type")
            wanted = {"arguments": dict, "agents": list, "status_code": int}.get(field, str)
            assert not isinstance(data[field], wanted)


def test_a_reused_tool_call_id_comes_as_an_invalid_call_then_a_valid_one_of_another_chat() -> None:
    made = [r for r in _records("tool_calls") if r.kind == "nonsense_refs"]
    firsts, seconds = made[0::2], made[1::2]
    assert firsts and len(firsts) == len(seconds)
    for first, second in zip(firsts, seconds, strict=True):
        a, b = _data(first), _data(second)
        assert a["tool_call_id"] == b["tool_call_id"] == first.tool_call_id
        assert a["chat_id"] != b["chat_id"]
        assert first.key == second.key, "one partition keeps them in order"
        assert first.allowed == {fuzz.ERROR}
        assert second.allowed == {fuzz.ACCEPTED}
        assert second.tool_call_id is None and first.ce_id != second.ce_id


def _codec_outcome(record: fuzz.FuzzRecord) -> str:
    raw = codec.RawRecord(
        record.role, f"t.{record.role}", 0, 0, record.key, record.value, record.headers
    )  # type: ignore[arg-type]
    decoded = codec.decode(raw, MAX_BYTES)
    if isinstance(decoded, codec.DeadLetter):
        return fuzz.DEAD
    if isinstance(decoded.event, events.InvalidToolCall):
        return fuzz.ERROR
    return fuzz.ACCEPTED


@pytest.mark.parametrize("role", fuzz.ROLES)
def test_the_codec_gives_each_fuzzed_record_an_outcome_it_allows(role: str) -> None:
    # Records PostgreSQL may refuse later (NUL in a Coder field) allow the dead letter too.
    for r in _records(role):
        assert _codec_outcome(r) in r.allowed, (r.kind, r.note)


# Counting answers, creates, stuck chats and timeouts.

SENT = {"c1": "chat-a", "c2": "chat-a", "c3": "chat-b"}


def _answer(
    call: str, content: dict[str, Any], *, error: bool = False, at: float = 1.0
) -> ledger.Answer:
    return ledger.Answer(call, SENT.get(call, "chat-x"), error, content, at)


def test_a_call_without_answer_is_lost_and_named() -> None:
    t = ledger.tally(SENT, [_answer("c1", {"created": True})], [], {})
    assert (t.calls, t.answered, t.lost) == (3, 1, 2)
    assert t.examples["lost"] == ["c2", "c3"]
    assert sorted(t.lost_chats) == ["chat-a", "chat-b"]


def test_the_same_answer_twice_is_a_repeat_and_another_content_a_duplicate() -> None:
    answers = [
        _answer("c1", {"created": True, "workspace_name": "a/b"}),
        _answer("c1", {"workspace_name": "a/b", "created": True}),  # key order does not matter
        _answer("c2", {"created": False}),
        _answer("c2", {"error": "boom"}, error=True),
        _answer("c3", {"created": True}),
    ]
    t = ledger.tally(SENT, answers, [], {})
    assert (t.lost, t.repeated_answers, t.duplicate_answers) == (0, 1, 1)
    assert "c2" in t.examples["duplicate_answers"][0]


def test_answers_to_calls_never_sent_are_counted_apart() -> None:
    t = ledger.tally({"c1": "chat-a"}, [_answer("c1", {}), _answer("probe-1", {})], [], {})
    assert (t.answered, t.lost, t.unexpected_answers) == (1, 0, 1)


def test_a_second_command_id_for_a_chat_is_a_duplicate_create_and_a_repeat_is_not() -> None:
    commands = [
        ("chat-a", "cmd-1"),
        ("chat-a", "cmd-1"),  # the same command published twice (R16)
        ("chat-b", "cmd-2"),
        ("chat-b", "cmd-3"),
        ("chat-b", "cmd-4"),
        ("chat-x", "cmd-5"),  # not a chat of the run
        ("chat-x", "cmd-6"),
    ]
    t = ledger.tally(SENT, [], commands, {})
    assert t.duplicate_creates == 2
    assert t.examples["duplicate_creates"] == ["chat chat-b: ['cmd-2', 'cmd-3', 'cmd-4']"]


def test_chats_left_in_a_non_terminal_state_are_stuck() -> None:
    states = {"chat-a": "building", "chat-b": "ready", "chat-x": "creating"}
    t = ledger.tally(SENT, [], [], states)
    assert (t.stuck, t.stuck_chats) == (1, ["chat-a"])
    for state in ("ready", "failed", "none"):
        assert ledger.tally(SENT, [], [], {"chat-a": state, "chat-b": state}).stuck == 0


def test_timeout_answers_are_false_unless_the_predicate_excuses_them() -> None:
    build = {"error": "workspace build failed: timed out waiting for workspace build"}
    agent = {"created": True, "workspace_name": "a/b", "agent_status": "not_ready"}
    answers = [_answer("c1", build, error=True), _answer("c2", agent), _answer("c3", {})]
    assert ledger.tally(SENT, answers, [], {}).false_timeouts == 2
    excused = ledger.tally(SENT, answers, [], {}, timeout_is_false=lambda a: a.tool_call_id == "c2")
    assert excused.false_timeouts == 1
    assert not ledger.is_timeout(_answer("c1", {"error": "workspace build failed: boom"}))


def test_an_error_where_success_was_planned_is_a_wrong_answer() -> None:
    answers = [
        _answer("c1", {"created": True}),
        _answer("c2", {"error": "x"}, error=True),
        _answer("c3", {"error": "y"}, error=True),
    ]
    t = ledger.tally(SENT, answers, [], {}, expects_error=lambda chat: chat == "chat-b")
    assert t.wrong_answers == 1
    assert t.examples["wrong_answers"][0].startswith("c2")


def test_the_last_answer_time_and_the_waits_use_first_answers() -> None:
    answers = [
        _answer("c1", {}, at=5.0),
        _answer("c1", {}, at=9.0),
        _answer("c2", {}, at=7.0),
        _answer("c3", {}, at=6.0),
    ]
    assert ledger.tally(SENT, answers, [], {}).last_answer_at == 7.0
    assert ledger.waits(answers, {"c1": 4.0, "c2": 1.0}) == [1.0, 6.0]


def test_tool_result_values_are_parsed_and_junk_is_skipped() -> None:
    good = {"tool_call_id": "c1", "chat_id": "chat-a", "is_error": False, "content": {"x": 1}}
    found = ledger.answers_from([(orjson.dumps(good), 2.0), (b"not json", 3.0), (None, 4.0)])
    assert found == [ledger.Answer("c1", "chat-a", is_error=False, content={"x": 1}, at=2.0)]


# Judging the fuzzed records.


def _fuzzed(kind: str, allowed: set[str], **ids: Any) -> fuzz.FuzzRecord:
    return fuzz.FuzzRecord(kind, "tool_calls", None, b"", (), frozenset(allowed), kind, **ids)


def test_each_fuzzed_record_is_judged_by_its_position_result_or_inbox_entry() -> None:
    sent = [
        (_fuzzed("dead", {fuzz.DEAD}), ("t", 0, 1)),
        (_fuzzed("dead-twice", {fuzz.DEAD}), ("t", 0, 2)),
        (_fuzzed("error", {fuzz.ERROR}, tool_call_id="e1"), ("t", 1, 1)),
        (_fuzzed("accepted", {fuzz.ACCEPTED}, ce_id="ce-1"), ("t", 1, 2)),
        (_fuzzed("beat", {fuzz.ACCEPTED}, ce_id="ce-9", agent_id="ag-1"), ("t", 2, 1)),
        (_fuzzed("answered", {fuzz.ERROR}, tool_call_id="ok1"), ("t", 1, 3)),
        (_fuzzed("wrong", {fuzz.ERROR}, tool_call_id="e2"), ("t", 1, 4)),
        (_fuzzed("lost", {fuzz.DEAD}), ("t", 3, 1)),
    ]
    seen = ledger.Observed(
        dead_letters={("t", 0, 1): 1, ("t", 0, 2): 2, ("t", 1, 4): 1},
        results={"e1": [True], "ok1": [False]},
        inbox={"ce-1"},
        agents={"ag-1"},
    )
    t = ledger.judge(sent, seen)
    assert t.records == 8
    assert t.outcomes == Counter({fuzz.DEAD: 3, fuzz.ERROR: 1, fuzz.ACCEPTED: 2, fuzz.ANSWERED: 1})
    assert (t.unaccounted, t.wrong_outcome, t.repeated_dead_letters) == (1, 2, 1)
    assert t.per_kind["lost"] == Counter({"unaccounted": 1})
    assert "lost" in t.examples["unaccounted"][0]


# The workload.


def test_the_plan_gives_failing_chats_one_call_and_names_that_force_the_outcome() -> None:
    plan = workload.plan(400, 10.0, random.Random(5))
    per_chat: dict[str, set[str]] = {}
    for call in plan.calls:
        per_chat.setdefault(call.chat_id, set()).add(call.tool_call_id)
        outcome = plan.outcomes[call.chat_id]
        if outcome == "ok":
            assert not any(
                w in call.name for w in ("reject", "fail", "noagent", "lost", "stop", "delete")
            )
        else:
            assert outcome in call.name
    for chat_id, calls in per_chat.items():
        limit = 1 if plan.expects_error(chat_id) else workload.MAX_CALLS_PER_CHAT
        assert 1 <= len(calls) <= limit
    assert set(plan.outcomes) == set(per_chat)
    assert [c.at_s for c in plan.calls] == sorted(c.at_s for c in plan.calls)
    redelivered = [c for c in plan.calls if c.redelivery]
    assert redelivered
    assert {c.tool_call_id for c in redelivered} <= set(plan.tool_call_ids())
    assert all(uuid.UUID(c) for c in plan.outcomes)


def test_a_plan_without_redeliveries_has_one_record_per_call() -> None:
    plan = workload.plan(50, 1.0, random.Random(1), {"ok": 1.0}, redelivery_share=0)
    assert len(plan.calls) == len(plan.tool_call_ids())
    assert not any(plan.expects_error(c) for c in plan.outcomes)


# The report.


def _run(mode: str, broker: str, value: int = 0, known: bool = False) -> dict[str, Any]:
    inv = {"name": "lost answers", "value": value, "ok": value == 0, "known": known, "note": ""}
    return {
        "mode": mode,
        "broker": broker,
        "broker_name": broker,
        "started_at": "2026-01-01T00:00:00+00:00",
        "machine": {"cpus": 2, "memory_gib": 8, "python": "3.11"},
        "total_s": 10.0,
        "command": "python -m bench.chaos",
        "results": [
            {
                "scenario": "kills",
                "title": "a title -- with dashes | and a bar",
                "figures": {"calls": 3},
                "invariants": [inv],
                "examples": {"lost": ["c1 --> c2"]},
                "notes": [],
            }
        ],
    }


def test_the_document_keeps_its_prose_and_each_broker_keeps_its_own_figures(
    tmp_path: Path,
) -> None:
    doc = tmp_path / "reliability.md"
    doc.write_text(
        f"# Reliability\n\nProse before.\n\n{report.START}\nold\n{report.END}\n\nProse after.\n"
    )
    report.write(doc, _run("full", "tansu", 0))
    report.write(doc, _run("full", "apache", 0))
    report.write(doc, _run("full", "tansu", 4))
    text = doc.read_text()
    assert text.startswith("# Reliability\n\nProse before.")
    assert text.rstrip().endswith("Prose after.")
    assert "\nold\n" not in text
    runs = report.stored_runs(text)
    assert [(r["mode"], r["broker"]) for r in runs] == [("full", "tansu"), ("full", "apache")]
    assert runs[0]["results"][0]["invariants"][0]["value"] == 4
    assert runs[0]["results"][0]["examples"]["lost"] == ["c1 --> c2"]
    assert "### Full run on apache" in text


def test_a_document_without_markers_gets_them_appended(tmp_path: Path) -> None:
    doc = tmp_path / "reliability.md"
    doc.write_text("# Mine\n")
    report.write(doc, _run("quick", "tansu"))
    text = doc.read_text()
    assert text.startswith("# Mine\n") and report.START in text and report.END in text


def test_known_failures_fail_the_run_only_when_strict() -> None:
    known = _run("quick", "tansu", 3, known=True)["results"]
    plain = _run("quick", "tansu", 3)["results"]
    assert report.failed(known, strict=False) == []
    assert report.failed(known, strict=True) == ["kills: lost answers = 3"]
    assert report.failed(plain, strict=False) == ["kills: lost answers = 3"]
    broken = [{"scenario": "fuzz", "title": "fuzz", "error": "TimeoutError: x"}]
    assert report.failed(broken, strict=False) == ["fuzz: TimeoutError: x"]
    assert "FAIL (known)" in report.table(known[0] | {"duration_s": 1.0})


def test_the_last_error_of_a_process_log_is_found() -> None:
    tail = (
        '{"event": "daemon_started", "level": "info"}\n'
        '{"event": "command_failed", "level": "error", "error": "boom", "password": "x"}\n'
        "Traceback (most recent call last):"
    )
    assert processes.last_error(tail) == '{"event":"command_failed","error":"boom"}'
    assert processes.last_error("just text\n") == "just text"
