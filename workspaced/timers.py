"""
Fire durable timers without polling each chat.

Deadlines live on the chat rows (``deadline_at``). One scheduler per
instance sleeps until the earliest deadline, is woken early when this
instance writes a nearer one, and re-reads the earliest deadline every
``timer_sweep_seconds`` to pick up deadlines other instances wrote. Due
rows are claimed with ``FOR UPDATE SKIP LOCKED`` and go through the same
handler as any event; deadlines that passed while no daemon ran fire at start.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime

import asyncpg

from storage import errors, store
from telemetry import logs
from workspaced.handler import BatchHandler, utcnow

log = logs.get(__name__)
_MIN_SLEEP_S = 0.05


class TimerScheduler:
    """
    Sleep until the next deadline, then fire every due timer.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        handler: BatchHandler,
        sweep_s: float,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._pool = pool
        self._handler = handler
        self._sweep_s = sweep_s
        self._clock = clock
        self._target: datetime | None = None
        self._wake = asyncio.Event()
        self.fired = 0

    def nudge(self, deadline: datetime | None) -> None:
        """
        Wake the scheduler if ``deadline`` is sooner than the one it sleeps towards.
        """
        if deadline is not None and (self._target is None or deadline < self._target):
            self._target = deadline
            self._wake.set()

    async def _fire_due(self) -> None:
        while True:
            fired, nearer = await self._handler.fire_timers()
            self.fired += fired
            if fired:
                log.debug("timers_fired", count=fired)
            self.nudge(nearer)
            if fired == 0:
                return

    async def run(self, stop: asyncio.Event) -> None:
        """
        Fire timers until ``stop`` is set.
        """
        while not stop.is_set():
            # Cleared before reading: a nudge that lands during the reads wakes
            # the wait below at once instead of being lost.
            self._wake.clear()
            try:
                await self._fire_due()
                self._target = await store.next_deadline(self._pool)
            except errors.StorageError as exc:
                log.warning("timers_interrupted", error=str(exc))
                self._target = None
                await asyncio.sleep(1.0)
                continue
            now = self._clock()
            sleep_s = self._sweep_s
            if self._target is not None:
                # A due row another instance holds: look again shortly, do not spin.
                sleep_s = max(_MIN_SLEEP_S, min(sleep_s, (self._target - now).total_seconds()))
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
            await asyncio.wait(waits, timeout=sleep_s, return_when=asyncio.FIRST_COMPLETED)
            for task in waits:
                task.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
