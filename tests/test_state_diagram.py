from __future__ import annotations

from pathlib import Path

from statemachine import diagram
from statemachine.machine import TABLE


def test_the_committed_state_diagram_matches_the_transition_table() -> None:
    committed = (Path(__file__).parent.parent / "docs" / "state-diagram.md").read_text()
    assert committed == diagram.markdown(), "docs/state-diagram.md is stale: run `make docs`"


def test_every_transition_of_the_table_is_drawn() -> None:
    source = diagram.mermaid()
    for trigger, sources, dest, _ in TABLE:
        for src in sources:
            assert f"{src.value} --> {dest.value}: " in source
            assert trigger.value in source
