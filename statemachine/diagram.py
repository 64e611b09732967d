"""
Render the transition table as a mermaid state diagram (``make docs``).

Uses transitions' own mermaid engine on the very table decisions check, so
docs/state-diagram.md cannot drift silently: a test compares them.
"""

from __future__ import annotations

from transitions.extensions import GraphMachine

from statemachine.machine import add_table
from statemachine.states import State

HEADER = """\
# State diagram

Generated from `statemachine/machine.py` by `make docs`; a test fails when it
is stale. Conditions in brackets are decided by `statemachine/decide.py`.

"""


class _Model:
    """
    Stand in for a chat: GraphMachine draws the graph of a model.
    """


def mermaid() -> str:
    """
    Return the mermaid source of the state diagram.
    """
    machine = GraphMachine(
        model=_Model(),
        states=[s.value for s in State],
        initial=State.NONE.value,
        auto_transitions=False,
        graph_engine="mermaid",
        show_conditions=True,
    )
    add_table(machine)
    source = str(machine.model.get_graph().draw(None))  # type: ignore[attr-defined]
    # transitions writes a bare title between '---' lines; mermaid wants 'title:'.
    return source.replace("---\nState Machine\n---", "---\ntitle: workspaced chat workspace\n---")


def markdown() -> str:
    """
    Return docs/state-diagram.md as it should be.
    """
    return f"{HEADER}```mermaid\n{mermaid().strip()}\n```\n"


if __name__ == "__main__":
    print(markdown(), end="")  # noqa: T201
