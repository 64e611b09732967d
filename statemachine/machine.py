"""
Build the transition table once, with ``transitions``, shared by every chat.

No machine object is kept per chat: decisions compute the destination and
ask this table whether the move is legal, so the table stays the single
authority and the source of the state diagram.
"""

from __future__ import annotations

from transitions import Machine

from statemachine.states import State, Trigger

S = State
T = Trigger

# Every state a workspace is bound in: the chat follows any newer build there.
_BOUND = (S.BUILDING, S.AGENT_WAITING, S.READY, S.STOPPING, S.STOPPED, S.FAILED)

# (trigger, sources, destination, condition shown in the diagram)
TABLE: tuple[tuple[Trigger, tuple[State, ...], State, str | None], ...] = (
    (T.TOOL_CALL, (S.NONE, S.FAILED), S.CREATING, None),
    (T.TOOL_CALL, (S.READY,), S.CREATING, "agent_inactive"),
    (T.CREATE_ACCEPTED, (S.CREATING, S.FAILED), S.BUILDING, "same_command"),
    (T.CREATE_REJECTED, (S.CREATING,), S.FAILED, None),
    (T.CREATE_TIMED_OUT, (S.CREATING,), S.FAILED, None),
    # From failed only after a build timeout: the build finished late; bind it.
    (T.BUILD_SUCCEEDED, (S.BUILDING, S.FAILED), S.AGENT_WAITING, "has_agent"),
    (T.BUILD_SUCCEEDED, (S.BUILDING, S.FAILED), S.READY, "no_agent_or_agent_seen"),
    (T.BUILD_SUCCEEDED, (S.STOPPING, S.FAILED), S.STOPPED, "stop_build"),
    (T.BUILD_FAILED, (S.BUILDING, S.STOPPING), S.FAILED, None),
    (T.BUILD_CANCELED, (S.BUILDING, S.STOPPING), S.FAILED, None),
    (T.BUILD_TIMED_OUT, (S.BUILDING, S.STOPPING), S.FAILED, None),
    (T.AGENT_CONNECTED, (S.AGENT_WAITING,), S.READY, None),
    (T.AGENT_CONNECT_TIMED_OUT, (S.AGENT_WAITING,), S.AGENT_WAITING, None),
    # With wait_for_startup_scripts: connected, scripts still running; then
    # ready (agent_connected), failed scripts or their timeout (ready with a note).
    (T.STARTUP_SCRIPTS_RUNNING, (S.AGENT_WAITING,), S.AGENT_WAITING, "scripts_running"),
    (T.STARTUP_SCRIPTS_FAILED, (S.AGENT_WAITING,), S.READY, "lifecycle_not_ready"),
    (T.STARTUP_SCRIPTS_TIMED_OUT, (S.AGENT_WAITING,), S.READY, None),
    (T.WORKSPACE_DELETED, _BOUND, S.NONE, None),
    # start_workspace and stop_workspace: a command, only from a resting state.
    (T.START_REQUESTED, (S.STOPPED, S.FAILED), S.BUILDING, None),
    (T.START_REQUESTED, (S.READY,), S.BUILDING, "latest_build_stopped"),
    (T.STOP_REQUESTED, (S.READY, S.FAILED), S.STOPPING, None),
    (T.STOP_REQUESTED, (S.AGENT_WAITING,), S.STOPPING, "only_stop_calls_wait"),
    (T.AGENT_SILENT, (S.READY,), S.AGENT_WAITING, "start_call_agent_inactive"),
    # A newer build than the bound one, not the chat's own: followed.
    (T.BUILD_STARTED, _BOUND, S.BUILDING, "start_build"),
    (T.BUILD_STARTED, _BOUND, S.STOPPING, "stop_build"),
    # Coder refused the command (not a 409): back to what the newest build says.
    (T.BUILD_REJECTED, (S.BUILDING,), S.STOPPED, "latest_build_stopped"),
    (T.BUILD_REJECTED, (S.STOPPING,), S.READY, "latest_build_running"),
    (T.BUILD_REJECTED, (S.STOPPING,), S.AGENT_WAITING, "latest_build_running_agent_unseen"),
    (T.BUILD_REJECTED, (S.BUILDING, S.STOPPING), S.FAILED, "latest_build_failed_or_unknown"),
)


class IllegalTransitionError(Exception):
    """
    Raise when a decision asks for a move the transition table does not have.
    """


def add_table(machine: Machine) -> Machine:
    """
    Add every transition of ``TABLE`` to a ``transitions`` machine and return it.
    """
    for trigger, sources, dest, condition in TABLE:
        machine.add_transition(
            trigger.value,
            [s.value for s in sources],
            dest.value,
            conditions=[condition] if condition else None,
        )
    return machine


MACHINE = add_table(
    Machine(
        model=None,
        states=[state.value for state in State],
        initial=State.NONE.value,
        auto_transitions=False,
        ignore_invalid_triggers=False,
    )
)
_LEGAL = frozenset(
    (trigger, source, dest) for trigger, sources, dest, _ in TABLE for source in sources
)


def check(trigger: Trigger, source: State, dest: State) -> None:
    """
    Raise ``IllegalTransitionError`` unless the table allows this move.
    """
    if (trigger, source, dest) not in _LEGAL:
        msg = f"no transition {source} --{trigger}--> {dest}"
        raise IllegalTransitionError(msg)


def allowed() -> frozenset[tuple[Trigger, State, State]]:
    """
    Return every legal (trigger, source, destination) of the table.
    """
    return _LEGAL
