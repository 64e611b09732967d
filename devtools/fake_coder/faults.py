"""
Inject failures into the fake's API: errors, throttling, slowness, dropped watches, old routes.

Each ``*_next`` call arms the next ``n`` API requests (``/api/...`` only; the
``/fake/...`` admin routes are never affected). A request takes at most one
delay and then at most one failure, failures first-armed-first-served:
``fail_next`` answers Coder's internal error, ``throttle_next`` answers
Coder's rate-limit 429 with ``Retry-After``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from aiohttp import web

from devtools.fake_coder import wire


@dataclass(frozen=True, slots=True)
class Failure:
    """
    Say how one request fails: its status and, for 429, the Retry-After in seconds.
    """

    status: int
    retry_after_s: int | None = None

    def response(self) -> web.Response:
        """
        Return the answer Coder gives for this failure.
        """
        if self.status == 429:
            # coderd/httpmw/ratelimit.go, with httprate's headers.
            seconds = self.retry_after_s if self.retry_after_s is not None else 1
            return wire.respond(
                429,
                "You've been rate limited for sending more than 512 requests in 1m0s.",
                headers={
                    "Retry-After": str(seconds),
                    "X-RateLimit-Limit": "512",
                    "X-RateLimit-Remaining": "0",
                },
            )
        # coderd/httpapi/httpapi.go InternalServerError
        return wire.respond(self.status, wire.INTERNAL_ERROR, detail="fake coder: injected fault")


class Faults:
    """
    Hold the armed faults; the server's middleware asks ``take_delay`` and ``take_failure``.
    """

    def __init__(self) -> None:
        self._failures: deque[Failure] = deque()
        self._delays: deque[float] = deque()
        self.watch_ws_enabled = True

    def fail_next(self, n: int = 1, status: int = 500) -> None:
        """
        Make the next ``n`` API requests answer ``status`` with Coder's internal-error body.
        """
        self._failures.extend([Failure(status)] * n)

    def throttle_next(self, n: int = 1, retry_after_s: int = 1) -> None:
        """
        Make the next ``n`` API requests answer 429 with ``Retry-After: retry_after_s``.
        """
        self._failures.extend([Failure(429, retry_after_s)] * n)

    def delay_next(self, n: int = 1, delay_s: float = 0.5) -> None:
        """
        Make the next ``n`` API requests wait ``delay_s`` before being handled.
        """
        self._delays.extend([delay_s] * n)

    def clear(self) -> None:
        """
        Disarm every pending fault and serve ``watch-ws`` again.
        """
        self._failures.clear()
        self._delays.clear()
        self.watch_ws_enabled = True

    def take_delay(self) -> float:
        """
        Return the delay for this request (0 when none is armed), disarming it.
        """
        return self._delays.popleft() if self._delays else 0.0

    def take_failure(self) -> Failure | None:
        """
        Return the failure for this request, if one is armed, disarming it.
        """
        return self._failures.popleft() if self._failures else None
