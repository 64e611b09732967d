"""
Merge provisioner job updates so a job's status never moves backwards (R12).
"""

from __future__ import annotations

from statemachine.model import Job

TERMINAL = frozenset({"succeeded", "failed", "canceled"})
_RANK = {"unknown": 0, "pending": 1, "running": 2, "canceling": 3}


def merge(known: Job | None, update: Job) -> Job | None:
    """
    Return the job after ``update``, or None when the update changes nothing.

    A terminal status is final; otherwise a status only moves forward along
    pending, running, canceling. Agents learnt earlier are kept when a later
    update omits them.
    """
    if known is None:
        return update
    if known.status in TERMINAL:
        return None
    if update.status not in TERMINAL and _RANK[update.status] <= _RANK[known.status]:
        return None
    agents = update.agents or known.agents
    error = update.error or known.error
    return Job(
        known.job_id,
        known.workspace_id,
        known.build_id,
        known.transition,
        update.status,
        error,
        agents,
        max(known.occurred_at, update.occurred_at),
    )
