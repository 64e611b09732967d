"""
Apply a batch of decoded events in one PostgreSQL transaction.

This is where the pure core meets storage: dedupe on the inbox, merge job
updates and heartbeats, lock the chats involved, fold each chat's events
through ``statemachine.decide`` and write the rows, history and outbox.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from consumers import codec
from consumers.inbound import PartitionMark
from statemachine import decide, effects, ids, jobs
from statemachine import events as ev
from statemachine.model import AnsweredCall, Chat, ChatWorkspace, Facts, Timeouts
from statemachine.states import State
from storage import errors
from storage.rows import OutboxRecord
from storage.store import PostgresStateStore, StateTransaction
from telemetry import logs, metrics

log = logs.get(__name__)
Item = codec.Inbound | codec.DeadLetter
_NIL_OWNER = "00000000-0000-0000-0000-000000000000"
_CONFLICT_RETRIES = 5
# Apache Kafka refuses records over about 1 MB by default (message.max.bytes),
# and the producer's max_request_size is at least 1 MiB (consumers/kafka.py):
# a whole dead letter (key, headers, value and Kafka's framing) stays under
# 960 KiB, leaving room for the request around it.
DEAD_LETTER_MAX_BYTES = 960 * 1024
DEAD_LETTER_MAX_VALUE_BYTES = DEAD_LETTER_MAX_BYTES
# What the headers saying what was cut can take: a name, a number, framing.
_CUT_HEADERS_BYTES = 2 * (24 + 20 + codec.HEADER_OVERHEAD_BYTES)


def utcnow() -> datetime:
    """
    Return the current time, timezone-aware.
    """
    return datetime.now(UTC)


@dataclass(slots=True)
class BatchReport:
    """
    Count what one batch did, for logs, metrics and the caller's wake-ups.
    """

    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    transitions: int = 0
    outbox_written: int = 0
    earliest_deadline: datetime | None = None
    marks_written: int = 0
    # For metrics, recorded once the batch committed (observe()).
    moves: list[tuple[str, str, str]] = field(default_factory=list)
    left_states: list[tuple[str, float]] = field(default_factory=list)
    answers: list[tuple[str, str]] = field(default_factory=list)
    call_seconds: list[float] = field(default_factory=list)
    dead_reasons: list[str] = field(default_factory=list)

    def add(self, other: BatchReport) -> None:
        """
        Add another report's counts into this one.
        """
        self.moves += other.moves
        self.left_states += other.left_states
        self.answers += other.answers
        self.call_seconds += other.call_seconds
        self.dead_reasons += other.dead_reasons
        self.applied += other.applied
        self.duplicates += other.duplicates
        self.dead_lettered += other.dead_lettered
        self.transitions += other.transitions
        self.outbox_written += other.outbox_written
        self.marks_written += other.marks_written
        if other.earliest_deadline is not None and (
            self.earliest_deadline is None or other.earliest_deadline < self.earliest_deadline
        ):
            self.earliest_deadline = other.earliest_deadline


def observe(report: BatchReport) -> None:
    """
    Record a committed batch's figures in the Prometheus metrics.
    """
    for from_state, to_state, trigger in report.moves:
        metrics.TRANSITIONS.labels(from_state, to_state, trigger).inc()
    for state, seconds in report.left_states:
        metrics.STATE_DURATION.labels(state).observe(seconds)
    for tool, outcome in report.answers:
        metrics.TOOL_RESULTS.labels(tool, outcome).inc()
    for seconds in report.call_seconds:
        metrics.TOOL_CALL_DURATION.labels("all").observe(seconds)
    for reason in report.dead_reasons:
        metrics.DEAD_LETTERS.labels(metrics.reason_category(reason)).inc()
    # Recorded once: a report kept as a running total must not grow with them.
    for kept in (report.moves, report.left_states, report.answers, report.call_seconds):
        kept.clear()
    report.dead_reasons.clear()


def _outcome(answer: effects.Answer) -> str:
    content = answer.content
    if answer.is_error:
        return "error"
    for key in ("agent_status", "status"):
        value = content.get(key)
        if isinstance(value, str):
            return value
    if content.get("startup_scripts"):
        return str(content["startup_scripts"])
    for key in ("created", "started", "stopped"):
        if content.get(key) is True:
            return key
    return "other"


@dataclass(frozen=True, slots=True)
class TimerGate:
    """
    Hold due timers back until every input partition is applied past their deadline.

    A partition whose watermark has not moved for ``max_lag_s`` (counted from
    ``watching_since`` at the earliest, so an instance that just started waits
    for the group to take over) no longer holds timers back: its owner is gone
    or stuck, and a timer fired past it is logged ``timer_fired_without_watermark``.
    """

    input_topics: tuple[str, ...]
    max_lag_s: float
    watching_since: datetime

    def stale_before(self, now: datetime) -> datetime | None:
        """
        Return the time before which a partition that has not moved is ignored, if any.
        """
        cutoff = now - timedelta(seconds=self.max_lag_s)
        return cutoff if self.watching_since < cutoff else None


class BatchHandler:
    """
    Turn batches of events into committed state, one transaction per batch.
    """

    def __init__(  # noqa: PLR0913 - the handler's collaborators
        self,
        store: PostgresStateStore,
        timeouts: Timeouts,
        *,
        source: str,
        dead_letter_topic: str,
        max_record_bytes: int = 1_048_576,
        clock: Callable[[], datetime] = utcnow,
        rng: random.Random | None = None,
        timer_gate: TimerGate | None = None,
    ) -> None:
        self._store = store
        self._timeouts = timeouts
        self._source = source
        self._dead_letter_topic = dead_letter_topic
        self._max_record_bytes = max_record_bytes
        self._clock = clock
        self._rng = rng or random.Random()
        self._timer_gate = timer_gate

    async def handle(
        self, items: Sequence[Item], marks: Sequence[PartitionMark] = ()
    ) -> BatchReport:
        """
        Apply ``items`` atomically; isolate and dead-letter an item that cannot be applied.

        ``marks`` (how far the consumer has applied its partitions once these
        items are) are written in the same transaction, or alone, after every
        item, when the batch had to be split; with no items, alone.

        Storage outages propagate as ``StorageUnavailableError`` (the caller
        retries without committing offsets): an error with an unavailable
        database anywhere in its cause or context chain (a connection closed
        mid-transaction, say), or any error while PostgreSQL does not answer.
        Anything else, a bug included, rolls the batch back; the batch is then
        applied item by item, an item that fails is tried once more in a new
        transaction, and one that fails again is dead-lettered.
        """
        if not items:
            return await self._write_marks(marks)
        try:
            return await self._with_retries(items, marks)
        except (errors.StorageUnavailableError, errors.ConflictError):
            raise  # not the records' fault: the consumer retries the batch later
        except Exception as exc:  # noqa: BLE001 - one poison record must not stop the stream
            await self._unless_unavailable(exc)
            if len(items) == 1:
                report = await self._retry_alone(items[0])
            else:
                log.warning("batch_failed_splitting", size=len(items), error=_text(exc))
                report = BatchReport()
                for item in items:
                    report.add(await self.handle([item]))
            report.add(await self._write_marks(marks))
            return report

    async def _write_marks(self, marks: Sequence[PartitionMark]) -> BatchReport:
        if not marks:
            return BatchReport()
        async with self._store.transaction() as tx:
            await tx.record_watermarks(_mark_rows(marks), self._clock())
        return BatchReport(marks_written=len(marks))

    async def _retry_alone(self, item: Item) -> BatchReport:
        # The first try may have failed for its connection's sake in a way its
        # error does not show (a proxy that reset it, a rollback that met it
        # closed); a new transaction takes a live connection from the pool.
        try:
            return await self._with_retries([item])
        except (errors.StorageUnavailableError, errors.ConflictError):
            raise
        except Exception as exc:  # noqa: BLE001 - the item's fault, unless the database is gone
            await self._unless_unavailable(exc)
            return await self._dead_letter_poison(item, exc)

    async def _unless_unavailable(self, exc: Exception) -> None:
        """
        Raise ``StorageUnavailableError`` when ``exc`` tells of an outage, not of the records.
        """
        if _unavailable(exc) or not await self._store.healthy():
            raise errors.StorageUnavailableError(_text(exc)) from exc

    async def _with_retries(
        self, items: Sequence[Item], marks: Sequence[PartitionMark] = ()
    ) -> BatchReport:
        for attempt in range(_CONFLICT_RETRIES):
            try:
                async with self._store.transaction() as tx:
                    now = self._clock()
                    report = await self._apply(tx, items, now)
                    if marks:
                        # Last, in a fixed order: see storage's watermarks_record.
                        await tx.record_watermarks(_mark_rows(marks), now)
                        report.marks_written = len(marks)
                    return report
            except errors.ConflictError:
                if attempt == _CONFLICT_RETRIES - 1:
                    raise
                await asyncio.sleep(0.01 * (attempt + 1))
        raise AssertionError  # pragma: no cover - the loop returns or raises

    async def _dead_letter_poison(self, item: Item, exc: Exception) -> BatchReport:
        """
        Dead-letter an item that failed twice; never let it stop the stream, never drop it.

        The whole record first; if that cannot be written, whatever the reason
        (a header PostgreSQL refuses, say), the reason and the position alone.
        If even that fails, PostgreSQL takes no writes now (a read-only primary
        after a failover, say): the batch is retried later, uncommitted.
        """
        reason = (
            item.reason if isinstance(item, codec.DeadLetter) else f"could not be applied: {exc}"
        )
        dead = codec.DeadLetter(codec.printable(reason), item.record)
        try:
            await self._write_dead_letter(self._dead_letter_record(dead))
        except errors.StorageUnavailableError:
            raise
        except Exception as again:  # noqa: BLE001 - the original record may hold anything
            _log_dead_letter_stripped(dead, again)
            try:
                await self._write_dead_letter(self._minimal_dead_letter(dead))
            except Exception as last:
                msg = f"dead letter could not be written: {_text(last)}"
                raise errors.StorageUnavailableError(msg) from last
        _log_dead_letter(dead, error=True)
        return BatchReport(dead_lettered=1, outbox_written=1, dead_reasons=[dead.reason])

    async def _write_dead_letter(self, record: OutboxRecord) -> None:
        async with self._store.transaction() as tx:
            await tx.add_outbox([record])

    async def fire_timers(self, limit: int = 500) -> tuple[int, datetime | None]:
        """
        Fire every due timer (claimed with SKIP LOCKED); return how many and the next deadline set.

        With a ``TimerGate``, a timer is due once its deadline has passed and
        every input partition's watermark has reached it (``TimerGate``).
        """
        gate = self._timer_gate
        async with self._store.transaction() as tx:
            now = self._clock()
            stale_before = None if gate is None else gate.stale_before(now)
            due = await tx.claim_due_timers(
                now, limit, None if gate is None else gate.input_topics, stale_before
            )
            fired: list[tuple[str, ev.Event]] = [
                (
                    t.chat_id,
                    ev.TimerFired(ids.derive("timer", t.chat_id, t.version), t.chat_id, t.version),
                )
                for t in due
            ]
            report = await self._fold(tx, fired, {}, [], now)
            for t in due:
                metrics.TIMER_LATENESS.observe(max((now - t.deadline_at).total_seconds(), 0.0))
            metrics.TIMERS_FIRED.inc(len(due))
            observe(report)
            unwatermarked = [t for t in due if t.unwatermarked]
            if gate is not None and stale_before is not None and unwatermarked:
                stale = await tx.stale_watermarks(gate.input_topics, stale_before)
                for t in unwatermarked:
                    log.warning(
                        "timer_fired_without_watermark",
                        chat_id=t.chat_id,
                        deadline_at=t.deadline_at.isoformat(),
                        partitions=[f"{w.topic}:{w.partition}" for w in stale],
                        max_lag_s=gate.max_lag_s,
                    )
            return len(due), report.earliest_deadline

    async def _apply(
        self, tx: StateTransaction, items: Sequence[Item], now: datetime
    ) -> BatchReport:
        dead = [i for i in items if isinstance(i, codec.DeadLetter)]
        inbound = [i for i in items if isinstance(i, codec.Inbound)]
        await tx.lock_workspaces(_workspaces_of(inbound))
        fresh, duplicates = await self._dedupe(tx, inbound)
        beats = [i.event for i in fresh if isinstance(i.event, codec.HeartbeatReported)]
        reports = [i.event for i in fresh if isinstance(i.event, codec.JobReported)]
        latest_beats = _latest_beats(beats, now)
        waiting = await tx.record_heartbeats(latest_beats)
        changed_jobs = await self._merge_jobs(tx, reports)
        job_chats = await tx.chats_bound_to(j.job.workspace_id for j in changed_jobs)

        per_chat: list[tuple[str, ev.Event]] = []
        owners: dict[str, str] = {}
        for item in fresh:
            event = item.event
            if isinstance(event, ev.ToolCall):
                owners.setdefault(event.chat_id, event.owner_id)
            if not isinstance(event, codec.HeartbeatReported | codec.JobReported):
                per_chat.append((event.chat_id, event))
        by_workspace: dict[str, list[ev.JobChanged]] = {}
        for change in changed_jobs:
            by_workspace.setdefault(change.job.workspace_id, []).append(change)
        per_chat += [
            (chat_id, change)
            for chat_id, workspace_id in job_chats
            for change in by_workspace.get(workspace_id, ())
        ]
        for chat_id, agent_id in waiting.items():
            _, lifecycle, seen = latest_beats[agent_id]
            event_id = ids.derive("seen", agent_id, seen, lifecycle)
            per_chat.append((chat_id, ev.AgentSeen(event_id, agent_id, seen, lifecycle)))
        dead_records = [self._dead_letter_record(d) for d in dead]
        report = await self._fold(tx, per_chat, owners, dead_records, now)
        for d in dead:
            _log_dead_letter(d)
        report.applied = len(fresh)
        report.duplicates = duplicates
        report.dead_lettered = len(dead)
        report.dead_reasons = [d.reason for d in dead]
        return report

    async def _dedupe(
        self, tx: StateTransaction, inbound: Sequence[codec.Inbound]
    ) -> tuple[list[codec.Inbound], int]:
        # Heartbeats are idempotent (last_seen_at only grows), so they skip the
        # inbox: it would cost a row per heartbeat on the hottest path.
        keyed = {
            (item.source, item.ce_id)
            for item in inbound
            if not isinstance(item.event, codec.HeartbeatReported)
        }
        claimed = await tx.claim_inbox(sorted(keyed))  # sorted: a fixed lock order
        fresh: list[codec.Inbound] = []
        for item in inbound:  # in batch order; the first of in-batch duplicates wins
            if isinstance(item.event, codec.HeartbeatReported):
                fresh.append(item)
            elif (key := (item.source, item.ce_id)) in claimed:
                claimed.discard(key)
                fresh.append(item)
        return fresh, len(inbound) - len(fresh)

    async def _merge_jobs(
        self, tx: StateTransaction, reports: Sequence[codec.JobReported]
    ) -> list[ev.JobChanged]:
        if not reports:
            return []
        known = await tx.lock_jobs(r.job.job_id for r in reports)
        changed: dict[str, ev.JobChanged] = {}
        for report in reports:
            merged = jobs.merge(known.get(report.job.job_id), report.job)
            if merged is not None:
                known[merged.job_id] = merged
                changed[merged.job_id] = ev.JobChanged(report.event_id, merged)
        await tx.save_jobs(changed[job_id].job for job_id in sorted(changed))
        return list(changed.values())

    async def _fold(
        self,
        tx: StateTransaction,
        per_chat: list[tuple[str, ev.Event]],
        owners: dict[str, str],
        extra: list[OutboxRecord],
        now: datetime,
    ) -> BatchReport:
        if not per_chat:  # heartbeats nobody waits on, duplicates, dead letters
            if extra:
                await tx.add_outbox(extra)
            return BatchReport(outbox_written=tx.outbox_written)
        chats = await tx.lock_chats((c for c, _ in per_chat), owners, now)
        facts = await self._facts(tx, chats, per_chat)
        ctx = decide.Context(now, facts, self._timeouts, self._rng)
        done: list[effects.Effect] = []
        changed: dict[str, ChatWorkspace] = {}
        left: list[tuple[str, float]] = []
        for chat_id, event in per_chat:
            chat = chats.get(chat_id)
            if chat is None:
                if not isinstance(event, ev.InvalidToolCall):
                    continue  # an answer about a chat we never asked for
                chat = Chat(ChatWorkspace.new(chat_id, _NIL_OWNER, now))
            decision = decide.decide(chat, event, ctx)
            if decision.chat.row.state != chat.row.state:
                seconds = (now - chat.row.state_entered_at).total_seconds()
                left.append((chat.row.state.value, max(seconds, 0.0)))
            _remember_calls(facts, decision.effects)
            done += decision.effects
            if chat_id in chats and decision.chat.row != chat.row:
                changed[chat_id] = decision.chat.row
            chats[chat_id] = decision.chat
        await tx.save(changed.values(), done, extra)
        transitions = [e for e in done if isinstance(e, effects.RecordTransition)]
        for t in transitions if logging.getLogger(__name__).isEnabledFor(logging.DEBUG) else ():
            log.debug(
                "transition_applied",
                chat_id=t.chat_id,
                from_state=t.from_state.value,
                to_state=t.to_state.value,
                trigger=t.trigger.value,
                event_id=t.event_id,
            )
        return BatchReport(
            transitions=len(transitions),
            outbox_written=tx.outbox_written,
            earliest_deadline=tx.earliest_deadline,
            moves=[(t.from_state.value, t.to_state.value, t.trigger.value) for t in transitions],
            left_states=left,
            answers=[
                (getattr(a, "tool", "create_workspace"), _outcome(a))
                for a in done
                if isinstance(a, effects.Answer)
            ],
            call_seconds=list(tx.call_seconds),
        )

    async def _facts(
        self, tx: StateTransaction, chats: dict[str, Chat], per_chat: list[tuple[str, ev.Event]]
    ) -> Facts:
        rows = [c.row for c in chats.values()]
        created = [e for _, e in per_chat if isinstance(e, ev.CreateAccepted)]
        calls = [
            e.tool_call_id for _, e in per_chat if isinstance(e, ev.ToolCall | ev.InvalidToolCall)
        ]
        bound = [r for r in rows if r.state != State.NONE]
        return await tx.load_facts(
            [r.job_id for r in bound if r.job_id]
            + [e.job_id for e in created]
            + [e.job.job_id for _, e in per_chat if isinstance(e, ev.JobChanged)],
            [r.agent_id for r in bound if r.agent_id],
            [r.workspace_id for r in bound if r.workspace_id] + [e.workspace_id for e in created],
            calls,
        )

    def _dead_letter_record(self, dead: codec.DeadLetter) -> OutboxRecord:
        """
        Return a dead letter's outbox record: whole if it can be built, else reason and position.
        """
        limit = min(self._max_record_bytes, DEAD_LETTER_MAX_VALUE_BYTES)
        try:
            key, value, headers = _dead_letter(dead, limit)
        except Exception as exc:  # noqa: BLE001 - the original record may hold anything
            _log_dead_letter_stripped(dead, exc)
            return self._minimal_dead_letter(dead)
        return self._outbox_record(dead, key, value, headers)

    def _minimal_dead_letter(self, dead: codec.DeadLetter) -> OutboxRecord:
        """
        Return a dead letter with only the reason and the position: it can always be written.
        """
        return self._outbox_record(dead, None, None, _encoded(_about(dead)))

    def _outbox_record(
        self,
        dead: codec.DeadLetter,
        key: bytes | None,
        value: bytes | None,
        headers: tuple[codec.Header, ...],
    ) -> OutboxRecord:
        record = dead.record
        return OutboxRecord(
            self._dead_letter_topic,
            key,
            ids.derive("dead_letter", record.topic, record.partition, record.offset),
            "",
            utcnow(),
            value,
            headers,
        )


def _about(dead: codec.DeadLetter) -> dict[str, str]:
    record = dead.record
    return {
        "dlq_reason": codec.printable(dead.reason),
        "dlq_topic": record.topic,
        "dlq_partition": str(record.partition),
        "dlq_offset": str(record.offset),
    }


def _encoded(added: dict[str, str]) -> tuple[codec.Header, ...]:
    return tuple((name, text.encode()) for name, text in added.items())


def _dead_letter(
    dead: codec.DeadLetter, max_value_bytes: int
) -> tuple[bytes | None, bytes | None, tuple[codec.Header, ...]]:
    """
    Return the key, value and headers of a dead letter: the original record, cut to fit.

    The value is cut to ``max_value_bytes``, then as far as the whole record
    needs to stay under ``DEAD_LETTER_MAX_BYTES``; original headers too large
    to fit even without the value are left out. ``dlq_original_bytes`` (the
    value's size) and ``dlq_headers_dropped`` (how many) say what was cut. A
    key that alone does not fit leaves only the reason and the position.
    """
    record = dead.record
    added = _about(dead)
    budget = DEAD_LETTER_MAX_BYTES - _CUT_HEADERS_BYTES
    headers = tuple(record.headers)
    if codec.record_bytes(record.key, None, headers + _encoded(added)) > budget:
        added["dlq_headers_dropped"] = str(len(headers))
        headers = ()
    fixed = codec.record_bytes(record.key, None, headers + _encoded(added))
    if fixed > budget:
        return None, None, _encoded(_about(dead))
    value = record.value
    limit = min(max_value_bytes, budget - fixed)
    if value is not None and len(value) > limit:
        # Keep what the broker will take; the header says how much there was.
        added["dlq_original_bytes"] = str(len(value))
        value = value[:limit]
    return record.key, value, headers + _encoded(added)


def _workspaces_of(inbound: Sequence[codec.Inbound]) -> set[str]:
    found = set()
    for item in inbound:
        event = item.event
        if isinstance(event, codec.HeartbeatReported | ev.CreateAccepted):
            found.add(event.workspace_id)
        elif isinstance(event, codec.JobReported):
            found.add(event.job.workspace_id)
    return found


def _mark_rows(
    marks: Sequence[PartitionMark],
) -> list[tuple[str, int, int, datetime | None, datetime | None]]:
    return sorted(
        (m.topic, m.partition, m.applied_offset, m.record_time, m.caught_up_at) for m in marks
    )


def _log_dead_letter(dead: codec.DeadLetter, *, error: bool = False) -> None:
    record = dead.record
    (log.error if error else log.warning)(
        "record_dead_lettered",
        reason=codec.printable(dead.reason),
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
    )


def _log_dead_letter_stripped(dead: codec.DeadLetter, exc: Exception) -> None:
    record = dead.record
    log.error(
        "dead_letter_stripped",
        error=_text(exc),
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
    )


def _text(exc: BaseException) -> str:
    """
    Return an error's text fit for a log line or a header: short, control characters escaped.
    """
    return codec.printable(str(exc) or type(exc).__name__)


def _unavailable(exc: BaseException) -> bool:
    """
    Tell whether an unavailable database shows anywhere in the cause and context chain of ``exc``.

    asyncpg's ``Transaction.__aexit__`` replaces the error of a connection
    that closed mid-transaction with its own, which keeps the first as its
    context: the outage is in the chain, not on top.
    """
    seen: set[int] = set()
    chain: list[BaseException] = [exc]
    while chain:
        link = chain.pop()
        if id(link) in seen:
            continue
        seen.add(id(link))
        if isinstance(link, errors.StorageUnavailableError):
            return True
        chain += [e for e in (link.__cause__, link.__context__) if e is not None]
    return False


def _latest_beats(
    beats: Sequence[codec.HeartbeatReported], now: datetime
) -> dict[str, tuple[str, str | None, datetime]]:
    latest: dict[str, tuple[str, str | None, datetime]] = {}
    for beat in beats:
        at = min(beat.occurred_at, now)  # an agent's clock ahead of ours is not the future
        known = latest.get(beat.agent_id)
        if known is None or at >= known[2]:
            latest[beat.agent_id] = (beat.workspace_id, beat.lifecycle_state, at)
    return latest


def _remember_calls(facts: Facts, done: Sequence[effects.Effect]) -> None:
    calls = facts.calls
    if not isinstance(calls, dict):  # built as a dict in _facts, so the fold can update it
        raise TypeError("facts.calls must be a dict")
    for effect in done:
        if isinstance(effect, effects.Wait):
            calls[effect.tool_call_id] = AnsweredCall(effect.tool_call_id, effect.chat_id, None)
        elif isinstance(effect, effects.Answer):
            answer = {"is_error": effect.is_error, "content": effect.content}
            calls[effect.tool_call_id] = AnsweredCall(effect.tool_call_id, effect.chat_id, answer)
