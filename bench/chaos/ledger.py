"""
Count what the outputs say about the invariants: pure functions over observed records.

Kept free of I/O so ``tests/test_chaos_tools.py`` can check the counting on
hand-made inputs.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from bench.chaos import fuzz

NON_TERMINAL = frozenset({"creating", "building", "agent_waiting"})
TIMEOUT_TEXTS = ("timed out waiting for",)
EXAMPLES = 3


@dataclass(frozen=True, slots=True)
class Answer:
    """
    One ``chat.tool_result.v1`` as read from the topic, with when it arrived (monotonic).
    """

    tool_call_id: str
    chat_id: str
    is_error: bool
    content: dict[str, Any]
    at: float = 0.0

    def canonical(self) -> bytes:
        """
        Return what two answers must share to count as the same answer.
        """
        body = {"is_error": self.is_error, "content": self.content}
        return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def is_timeout(answer: Answer) -> bool:
    """
    Tell whether an answer reports a timer (R11): a timed-out create or build, or ``not_ready``.
    """
    if answer.content.get("agent_status") == "not_ready":
        return True
    error = answer.content.get("error")
    return isinstance(error, str) and any(t in error for t in TIMEOUT_TEXTS)


@dataclass(slots=True)
class Tally:
    """
    The invariants of one run of tool calls, and examples of what broke each.
    """

    calls: int = 0
    answered: int = 0
    lost: int = 0
    duplicate_answers: int = 0
    repeated_answers: int = 0
    duplicate_creates: int = 0
    stuck: int = 0
    false_timeouts: int = 0
    wrong_answers: int = 0
    unexpected_answers: int = 0
    last_answer_at: float | None = None
    lost_chats: list[str] = field(default_factory=list)
    stuck_chats: list[str] = field(default_factory=list)
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def note(self, kind: str, text: str) -> None:
        """
        Keep a few examples of each kind of failure for the report.
        """
        if len(self.examples[kind]) < EXAMPLES:
            self.examples[kind].append(text)


def _count_answers(
    tally: Tally, sent: Mapping[str, str], answers: Iterable[Answer]
) -> dict[str, Answer]:
    first: dict[str, Answer] = {}
    contents: dict[str, set[bytes]] = defaultdict(set)
    for answer in answers:
        if answer.tool_call_id not in sent:
            tally.unexpected_answers += 1
            continue
        known = contents[answer.tool_call_id]
        body = answer.canonical()
        if not known:
            first[answer.tool_call_id] = answer
        elif body in known:
            tally.repeated_answers += 1
        else:
            tally.duplicate_answers += 1
            tally.note("duplicate_answers", f"{answer.tool_call_id}: {body.decode()[:200]}")
        known.add(body)
    return first


def tally(
    sent: Mapping[str, str],
    answers: Iterable[Answer],
    commands: Iterable[tuple[str, str]],
    states: Mapping[str, str],
    *,
    expects_error: Callable[[str], bool] | None = None,
    timeout_is_false: Callable[[Answer], bool] | None = None,
) -> Tally:
    """
    Count lost, duplicate and repeated answers, duplicate creates, stuck chats, false timeouts.

    ``sent`` maps every tool call id sent to its chat; ``commands`` are the
    (chat, command id) pairs read from the commands topic; ``states`` the
    final state of each chat. A duplicate answer is a second answer with
    other content; the same content again is a repeat, which R14 allows. A
    chat counts one create; each further distinct command id is a duplicate
    (the workload plans one create per chat, see ``workload``). A timeout
    answer is false when ``timeout_is_false`` says so (all of them by default:
    the runs use timeouts far longer than they last).
    """
    result = Tally(calls=len(sent))
    first = _count_answers(result, sent, answers)
    result.answered = len(first)
    result.lost = result.calls - result.answered
    for tool_call_id in sent:
        if tool_call_id not in first:
            result.note("lost", tool_call_id)
            result.lost_chats.append(sent[tool_call_id])
    if first:
        result.last_answer_at = max(a.at for a in first.values())
    _check_contents(result, first.values(), expects_error, timeout_is_false)
    chats = set(sent.values())
    _count_creates(result, chats, commands)
    for chat_id in sorted(chats):
        state = states.get(chat_id)
        if state in NON_TERMINAL:
            result.stuck += 1
            result.stuck_chats.append(chat_id)
            result.note("stuck", f"chat {chat_id} in {state}")
    return result


def _check_contents(
    result: Tally,
    first: Iterable[Answer],
    expects_error: Callable[[str], bool] | None,
    timeout_is_false: Callable[[Answer], bool] | None,
) -> None:
    for answer in first:
        if is_timeout(answer):
            if timeout_is_false is None or timeout_is_false(answer):
                result.false_timeouts += 1
                result.note("false_timeouts", f"{answer.tool_call_id}: {answer.content}")
        elif expects_error is not None and answer.is_error != expects_error(answer.chat_id):
            result.wrong_answers += 1
            result.note("wrong_answers", f"{answer.tool_call_id}: {answer.content}")


def _count_creates(result: Tally, chats: set[str], commands: Iterable[tuple[str, str]]) -> None:
    per_chat: dict[str, set[str]] = defaultdict(set)
    for chat_id, command_id in commands:
        if chat_id in chats:
            per_chat[chat_id].add(command_id)
    for chat_id, ids in per_chat.items():
        if len(ids) > 1:
            result.duplicate_creates += len(ids) - 1
            result.note("duplicate_creates", f"chat {chat_id}: {sorted(ids)}")


def waits(answers: Iterable[Answer], sent_at: Mapping[str, float]) -> list[float]:
    """
    Return, sorted, how long each call waited from its first send to its first answer.
    """
    first: dict[str, float] = {}
    for answer in answers:
        if answer.tool_call_id in sent_at:
            first.setdefault(answer.tool_call_id, answer.at)
    return sorted(max(0.0, at - sent_at[call]) for call, at in first.items())


def answers_from(values: Iterable[tuple[bytes | None, float]]) -> list[Answer]:
    """
    Parse tool result values (with their arrival times); skip what is not a result.
    """
    found = []
    for value, at in values:
        try:
            data = orjson.loads(value or b"")
            found.append(
                Answer(
                    str(data["tool_call_id"]),
                    str(data["chat_id"]),
                    bool(data["is_error"]),
                    dict(data["content"]),
                    at,
                )
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    return found


@dataclass(slots=True)
class Observed:
    """
    What the daemon did, read back from the topics and tables.
    """

    dead_letters: Mapping[tuple[str, int, int], int]  # (topic, partition, offset) -> copies
    results: Mapping[str, list[bool]]  # tool call id -> is_error of each result
    inbox: set[str]  # ce_ids recorded from SOURCE
    agents: set[str]


@dataclass(slots=True)
class FuzzTally:
    """
    What became of the fuzzed records, per outcome and per kind.
    """

    records: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    unaccounted: int = 0
    wrong_outcome: int = 0
    repeated_dead_letters: int = 0
    per_kind: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def note(self, kind: str, text: str) -> None:
        if len(self.examples[kind]) < EXAMPLES:
            self.examples[kind].append(text)


def outcome(record: fuzz.FuzzRecord, position: tuple[str, int, int], seen: Observed) -> str | None:
    """
    Return what became of one fuzzed record, or None when nothing shows it was handled.
    """
    if position in seen.dead_letters:
        return fuzz.DEAD
    if record.tool_call_id is not None and record.tool_call_id in seen.results:
        return fuzz.ERROR if all(seen.results[record.tool_call_id]) else fuzz.ANSWERED
    if record.ce_id in seen.inbox or (record.agent_id and record.agent_id in seen.agents):
        return fuzz.ACCEPTED
    return None


def judge(
    sent: Iterable[tuple[fuzz.FuzzRecord, tuple[str, int, int]]], seen: Observed
) -> FuzzTally:
    """
    Compare each sent record's outcome (at its topic, partition, offset) with what it allows.
    """
    tally = FuzzTally()
    for record, position in sent:
        tally.records += 1
        copies = seen.dead_letters.get(position, 0)
        tally.repeated_dead_letters += max(0, copies - 1)
        got = outcome(record, position, seen)
        where = f"{record.role}/{record.kind} at {position[1]}:{position[2]} ({record.note})"
        if got is None:
            tally.unaccounted += 1
            tally.per_kind[record.kind]["unaccounted"] += 1
            tally.note("unaccounted", where)
            continue
        tally.outcomes[got] += 1
        tally.per_kind[record.kind][got] += 1
        if got not in record.allowed:
            tally.wrong_outcome += 1
            tally.note("wrong_outcome", f"{where}: {got}, allowed {sorted(record.allowed)}")
    return tally
