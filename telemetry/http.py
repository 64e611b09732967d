"""
Serve /metrics, /healthz and /readyz on one port, for Prometheus and supervisors.

``/healthz`` answers 200 while the event loop answers at all (a blocked loop
makes the probe time out). ``/readyz`` runs the process's readiness checks
(for the daemon: PostgreSQL reachable, partitions assigned, a relay leader
known) and answers 200 when all pass, 503 with each check's detail when one
does not. ``/metrics`` refreshes the gauges read at scrape time, then
renders the registry in Prometheus' text format.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from telemetry import logs
from telemetry.metrics import REGISTRY

log = logs.get(__name__)
Check = Callable[[], Awaitable[tuple[bool, str]]]
_CHECK_TIMEOUT_S = 2.0


def parse_address(address: str) -> tuple[str, int]:
    """
    Split ``host:port`` (``[::1]:9464`` for IPv6) into its parts.
    """
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        msg = f"{address!r} is not host:port"
        raise ValueError(msg)
    return host.strip("[]"), int(port)


class TelemetryServer:
    """
    Serve the metrics and the probes of one process until stopped.
    """

    def __init__(
        self,
        address: str,
        *,
        checks: Mapping[str, Check] | None = None,
        before_scrape: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._host, self._port = parse_address(address)
        self._checks = dict(checks or {})
        self._before_scrape = before_scrape
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        """
        Listen and return the base URL (a port of 0 picks a free one).
        """
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"
        log.info("telemetry_serving", url=self.url)
        return self.url

    async def stop(self) -> None:
        """
        Close the listening socket.
        """
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, _request: web.Request) -> web.Response:
        if self._before_scrape is not None:
            try:
                async with asyncio.timeout(_CHECK_TIMEOUT_S):
                    await self._before_scrape()
            except Exception as exc:  # noqa: BLE001 - stale gauges beat no metrics
                log.warning("metrics_refresh_failed", error=str(exc) or type(exc).__name__)
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        results = await asyncio.gather(*(_run(check) for check in self._checks.values()))
        checks = {
            name: {"ok": ok, "detail": detail}
            for name, (ok, detail) in zip(self._checks, results, strict=True)
        }
        ready = all(ok for ok, _ in results)
        return web.json_response(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status=200 if ready else 503,
        )


async def _run(check: Check) -> tuple[bool, str]:
    try:
        async with asyncio.timeout(_CHECK_TIMEOUT_S):
            return await check()
    except TimeoutError:
        return False, f"no answer within {_CHECK_TIMEOUT_S:g} s"
    except Exception as exc:  # noqa: BLE001 - a failing check is a "not ready", not a crash
        return False, str(exc) or type(exc).__name__
