"""
The Grafana dashboard of ``docs/grafana/workspaced.json``: provisionable, and every panel's SQL runs.

Each target's ``rawSql`` runs, Grafana's macros expanded as Grafana's
PostgreSQL data source expands them, against a migrated database holding a
few chats, as the ``workspaced_reader`` role the docs tell Grafana's login to
be granted: a renamed view, column or grant breaks this test, not the panel.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.test_reader_role import READER, TO_READY, seed_call, seed_chat

DASHBOARD = Path(__file__).parent.parent / "docs" / "grafana" / "workspaced.json"
DATASOURCE = {"type": "grafana-postgresql-datasource", "uid": "${datasource}"}


def _panels() -> list[dict[str, Any]]:
    model = json.loads(DASHBOARD.read_text())
    found = []
    for panel in model["panels"]:
        found += [panel, *panel.get("panels", [])]  # rows may hold panels
    return found


def _targets() -> list[tuple[str, dict[str, Any]]]:
    return [(p["title"], t) for p in _panels() for t in p.get("targets", [])]


def expand(raw: str, start: datetime, end: datetime) -> str:
    """
    Expand the Grafana macros the panels use, as Grafana's PostgreSQL data source does.
    """
    begin, finish = f"'{start.isoformat()}'", f"'{end.isoformat()}'"
    text = re.sub(r"\$__timeFilter\(([^)]+)\)", rf"\1 BETWEEN {begin} AND {finish}", raw)
    text = re.sub(
        r"\$__timeGroupAlias\(([^,]+),\s*[^)]+\)",
        r'floor(extract(epoch FROM \1)/60)*60 AS "time"',
        text,
    )
    text = re.sub(
        r"\$__timeGroup\(([^,]+),\s*[^)]+\)", r"floor(extract(epoch FROM \1)/60)*60", text
    )
    text = text.replace("$__timeFrom()", begin).replace("$__timeTo()", finish)
    assert "$" not in text, f"a macro or variable this test does not expand: {text}"
    return text


def test_the_dashboard_is_a_provisionable_model_over_a_postgresql_datasource_variable() -> None:
    model = json.loads(DASHBOARD.read_text())
    assert model["uid"] == "workspaced"
    assert model.get("id") is None  # provisioning assigns it
    (variable,) = model["templating"]["list"]
    assert (variable["type"], variable["name"]) == ("datasource", "datasource")
    assert variable["query"] == DATASOURCE["type"]
    panels = _panels()
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["datasource"] == DATASOURCE, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(set(refs)) == len(refs), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["rawQuery"] is True
            assert target["format"] in {"table", "time_series"}
    titles = " ".join(p["title"] for p in panels).lower()
    for subject in ("per state", "stuck", "p50", "stale", "latest transitions"):
        assert subject in titles


@pytest.fixture
async def seeded(db: asyncpg.Connection) -> asyncpg.Connection:
    now = datetime.now(UTC)
    for _ in range(3):
        await seed_chat(db, TO_READY, workspace_name="dev", owner_name="alice")
    await seed_chat(db, TO_READY, agent_id=str(uuid.uuid4()))
    failed = (("tool_call", "creating", 0.0), ("create_accepted", "building", 2.0))
    await seed_chat(db, (*failed, ("build_failed", "failed", 9.0)), reason="exit status 1")
    stuck = await seed_chat(db, failed, deadline_at=now - timedelta(minutes=1))
    await seed_call(db, stuck, answered=False)
    return db


@pytest.mark.parametrize(("title", "target"), _targets(), ids=[t for t, _ in _targets()])
async def test_every_panel_query_runs_as_the_reader_role_on_a_migrated_database(
    seeded: asyncpg.Connection, title: str, target: dict[str, Any]
) -> None:
    end = datetime.now(UTC)
    query = expand(target["rawSql"], end - timedelta(hours=6), end)
    async with seeded.transaction():
        await seeded.execute(f"SET LOCAL ROLE {READER}")
        rows = await seeded.fetch(query)
    assert rows, f"{title}: no rows from the seeded chats"
    if target["format"] == "time_series":
        assert {"time", "value"} <= set(rows[0].keys()), title
