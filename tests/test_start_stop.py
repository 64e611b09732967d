"""
start_workspace and stop_workspace in the pure core, one test per case of issue 13.

Each drives the core through ``tests.test_core_invariants.World`` (the same
fold the handler does, with its invariants checked after every event) and
compares the answers word for word with Coder's tools (``startworkspace.go``,
``stopworkspace.go``) and docs/contract.md, "Start and stop".
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from statemachine import results
from statemachine.model import Timeouts
from statemachine.states import State, Trigger
from tests.test_core_invariants import READY_SCRIPT, World

NAME = "alice/dev"


def _world(*steps: tuple[Any, ...], timeouts: Timeouts | None = None) -> World:
    world = World(timeouts=timeouts or Timeouts())
    for step in steps:
        world.step(step)
    return world


def _ready() -> World:
    return _world(*READY_SCRIPT)


def _answer(world: World, call: str) -> tuple[bool, dict[str, Any]]:
    is_error, content = world.answers[call]
    return is_error, dict(content)


def _builds(world: World) -> list[tuple[str, str]]:
    """
    Return (command_id, transition) of every start or stop command sent, in order.
    """
    return [(c, world.builds[c][1]) for c in world.sent if c in world.builds]


def _triggers(world: World) -> set[Trigger]:
    return {trigger for trigger, _, _ in world.reached}


def _stopped_world() -> tuple[World, str]:
    world = _ready()
    world.step(("stop", 9))
    world.step(("builder", 0, "queued"))
    world.step(("job", 0, "stop", "succeeded", False))
    ((stop, _),) = _builds(world)
    return world, stop


# No workspace ---------------------------------------------------------------------


def test_start_without_a_workspace_answers_use_create_workspace_first() -> None:
    world = _world(("start", 0), ("stop", 0))
    error = (True, {"error": "chat has no workspace; use create_workspace first"})
    assert _answer(world, "start-0") == error
    assert _answer(world, "stop-0") == error
    assert world.sent == []


def test_start_or_stop_after_the_workspace_was_deleted_says_so() -> None:
    world = _world(
        *READY_SCRIPT, ("job", 0, "delete", "succeeded", False), ("start", 0), ("stop", 0)
    )
    error = (True, {"error": "workspace was deleted; use create_workspace to make a new one"})
    assert _answer(world, "start-0") == error
    assert _answer(world, "stop-0") == error


def test_start_and_stop_waiting_on_a_create_that_fails_are_told_there_is_no_workspace() -> None:
    world = _world(("call", 0, True), ("start", 0), ("stop", 0), ("coder", 0, False))
    assert _answer(world, "call-0") == (True, {"error": "quota exceeded"})
    error = (True, {"error": results.NO_WORKSPACE})
    assert _answer(world, "start-0") == error
    assert _answer(world, "stop-0") == error


# start_workspace -------------------------------------------------------------------


def test_start_while_a_build_is_in_progress_waits_for_it_then_for_the_agent() -> None:
    world = _world(("call", 0, True), ("coder", 0, True), ("start", 0))
    world.step(("job", 0, "start", "succeeded", True))
    assert "start-0" not in world.answers
    world.step(("beat", 0, 0))
    create = world.commands[0]
    assert _answer(world, "start-0") == (
        False,
        {"started": True, "workspace_name": NAME, "build_id": f"build-{create}"},
    )
    assert world.sent == [create]  # the create's build was enough: no start command


def test_start_when_the_latest_build_is_a_succeeded_start_answers_at_once_when_reachable() -> None:
    world = _ready()
    world.step(("start", 0))
    assert _answer(world, "start-0") == (
        False,
        {"started": True, "workspace_name": NAME, "no_build": True},
    )
    assert world.chat.row.state == State.READY


def test_start_when_the_agent_is_silent_answers_once_the_agent_is_reachable_again() -> None:
    world = _ready()
    world.step(("tick", 31))
    world.step(("start", 0))
    assert world.chat.row.state == State.AGENT_WAITING
    assert "start-0" not in world.answers
    world.step(("beat", 0, 0))
    assert _answer(world, "start-0") == (
        False,
        {"started": True, "workspace_name": NAME, "no_build": True},
    )
    assert Trigger.AGENT_SILENT in _triggers(world)
    assert _builds(world) == []


def test_start_of_a_stopped_workspace_sends_one_start_command_and_answers_with_its_build() -> None:
    world, _ = _stopped_world()
    world.step(("start", 0))
    world.step(("start", 1))  # a second call waits on the same start
    (_, (start, transition)) = _builds(world)
    assert transition == "start"
    world.step(("builder", 0, "queued"))
    world.step(("job", 0, "start", "running", True))
    world.step(("job", 0, "start", "succeeded", True))
    assert "start-0" not in world.answers  # the agent has not beaten yet
    world.step(("beat", 0, 0))
    expected = (
        False,
        {"started": True, "workspace_name": NAME, "build_id": f"build-{start}-start"},
    )
    assert _answer(world, "start-0") == expected
    assert _answer(world, "start-1") == expected
    assert len(_builds(world)) == 2  # the stop, then one start


def test_a_failed_start_build_answers_workspace_start_build_failed() -> None:
    world, _ = _stopped_world()
    world.step(("start", 0))
    world.step(("builder", 0, "queued"))
    world.step(("job", 0, "start", "failed", True))
    (_, (start, _)) = _builds(world)
    assert _answer(world, "start-0") == (
        True,
        {"error": "workspace start build failed: apply failed", "build_id": f"build-{start}-start"},
    )
    assert world.chat.row.state == State.FAILED


def test_a_start_from_failed_tries_again_as_coders_tool_does() -> None:
    world, _ = _stopped_world()
    world.step(("start", 0))
    world.step(("builder", 0, "queued"))
    world.step(("job", 0, "start", "failed", True))
    world.step(("start", 1))
    assert [t for _, t in _builds(world)] == ["stop", "start", "start"]
    assert world.chat.row.state == State.BUILDING


def test_start_with_startup_scripts_answers_their_failure_as_create_does() -> None:
    scripts = Timeouts(wait_for_startup_scripts=True)
    world = _world(*READY_SCRIPT, timeouts=scripts)
    for step in [
        ("stop", 0),
        ("builder", 0, "queued"),
        ("job", 0, "stop", "succeeded", False),
        ("start", 0),
        ("builder", 0, "queued"),
        ("job", 0, "start", "succeeded", True),
        ("life", 0, "starting"),
    ]:
        world.step(step)
    assert "start-0" not in world.answers
    world.step(("life", 0, "start_error"))
    _, content = _answer(world, "start-0")
    assert content["started"] is True
    assert content["startup_scripts"] == "startup_scripts_failed"
    assert content["lifecycle_state"] == "start_error"


def test_start_with_startup_scripts_that_run_too_long_answers_startup_scripts_timeout() -> None:
    scripts = Timeouts(wait_for_startup_scripts=True)
    world = _world(*READY_SCRIPT, timeouts=scripts)
    for step in [
        ("stop", 0),
        ("builder", 0, "queued"),
        ("job", 0, "stop", "succeeded", False),
        ("start", 0),
        ("builder", 0, "queued"),
        ("job", 0, "start", "succeeded", True),
        ("life", 0, "created"),
        ("timer", 0, True),
    ]:
        world.step(step)
    _, content = _answer(world, "start-0")
    assert content["startup_scripts"] == "startup_scripts_timeout"


# stop_workspace --------------------------------------------------------------------


def test_stop_sends_one_stop_command_and_answers_stopped_with_its_build_id() -> None:
    world, stop = _stopped_world()
    assert _answer(world, "stop-9") == (
        False,
        {"stopped": True, "workspace_name": NAME, "build_id": f"build-{stop}-stop"},
    )
    assert world.chat.row.state == State.STOPPED
    assert world.chat.row.workspace_id is not None  # the chat stays bound


def test_stop_of_a_stopped_workspace_answers_stopped_at_once() -> None:
    world, _ = _stopped_world()
    world.step(("stop", 0))
    assert _answer(world, "stop-0") == (
        False,
        {"stopped": True, "workspace_name": NAME, "no_build": True},
    )
    assert len(_builds(world)) == 1


def test_create_on_a_stopped_workspace_answers_use_start_workspace() -> None:
    world, _ = _stopped_world()
    world.step(("call", 5, True))
    assert _answer(world, "call-5") == (
        False,
        results.existing(NAME, "stopped", results.STOPPED),
    )


def test_stop_while_a_build_is_in_progress_waits_for_it_then_stops_if_still_needed() -> None:
    world = _world(("call", 0, True), ("coder", 0, True), ("stop", 0))
    world.step(("job", 0, "start", "succeeded", True))
    assert _builds(world) == []  # the create still waits for its agent: so does the stop
    world.step(("beat", 0, 0))
    assert _answer(world, "call-0") == (False, {"created": True, "workspace_name": NAME})
    ((stop, transition),) = _builds(world)
    assert transition == "stop"
    world.step(("builder", 0, "queued"))
    world.step(("job", 0, "stop", "succeeded", False))
    assert _answer(world, "stop-0") == (
        False,
        {"stopped": True, "workspace_name": NAME, "build_id": f"build-{stop}-stop"},
    )


def test_stop_while_a_stop_build_nobody_asked_for_runs_waits_and_needs_no_command() -> None:
    world = _ready()
    world.step(("ext", 0, "stop", "running"))
    world.step(("stop", 0))
    assert world.chat.row.state == State.STOPPING
    world.step(("ext", 0, "stop", "succeeded"))
    assert _answer(world, "stop-0") == (
        False,
        {"stopped": True, "workspace_name": NAME, "build_id": "build-ext-0-stop"},
    )
    assert _builds(world) == []


def test_a_failed_stop_build_answers_workspace_stop_build_failed() -> None:
    world = _ready()
    world.step(("stop", 0))
    world.step(("builder", 0, "queued"))
    world.step(("job", 0, "stop", "failed", True))
    ((stop, _),) = _builds(world)
    assert _answer(world, "stop-0") == (
        True,
        {"error": "workspace stop build failed: apply failed", "build_id": f"build-{stop}-stop"},
    )


def test_a_stop_build_that_times_out_answers_with_the_build_timeout() -> None:
    world = _ready()
    world.step(("stop", 0))
    world.step(("timer", 0, True))
    assert _answer(world, "stop-0") == (
        True,
        {"error": "workspace stop build failed: timed out waiting for workspace build"},
    )
    assert world.chat.row.state == State.FAILED


# Coder's answers to build commands ---------------------------------------------------


def test_coders_refusal_of_a_stop_is_the_error_and_the_workspace_stays_ready() -> None:
    world = _ready()
    world.step(("stop", 0))
    world.step(("builder", 0, "refused"))
    assert _answer(world, "stop-0") == (True, {"error": "forbidden"})
    assert world.chat.row.state == State.READY
    world.step(("call", 7, True))
    assert _answer(world, "call-7")[1]["status"] == "already_exists"  # no second workspace


def test_coders_refusal_of_a_start_is_the_error_and_the_workspace_stays_stopped() -> None:
    world, _ = _stopped_world()
    world.step(("start", 0))
    world.step(("builder", 0, "refused"))
    assert _answer(world, "start-0") == (True, {"error": "forbidden"})
    assert world.chat.row.state == State.STOPPED


def test_coders_409_build_already_active_waits_for_that_build_then_asks_again() -> None:
    world = _ready()
    world.step(("stop", 0))
    world.step(("builder", 0, "busy"))  # A workspace build is already active.
    assert world.chat.row.state == State.STOPPING
    assert "stop-0" not in world.answers
    world.step(("ext", 0, "start", "running"))  # the active build: a restart
    assert world.chat.row.state == State.BUILDING
    world.step(("ext", 0, "start", "succeeded"))
    world.step(("extbeat", 0))
    # The restart is done: the stop is still needed, so it is asked for again.
    assert [t for _, t in _builds(world)] == ["stop", "stop"]
    assert world.chat.row.state == State.STOPPING
    world.step(("builder", 0, "queued"))
    world.step(("job", 0, "stop", "succeeded", False))
    assert _answer(world, "stop-0")[1]["stopped"] is True


def test_a_queued_answer_after_the_build_was_seen_changes_nothing() -> None:
    world = _ready()
    world.step(("stop", 0))
    ((stop, _),) = _builds(world)
    world.step(("job", 0, "stop", "succeeded", False))  # the watch was faster than the answer
    assert world.chat.row.state == State.STOPPED
    before = world.chat
    world.step(("builder", 0, "queued"))
    assert world.chat == before
    assert world.chat.row.job_id == f"job-{stop}-stop"


# Builds nobody asked for, serialisation, timers ----------------------------------------


def test_a_start_build_the_daemon_did_not_ask_for_is_followed() -> None:
    world, _ = _stopped_world()
    world.step(("ext", 0, "start", "running"))
    assert world.chat.row.state == State.BUILDING
    world.step(("call", 3, True))  # waits for that build, creates nothing
    world.step(("ext", 0, "start", "succeeded"))
    world.step(("extbeat", 0))
    assert world.chat.row.state == State.READY
    assert world.chat.row.agent_id == "agent-ext-0"
    assert _answer(world, "call-3")[1]["status"] == "already_exists"
    assert len(world.commands) == 1
    assert Trigger.BUILD_STARTED in _triggers(world)


def test_a_start_while_a_stop_build_runs_waits_for_it_then_starts() -> None:
    world = _ready()
    world.step(("stop", 0))
    world.step(("start", 0))  # waits: the stop runs
    assert [t for _, t in _builds(world)] == ["stop"]
    world.step(("builder", 0, "queued"))
    world.step(("job", 0, "stop", "succeeded", False))
    assert _answer(world, "stop-0")[1]["stopped"] is True
    assert [t for _, t in _builds(world)] == ["stop", "start"]
    world.step(("builder", 0, "queued"))
    world.step(("job", 0, "start", "succeeded", True))
    world.step(("beat", 0, 0))
    assert _answer(world, "start-0")[1]["started"] is True


def test_calls_of_three_tools_waiting_on_one_chat_are_each_answered_once_as_their_tool() -> None:
    world = _world(("call", 0, True), ("coder", 0, True))
    for step in [("stop", 0), ("call", 1, True), ("start", 0), ("stop", 0), ("call", 1, True)]:
        world.step(step)  # repeats are redeliveries: they still wait, nothing more
    world.step(("job", 0, "start", "succeeded", True))
    world.step(("beat", 0, 0))
    assert _answer(world, "call-0") == (False, {"created": True, "workspace_name": NAME})
    assert _answer(world, "call-1")[1]["message"] == results.ALREADY_BUILT
    create = world.commands[0]
    assert _answer(world, "start-0") == (
        False,
        {"started": True, "workspace_name": NAME, "build_id": f"build-{create}"},
    )
    assert "stop-0" not in world.answers  # now the stop
    world.step(("builder", 0, "queued"))
    world.step(("job", 0, "stop", "succeeded", False))
    assert _answer(world, "stop-0")[1]["stopped"] is True
    assert set(world.answers) == world.called


def test_start_and_stop_wait_with_durable_deadlines_of_the_build_timeout() -> None:
    build_s = timedelta(seconds=Timeouts().build_s)
    world = _ready()
    world.step(("stop", 0))
    assert world.chat.row.deadline_at == world.now + build_s
    world, _ = _stopped_world()
    world.step(("start", 0))
    assert world.chat.row.deadline_at == world.now + build_s
    world.step(("timer", 0, False))  # before its deadline: nothing
    assert "start-0" not in world.answers
    world.step(("timer", 0, True))
    assert _answer(world, "start-0") == (
        True,
        {"error": "workspace start build failed: timed out waiting for workspace build"},
    )
