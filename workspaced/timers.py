"""
Fire durable timers without polling each chat.

Deadlines live on the chat rows (``deadline_at``). One scheduler per
instance sleeps until the earliest deadline, is woken early when this
instance writes a nearer one, and re-reads the earliest deadline every
``timer_sweep_seconds`` to pick up deadlines other instances wrote. Due
rows are claimed with ``FOR UPDATE SKIP LOCKED`` and go through the same
handler as any event.

A deadline is due only once the inputs have caught up with it: every input
partition's watermark (``input_watermarks``) has reached it (see
``handler.TimerGate``). Deadlines that passed while no daemon ran therefore
fire after a restart only once the backlog that was waiting in Kafka before
them is applied. While the earliest deadline has passed but is held back,
the scheduler looks again when this instance's consumer moves a watermark,
and every ``_HELD_POLL_S`` for other instances' partitions.
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
# How often a passed deadline that did not fire is looked at again: held back
# by a watermark of another instance's partition, or claimed by another instance.
_HELD_POLL_S = 0.5


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
        self._held = False
        self.fired = 0

    def nudge(self, deadline: datetime | None) -> None:
        """
        Wake the scheduler if ``deadline`` is sooner than the one it sleeps towards.
        """
        if deadline is not None and (self._target is None or deadline < self._target):
            self._target = deadline
            self._wake.set()

    def watermarks_moved(self) -> None:
        """
        Wake the scheduler if a passed deadline waits for the inputs' watermarks.
        """
        if self._held:
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
            self._held = self._target is not None and self._target <= now
            if self._held:
                # Held back by a watermark, or claimed by another instance: look
                # again shortly (or when our consumer moves a watermark), do not spin.
                sleep_s = min(sleep_s, _HELD_POLL_S)
            elif self._target is not None:
                sleep_s = min(sleep_s, (self._target - now).total_seconds())
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
            await asyncio.wait(waits, timeout=sleep_s, return_when=asyncio.FIRST_COMPLETED)
            for task in waits:
                task.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
