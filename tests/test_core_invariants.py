"""
Fold random event sequences for one chat through ``decide`` and check the invariants.

The fold keeps ``Facts`` the way ``workspaced.handler`` does: job updates are
merged with ``jobs.merge`` and only a merge that moved the job forward reaches
the chat, heartbeats only grow ``agents_seen_at``, the latest build of a
workspace is its job with the newest ``occurred_at``, and calls are remembered
from ``Wait`` and ``Answer`` effects (``_remember_calls``). A stand-in for Coder
gives each command (create, start or stop) one fixed outcome, delivered any
number of times; the three tools are called in any order.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from statemachine import decide, effects, jobs, machine
from statemachine import events as ev
from statemachine.model import (
    Agent,
    AnsweredCall,
    Chat,
    ChatWorkspace,
    Facts,
    Job,
    Timeouts,
    Tool,
)
from statemachine.states import IN_PROGRESS, State, Trigger

START = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
CHAT = "chat-1"
OWNER = "owner-1"
TEMPLATE = "0f8fad5b-d9cb-469f-a165-70867728950e"
NEVER_SENT = "command-never-sent"
STATUSES = ("unknown", "pending", "running", "canceling", "succeeded", "failed", "canceled")
RANK = {"unknown": 0, "pending": 1, "running": 2, "canceling": 3}
ENTERS_CREATING_FROM = frozenset({State.NONE, State.FAILED, State.READY})
# A start or stop command is only sent from a resting state (one command in flight).
COMMANDS_FROM = frozenset({State.READY, State.AGENT_WAITING, State.STOPPED, State.FAILED})
REQUESTED = {Trigger.START_REQUESTED: "start", Trigger.STOP_REQUESTED: "stop"}
# What each tool's successful answers say.
SHAPES = {Tool.CREATE: "created", Tool.START: "started", Tool.STOP: "stopped"}


def _workspace(command_id: str) -> str:
    return f"workspace-{command_id}"


def _job_id(command_id: str, transition: str) -> str:
    return f"job-{command_id}-{transition}"


def _agent(command_id: str) -> str:
    return f"agent-{command_id}"


@dataclass
class World:
    """
    Hold one chat, the facts storage would know, and what the chat's users saw.
    """

    chat: Chat = field(default_factory=lambda: Chat(ChatWorkspace.new(CHAT, OWNER, START)))
    now: datetime = START
    jobs: dict[str, Job] = field(default_factory=dict)
    seen: dict[str, datetime] = field(default_factory=dict)
    calls: dict[str, AnsweredCall] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)  # create commands, in order
    outcomes: dict[str, str] = field(default_factory=dict)  # command -> accept | reject | …
    builds: dict[str, tuple[str, str]] = field(
        default_factory=dict
    )  # id -> (workspace, transition)
    sent: list[str] = field(default_factory=list)  # every command, create or build, in order
    tools: dict[str, Tool] = field(default_factory=dict)  # tool_call_id -> its tool
    answers: dict[str, tuple[bool, Mapping[str, Any]]] = field(default_factory=dict)
    called: set[str] = field(default_factory=set)
    states: list[State] = field(default_factory=lambda: [State.NONE])
    reached: set[tuple[Trigger, State, State]] = field(default_factory=set)
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    events: int = 0
    timeouts: Timeouts = field(default_factory=Timeouts)
    lifecycles: dict[str, str] = field(default_factory=dict)

    # Inputs ---------------------------------------------------------------------

    def event_id(self) -> str:
        self.events += 1
        return f"event-{self.events}"

    def step(self, step: tuple[Any, ...]) -> None:
        kind, *args = step
        {
            "call": lambda number, valid: self.tool_call(f"call-{number}", valid=valid),
            "start": lambda n: self.tool_call(f"start-{n}", valid=True, tool=Tool.START),
            "stop": lambda n: self.tool_call(f"stop-{n}", valid=True, tool=Tool.STOP),
            "coder": lambda which, accept: self.coder_answers(which, accept=accept),
            "builder": self.builder_answers,
            "job": lambda which, transition, status, with_agents: self.job_update(
                which, transition, status, with_agents=with_agents
            ),
            "ext": self.foreign_build,
            "extbeat": self.foreign_heartbeat,
            "beat": self.heartbeat,
            "life": lambda which, lifecycle: self.heartbeat(which, 0, lifecycle),
            "advance": self.advance,
            "tick": self.tick,
            "timer": lambda stale_by, at_deadline: self.timer(stale_by, at_deadline=at_deadline),
        }[kind](*args)

    def tick(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)

    def foreign_heartbeat(self, number: int) -> None:
        self.seen[f"agent-ext-{number}"] = self.now
        self.apply(ev.AgentSeen(self.event_id(), f"agent-ext-{number}", self.now))

    def tool_call(self, tool_call_id: str, *, valid: bool, tool: Tool = Tool.CREATE) -> None:
        self.called.add(tool_call_id)
        self.tools[tool_call_id] = tool
        event: ev.Event
        if valid and tool != Tool.CREATE:
            event = ev.ToolCall(
                self.event_id(), tool_call_id, CHAT, OWNER, "", None, (), None, tool
            )
        elif valid:
            event = ev.ToolCall(
                self.event_id(), tool_call_id, CHAT, OWNER, TEMPLATE, None, (), "tpl"
            )
        else:
            error = "template_id is required; use list_templates to find one"
            event = ev.InvalidToolCall(
                self.event_id(), tool_call_id, CHAT, "create_workspace", error
            )
        self.apply(event)

    def advance(self, variant: int) -> None:
        """
        Send what Coder or a user would most likely send next, so runs go deep.
        """
        row = self.chat.row
        state = row.state
        if state == State.CREATING:
            self.coder_answers(0, accept=variant != 0)
        elif state in (State.BUILDING, State.STOPPING) and row.job_id is None and self.builds:
            self.builder_answers(
                0, "queued" if variant < 5 else ["busy", "refused", "queued"][variant - 5]
            )
        elif state == State.STOPPING:
            status = ["succeeded"] * 5 + ["running", "failed", "canceled"]
            self.job_update(0, "stop", status[variant], with_agents=False)
        elif state == State.BUILDING:
            transition, status = [
                ("start", "succeeded"),
                ("start", "succeeded"),
                ("start", "succeeded"),
                ("start", "running"),
                ("start", "failed"),
                ("start", "canceled"),
                ("delete", "succeeded"),
                ("stop", "succeeded"),
            ][variant]
            self.job_update(0, transition, status, with_agents=variant != 1)
        elif variant == 7 and state != State.NONE:
            self.job_update(0, "delete", "succeeded", with_agents=False)
        elif state == State.AGENT_WAITING and variant != 6:
            self.heartbeat(0, variant)
        elif variant in (1, 2):
            self.tool_call(f"stop-{variant}", valid=True, tool=Tool.STOP)
        elif variant in (3, 4):
            self.tool_call(f"start-{variant}", valid=True, tool=Tool.START)
        else:
            self.tool_call(f"call-{variant}", valid=True)

    def timer(self, stale_by: int, *, at_deadline: bool) -> None:
        """
        Fire a timer, waiting for the row's deadline first when asked (as the daemon does).
        """
        deadline = self.chat.row.deadline_at
        if at_deadline and deadline is not None:
            self.now = max(self.now, deadline)
        self.apply(ev.TimerFired(self.event_id(), CHAT, self.chat.row.version - stale_by))

    def command(self, which: int) -> str:
        """
        Return the create command ``which`` back from the latest (0 is the latest).
        """
        if which >= len(self.commands):
            return NEVER_SENT
        return self.commands[-1 - which]

    def any_command(self, which: int) -> str:
        """
        Return the command (create, start or stop) ``which`` back from the latest.
        """
        if which >= len(self.sent):
            return NEVER_SENT
        return self.sent[-1 - which]

    def workspace_of(self, command_id: str) -> str:
        if command_id in self.builds:
            return self.builds[command_id][0]
        return _workspace(command_id)

    def builder_answers(self, which: int, outcome: str) -> None:
        """
        Answer the start or stop command ``which`` back: queued, busy (409) or refused (403).
        """
        builds = [c for c in self.sent if c in self.builds]
        if which >= len(builds):
            return
        command_id = builds[-1 - which]
        workspace_id, transition = self.builds[command_id]
        # Coder answers a command once; later deliveries repeat that answer.
        outcome = self.outcomes.setdefault(command_id, outcome)
        event: ev.Event
        if outcome == "queued":
            event = ev.BuildQueued(
                self.event_id(),
                command_id,
                CHAT,
                workspace_id,
                transition,
                f"build-{command_id}-{transition}",
                _job_id(command_id, transition),
            )
        else:
            code, message = (409, "busy") if outcome == "busy" else (403, "forbidden")
            event = ev.BuildRejected(self.event_id(), command_id, CHAT, code, message)
        self.apply(event)

    def coder_answers(self, which: int, *, accept: bool) -> None:
        command_id = self.command(which)
        # Coder answers a command once; later deliveries repeat that answer.
        outcome = self.outcomes.setdefault(command_id, "accept" if accept else "reject")
        if outcome == "accept":
            self.apply(
                ev.CreateAccepted(
                    self.event_id(),
                    command_id,
                    CHAT,
                    _workspace(command_id),
                    "dev",
                    "alice",
                    f"build-{command_id}",
                    _job_id(command_id, "start"),
                )
            )
        else:
            self.apply(ev.CreateRejected(self.event_id(), command_id, CHAT, "quota exceeded"))

    def job_update(self, which: int, transition: str, status: str, *, with_agents: bool) -> None:
        command_id = self.any_command(which)
        agents = (Agent(_agent(command_id), "main"),) if with_agents else ()
        update = Job(
            _job_id(command_id, transition),
            self.workspace_of(command_id),
            f"build-{command_id}-{transition}",
            transition,
            status,
            "apply failed" if status == "failed" and with_agents else None,
            agents,
            # Distinct times, as Coder's: the newest build of a workspace is one job.
            self.now + timedelta(microseconds=self.events),
        )
        known = self.jobs.get(update.job_id)
        merged = jobs.merge(known, update)
        check_job_moves_forward(known, merged)
        if merged is not None:
            self.jobs[merged.job_id] = merged
            self.apply(ev.JobChanged(self.event_id(), merged))

    def foreign_build(self, number: int, transition: str, status: str) -> None:
        """
        Report build ``number`` of the latest create's workspace, which no command asked for.
        """
        command_id = self.command(0)
        update = Job(
            f"job-ext-{number}-{transition}",
            _workspace(command_id),
            f"build-ext-{number}-{transition}",
            transition,
            status,
            None,
            (Agent(f"agent-ext-{number}", "main"),) if transition == "start" else (),
            self.now + timedelta(microseconds=self.events),
        )
        known = self.jobs.get(update.job_id)
        merged = jobs.merge(known, update)
        check_job_moves_forward(known, merged)
        if merged is not None:
            self.jobs[merged.job_id] = merged
            self.apply(ev.JobChanged(self.event_id(), merged))

    def heartbeat(self, which: int, ago_s: int, lifecycle: str = "ready") -> None:
        agent_id = _agent(self.any_command(which))
        at = self.now - timedelta(seconds=ago_s)
        self.seen[agent_id] = max(self.seen.get(agent_id, at), at)
        self.lifecycles[agent_id] = lifecycle
        self.apply(ev.AgentSeen(self.event_id(), agent_id, at, lifecycle))

    # The fold -------------------------------------------------------------------

    def facts(self) -> Facts:
        latest: dict[str, Job] = {}
        for job in self.jobs.values():
            known = latest.get(job.workspace_id)
            if known is None or job.occurred_at > known.occurred_at:
                latest[job.workspace_id] = job
        return Facts(dict(self.jobs), dict(self.seen), latest, self.calls, dict(self.lifecycles))

    def apply(self, event: ev.Event) -> decide.Decision:
        before = self.chat
        ctx = decide.Context(self.now, self.facts(), self.timeouts, self.rng)
        decision = decide.decide(before, event, ctx)
        self.check(before, decision)
        self.remember_calls(decision.effects)
        self.chat = decision.chat
        self.states.append(decision.chat.row.state)
        self.reached |= {
            (e.trigger, e.from_state, e.to_state)
            for e in decision.effects
            if isinstance(e, effects.RecordTransition)
        }
        return decision

    def remember_calls(self, done: tuple[effects.Effect, ...]) -> None:
        for effect in done:
            if isinstance(effect, effects.Wait):
                self.calls[effect.tool_call_id] = AnsweredCall(
                    effect.tool_call_id, effect.chat_id, None
                )
            elif isinstance(effect, effects.Answer):
                answer = {"is_error": effect.is_error, "content": effect.content}
                self.calls[effect.tool_call_id] = AnsweredCall(
                    effect.tool_call_id, effect.chat_id, answer
                )

    # Invariants -----------------------------------------------------------------

    def check(self, before: Chat, decision: decide.Decision) -> None:
        answered_before = set(self.answers)
        check_transitions(before.row, decision)
        self.check_create_commands(before.row, decision)
        self.check_build_commands(decision)
        self.check_answers(decision)
        self.check_answer_shapes(before, decision, answered_before)
        check_waiters(decision.chat)
        row = decision.chat.row
        # Only the workspace of the chat's latest create command is ever bound.
        if row.workspace_id is not None:
            assert self.commands
            assert row.workspace_id == _workspace(self.commands[-1])
            assert row.state != State.CREATING

    def check_build_commands(self, decision: decide.Decision) -> None:
        """
        Check that a start or stop command leaves only from a resting state, one at a time.
        """
        sent = [
            e
            for e in decision.effects
            if isinstance(e, effects.Publish) and e.topic == effects.Topic.WORKSPACE_COMMANDS
        ]
        assert len(sent) <= 1, "two commands in one decision"
        requests = [
            r
            for r in decision.effects
            if isinstance(r, effects.RecordTransition) and r.trigger in REQUESTED
        ]
        builds = [e for e in sent if e.ce_type == decide.BUILD_COMMAND]
        assert len(builds) == len(requests)
        if builds:
            (record,) = requests
            (command,) = builds
            assert record.from_state in COMMANDS_FROM
            row = decision.chat.row
            assert command.data == {
                "command_id": command.data["command_id"],
                "chat_id": CHAT,
                "workspace_id": row.workspace_id,
                "transition": REQUESTED[record.trigger],
            }
            command_id = command.data["command_id"]
            assert command_id not in self.sent, "a start or stop command sent twice"
            assert command_id == row.command_id
            self.builds[command_id] = (row.workspace_id or "", REQUESTED[record.trigger])
            self.sent.append(command_id)

    def check_answer_shapes(
        self, before: Chat, decision: decide.Decision, answered_before: set[str]
    ) -> None:
        """
        Check that each call is answered by its own tool, in that tool's shape.
        """
        records = [e for e in decision.effects if isinstance(e, effects.RecordTransition)]
        visited = {before.row.state} | {r.to_state for r in records}
        for answer in (e for e in decision.effects if isinstance(e, effects.Answer)):
            tool = self.tools[answer.tool_call_id]
            assert answer.tool == tool
            if answer.tool_call_id in answered_before:
                continue  # the stored answer, published again (R14)
            if answer.is_error:
                assert set(answer.content) <= {"error", "build_id"}
                continue
            shape = SHAPES[tool]
            assert shape in answer.content, (tool, answer.content)
            if tool == Tool.START:
                assert visited & {State.READY, State.AGENT_WAITING}
            if tool == Tool.STOP:
                stopped = self.facts_stopped(before.row.workspace_id)
                assert State.STOPPED in visited or stopped

    def facts_stopped(self, workspace_id: str | None) -> bool:
        latest = self.facts().latest_builds.get(workspace_id or "")
        return latest is not None and (latest.transition, latest.status) == ("stop", "succeeded")

    def check_create_commands(self, before: ChatWorkspace, decision: decide.Decision) -> None:
        creates = [
            e
            for e in decision.effects
            if isinstance(e, effects.Publish) and e.ce_type == decide.CREATE_COMMAND
        ]
        into_creating = [
            r
            for r in decision.effects
            if isinstance(r, effects.RecordTransition) and r.to_state == State.CREATING
        ]
        assert len(creates) == len(into_creating) <= 1
        if creates:
            (record,) = into_creating
            assert record.trigger == Trigger.TOOL_CALL
            assert record.from_state in ENTERS_CREATING_FROM
            assert before.state not in IN_PROGRESS
            command_id = creates[0].data["command_id"]
            assert command_id == decision.chat.row.command_id
            if command_id in self.commands:
                # Only the last command, unanswered after its timer, may be sent again.
                assert command_id == self.commands[-1]
                assert command_id not in self.outcomes
            else:
                self.commands.append(command_id)
                self.sent.append(command_id)

    def check_answers(self, decision: decide.Decision) -> None:
        answers = [e for e in decision.effects if isinstance(e, effects.Answer)]
        waits = [e for e in decision.effects if isinstance(e, effects.Wait)]
        assert len({a.tool_call_id for a in answers}) == len(answers)
        for answer in answers:
            assert answer.tool_call_id in self.called
            given = (answer.is_error, answer.content)
            # A second answer is only the stored one published again (R14).
            assert self.answers.setdefault(answer.tool_call_id, given) == given
        for wait in waits:
            assert wait.tool_call_id not in self.answers
            assert wait.tool_call_id not in {a.tool_call_id for a in answers}
        waiting = {w.tool_call_id for w in decision.chat.waiters}
        assert not waiting & set(self.answers)
        assert self.called <= set(self.answers) | waiting


def check_transitions(before: ChatWorkspace, decision: decide.Decision) -> None:
    records = [e for e in decision.effects if isinstance(e, effects.RecordTransition)]
    after = decision.chat.row
    assert after.version == before.version + len(records)
    assert [r.version for r in records] == list(
        range(before.version + 1, before.version + 1 + len(records))
    )
    state = before.state
    for record in records:
        assert record.from_state == state
        assert (record.trigger, record.from_state, record.to_state) in machine.allowed()
        state = record.to_state
    assert after.state == state
    entered = [r.to_state for r in records if r.to_state != r.from_state]
    published = [
        e.ce_type
        for e in decision.effects
        if isinstance(e, effects.Publish) and e.topic == effects.Topic.WORKSPACE_EVENTS
    ]
    assert published.count(decide.STATE_CHANGED) == len(records)
    assert published.count(decide.READY_EVENT) == entered.count(State.READY)
    assert published.count(decide.FAILED_EVENT) == entered.count(State.FAILED)


def check_waiters(chat: Chat) -> None:
    ids = [w.tool_call_id for w in chat.waiters]
    assert len(ids) == len(set(ids))
    if chat.waiters:
        assert chat.row.state in IN_PROGRESS
    assert sum(w.creator for w in chat.waiters) <= 1


def check_job_moves_forward(known: Job | None, merged: Job | None) -> None:
    if known is None:
        return
    if known.status in jobs.TERMINAL:
        assert merged is None
    elif merged is not None:
        assert merged.status in jobs.TERMINAL or RANK[merged.status] > RANK[known.status]
        assert merged.job_id == known.job_id
        assert len(merged.agents) >= len(known.agents)


# Strategies ---------------------------------------------------------------------

# Mostly the latest command, sometimes an older one (or one never sent).
WHICH = st.sampled_from([0, 0, 0, 0, 1, 2])
STEPS = st.one_of(
    st.tuples(st.just("call"), st.integers(0, 4), st.booleans()),
    st.tuples(st.just("start"), st.integers(0, 3)),
    st.tuples(st.just("stop"), st.integers(0, 3)),
    st.tuples(st.just("coder"), WHICH, st.booleans()),
    st.tuples(st.just("builder"), WHICH, st.sampled_from(["queued"] * 4 + ["busy", "refused"])),
    st.tuples(
        st.just("job"),
        WHICH,
        st.sampled_from(["start"] * 5 + ["stop"] * 3 + ["delete"]),
        st.sampled_from((*STATUSES, "running", "succeeded", "succeeded")),
        st.booleans(),
    ),
    st.tuples(
        st.just("ext"),
        st.integers(0, 2),
        st.sampled_from(["start", "stop"]),
        st.sampled_from(["running", "succeeded", "succeeded", "failed"]),
    ),
    st.tuples(st.just("beat"), WHICH, st.integers(0, 90)),
    st.tuples(
        st.just("life"),
        WHICH,
        st.sampled_from(["created", "starting", "ready", "start_error", "start_timeout"]),
    ),
    st.tuples(st.just("advance"), st.integers(0, 7)),
    st.tuples(st.just("advance"), st.integers(0, 7)),
    st.tuples(st.just("tick"), st.sampled_from([1, 10, 29, 31, 119, 121, 599, 601])),
    st.tuples(st.just("timer"), st.integers(0, 2), st.booleans()),
)
FAST = settings(max_examples=200, deadline=None)


@given(st.lists(STEPS, min_size=5, max_size=60))
@FAST
def test_every_sequence_of_events_keeps_the_invariants(steps: list[tuple[Any, ...]]) -> None:
    world = World()
    for step in steps:
        world.step(step)


@given(st.lists(STEPS, min_size=1, max_size=60))
@FAST
def test_every_sequence_keeps_the_invariants_while_waiting_for_startup_scripts(
    steps: list[tuple[Any, ...]],
) -> None:
    world = World(timeouts=STARTUP_SCRIPTS)
    for step in steps:
        world.step(step)


@given(st.lists(STEPS, min_size=5, max_size=60), st.randoms(use_true_random=False))
@FAST
def test_every_sequence_with_duplicated_inputs_keeps_the_invariants(
    steps: list[tuple[Any, ...]], rng: random.Random
) -> None:
    world = World()
    doubled = [s for step in steps for s in [step] * (1 + (rng.random() < 0.3))]
    for step in doubled:
        world.step(step)


def test_a_nominal_sequence_visits_every_state_so_the_invariants_are_not_vacuous() -> None:
    world = World()
    for step in [
        ("call", 0, True),
        ("coder", 0, False),  # rejected: failed
        ("call", 1, True),
        ("job", 0, "start", "running", True),  # before the accept (R12)
        ("coder", 0, True),  # building
        ("call", 2, True),
        ("job", 0, "start", "succeeded", True),  # agent_waiting
        ("beat", 0, 0),  # ready
        ("call", 3, True),  # answered at once
        ("stop", 0),  # stopping
        ("builder", 0, "queued"),
        ("job", 0, "stop", "succeeded", False),  # stopped
        ("start", 0),  # building
        ("builder", 0, "queued"),
        ("job", 0, "start", "succeeded", True),  # agent_waiting
        ("beat", 0, 0),  # ready
        ("job", 0, "delete", "succeeded", False),  # none
    ]:
        world.step(step)
    assert set(world.states) == set(State)
    assert world.called == set(world.answers)
    assert world.answers["call-1"] == (False, {"created": True, "workspace_name": "alice/dev"})
    stop, start = world.sent[-2:]
    assert world.answers["stop-0"] == (
        False,
        {"stopped": True, "workspace_name": "alice/dev", "build_id": f"build-{stop}-stop"},
    )
    assert world.answers["start-0"] == (
        False,
        {"started": True, "workspace_name": "alice/dev", "build_id": f"build-{start}-start"},
    )


READY_SCRIPT = [
    ("call", 0, True),
    ("coder", 0, True),
    ("job", 0, "start", "succeeded", True),
    ("beat", 0, 0),
]
SCRIPTS = {
    "agent timer, then a call, then a delete": [
        ("call", 0, True),
        ("coder", 0, True),
        ("job", 0, "start", "succeeded", True),
        ("timer", 0, True),
        ("call", 1, True),
        ("job", 0, "delete", "succeeded", False),
    ],
    "create timer, late accept, build timer, delete": [
        ("call", 0, True),
        ("timer", 0, True),
        ("coder", 0, True),
        ("timer", 0, True),
        ("job", 0, "delete", "succeeded", False),
    ],
    "agent gone from a ready chat": [
        ("call", 0, True),
        ("coder", 0, True),
        ("beat", 0, 0),  # before the build succeeded: ready at once
        ("job", 0, "start", "succeeded", True),
        ("tick", 31),
        ("call", 1, True),
        ("coder", 0, False),
    ],
    "failed and canceled builds, a build without agent": [
        ("call", 0, True),
        ("coder", 0, True),
        ("job", 0, "start", "failed", True),
        ("call", 1, True),
        ("coder", 0, True),
        ("job", 0, "start", "canceled", False),
        ("call", 2, True),
        ("coder", 0, True),
        ("job", 0, "start", "succeeded", False),
    ],
    "build timer, then the build succeeds late": [
        ("call", 0, True),
        ("coder", 0, True),
        ("timer", 0, True),  # build_timed_out: failed
        ("job", 0, "start", "succeeded", True),  # late success: agent_waiting
    ],
    "build timer, then the build succeeds late without an agent": [
        ("call", 0, True),
        ("coder", 0, True),
        ("timer", 0, True),
        ("job", 0, "start", "succeeded", False),  # late success, no agent: ready
    ],
    "delete while building": [
        ("call", 0, True),
        ("coder", 0, True),
        ("call", 1, True),
        ("job", 0, "delete", "succeeded", False),
    ],
    "nominal": [
        ("call", 0, True),
        ("coder", 0, False),
        ("call", 1, True),
        ("coder", 0, True),
        ("job", 0, "start", "succeeded", True),
        ("beat", 0, 0),
        ("job", 0, "delete", "succeeded", False),
    ],
    # start_workspace and stop_workspace, and builds nobody asked for.
    "stop, start, and a stop that runs late": [
        *READY_SCRIPT,
        ("stop", 0),  # stop_requested: stopping
        ("builder", 0, "queued"),
        ("job", 0, "stop", "succeeded", False),  # stopped
        ("start", 0),  # start_requested: building
        ("builder", 0, "queued"),
        ("job", 0, "start", "failed", True),  # build_failed
        ("stop", 1),  # stop_requested from failed
        ("builder", 0, "queued"),
        ("timer", 0, True),  # build_timed_out: failed
        ("job", 0, "stop", "succeeded", False),  # late: failed -> stopped
        ("job", 1, "delete", "succeeded", False),  # stopped -> none
    ],
    "a stop that fails or is canceled, a start from failed": [
        *READY_SCRIPT,
        ("stop", 0),
        ("builder", 0, "queued"),
        ("job", 0, "stop", "failed", True),  # stopping -> failed
        ("start", 0),  # start_requested from failed
        ("builder", 0, "queued"),
        ("job", 0, "start", "succeeded", False),  # ready, no agent
        ("stop", 1),
        ("builder", 0, "queued"),
        ("job", 0, "stop", "canceled", False),  # stopping -> failed
    ],
    "a start call finds the agent silent, a stop alone in agent_waiting": [
        *READY_SCRIPT,
        ("tick", 31),
        ("start", 0),  # agent_silent: ready -> agent_waiting
        ("timer", 0, True),  # agent_connect_timed_out
        ("stop", 0),  # only a stop waits: stop_requested from agent_waiting
        ("builder", 0, "refused"),  # back: the agent never beat again... agent_waiting
        ("tick", 121),
        ("timer", 0, True),
        ("stop", 1),
        ("job", 0, "delete", "succeeded", False),  # stopping -> none
    ],
    "refused commands go back to the newest build": [
        *READY_SCRIPT,
        ("stop", 0),
        ("builder", 0, "refused"),  # stopping -> ready
        ("stop", 1),
        ("builder", 0, "queued"),
        ("job", 0, "stop", "succeeded", False),  # stopped
        ("start", 0),
        ("builder", 0, "refused"),  # building -> stopped
        ("start", 1),
        ("builder", 0, "queued"),
        ("job", 0, "start", "failed", True),  # failed
        ("start", 2),
        ("builder", 0, "refused"),  # building -> failed
        ("stop", 2),
        ("builder", 0, "refused"),  # stopping -> failed
        ("job", 0, "delete", "succeeded", False),  # failed -> none
    ],
    "a start asked for while the newest build is a stop the chat did not follow": [
        ("call", 0, True),
        ("job", 0, "start", "succeeded", False),  # before the accept (R12)
        ("job", 0, "stop", "succeeded", False),  # newer, before the accept
        ("coder", 0, True),  # building, then ready: the known job applies
        ("start", 0),  # the newest build is a stop: start_requested from ready
    ],
    "builds nobody asked for are followed from every bound state": [
        ("call", 0, True),
        ("coder", 0, True),  # building
        ("ext", 0, "start", "running"),  # building -> building
        ("ext", 1, "stop", "running"),  # building -> stopping
        ("ext", 2, "stop", "running"),  # stopping -> stopping
        ("ext", 0, "start", "succeeded"),  # ...an older one: nothing
        ("ext", 3, "start", "running"),  # stopping -> building
        ("ext", 3, "start", "succeeded"),  # agent_waiting
        ("ext", 4, "stop", "running"),  # agent_waiting -> stopping
        ("ext", 4, "stop", "succeeded"),  # stopped
        ("ext", 5, "stop", "running"),  # stopped -> stopping
        ("ext", 5, "stop", "failed"),  # failed
        ("ext", 6, "start", "running"),  # failed -> building
        ("ext", 6, "start", "failed"),
        ("ext", 7, "stop", "running"),  # failed -> stopping
        ("ext", 7, "stop", "succeeded"),
        ("ext", 8, "start", "running"),  # stopped -> building
        ("ext", 8, "start", "succeeded"),  # agent_waiting
        ("ext", 9, "start", "running"),  # agent_waiting -> building
        ("ext", 9, "start", "succeeded"),
        ("beat", 0, 0),
    ],
    "builds nobody asked for, from ready": [
        *READY_SCRIPT,
        ("ext", 0, "start", "running"),  # ready -> building
        ("ext", 0, "start", "succeeded"),
        ("extbeat", 0),
        ("ext", 1, "stop", "running"),  # ready -> stopping
        ("ext", 1, "stop", "succeeded"),
        ("job", 0, "delete", "succeeded", False),  # stopped -> none
    ],
    "a stop refused while the agent never beat": [
        ("call", 0, True),
        ("coder", 0, True),
        ("job", 0, "start", "succeeded", True),  # agent_waiting
        ("timer", 0, True),  # not_ready
        ("stop", 0),  # stop_requested from agent_waiting
        ("builder", 0, "refused"),  # stopping -> agent_waiting
        ("ext", 0, "stop", "running"),
        ("job", 1, "delete", "succeeded", False),  # stopping -> none
    ],
}


STARTUP_SCRIPTS = Timeouts(wait_for_startup_scripts=True)
# Sequences run with wait_for_startup_scripts on.
SCRIPTS_WAITING = {
    "scripts run, then finish": [
        ("call", 0, True),
        ("coder", 0, True),
        ("job", 0, "start", "succeeded", True),
        ("life", 0, "starting"),  # startup_scripts_running
        ("life", 0, "ready"),  # agent_connected: ready
    ],
    "scripts fail": [
        ("call", 0, True),
        ("coder", 0, True),
        ("life", 0, "starting"),  # before the build succeeded
        ("job", 0, "start", "succeeded", True),  # agent_waiting, then scripts running
        ("life", 0, "start_error"),  # startup_scripts_failed: ready
    ],
    "scripts outrun their timer": [
        ("call", 0, True),
        ("coder", 0, True),
        ("job", 0, "start", "succeeded", True),
        ("life", 0, "created"),
        ("timer", 0, True),  # startup_scripts_timed_out: ready
    ],
}


def test_the_scripted_sequences_reach_every_transition_of_the_table() -> None:
    reached: set[tuple[Trigger, State, State]] = set()
    runs = [(World(), steps) for steps in SCRIPTS.values()]
    runs += [(World(timeouts=STARTUP_SCRIPTS), steps) for steps in SCRIPTS_WAITING.values()]
    for world, steps in runs:
        for step in steps:
            world.step(step)
        reached |= world.reached
    assert reached == machine.allowed()


def test_a_retry_after_the_create_timer_keeps_one_create_command_in_flight() -> None:
    # R13: Coder has not answered the first command (say its consumer is down),
    # so that command is still in flight when the user retries.
    world = World()
    world.step(("call", 0, True))
    world.step(("timer", 0, True))  # create_timed_out: failed, the command unanswered
    world.step(("call", 1, True))
    in_flight = [c for c in world.commands if c not in world.outcomes]
    assert len(in_flight) <= 1, f"{len(in_flight)} create commands in flight for one chat"


def test_a_timed_out_build_answers_every_waiting_call_once() -> None:
    world = World()
    for step in [("call", 0, True), ("coder", 0, True), ("call", 1, True), ("call", 0, True)]:
        world.step(step)
    world.step(("timer", 0, False))  # before the deadline: nothing
    world.step(("timer", 0, True))
    world.step(("timer", 0, True))
    world.step(("call", 1, True))  # a repeat gets the stored answer, unchanged
    assert world.chat.row.state == State.FAILED
    assert world.answers == {
        "call-0": (
            True,
            {"error": "workspace build failed: timed out waiting for workspace build"},
        ),
        "call-1": (
            True,
            {"error": "existing workspace build failed: timed out waiting for workspace build"},
        ),
    }


# jobs.merge on its own -------------------------------------------------------------


def _update(status: str, n: int, *, agents: bool = False) -> Job:
    found = (Agent(f"agent-{n}", "main"),) if agents else ()
    moment = START + timedelta(seconds=n)
    return Job("job-1", "workspace-1", "build-1", "start", status, None, found, moment)


@given(st.lists(st.tuples(st.sampled_from(STATUSES), st.booleans()), min_size=1, max_size=12))
@FAST
def test_merged_job_status_never_moves_backwards_and_a_terminal_one_is_final(
    updates: list[tuple[str, bool]],
) -> None:
    known: Job | None = None
    for n, (status, agents) in enumerate(updates):
        merged = jobs.merge(known, _update(status, n, agents=agents))
        check_job_moves_forward(known, merged)
        if merged is not None:
            known = merged
    assert known is not None
    statuses = [s for s, _ in updates]
    terminal = [s for s in statuses if s in jobs.TERMINAL]
    if terminal:
        assert known.status == terminal[0]
    else:
        assert RANK[known.status] == max(RANK[s] for s in statuses)


@given(st.sampled_from(STATUSES))
def test_a_duplicate_job_update_changes_nothing(status: str) -> None:
    first = _update(status, 0)
    assert jobs.merge(first, dataclasses.replace(first, occurred_at=START + timedelta(1))) is None
