"""
Run the benchmark scenarios on embedded PostgreSQL and Kafka; print tables, write results.

``BENCH_BROKER=apache`` runs them on Apache Kafka (``make kafka-jars`` first),
otherwise on the embedded Tansu broker.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
import traceback
from datetime import UTC, datetime
from typing import Any

import psutil

from bench import bridge, harness, report, scenarios

ALL = ("reaction", "waiting", "throughput", "heartbeats", "growth", "bridge", "watching")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small sizes; finishes in under 3 minutes")
    p.add_argument("--only", nargs="+", choices=ALL, help="run these scenarios only")
    p.add_argument(
        "--broker", choices=("tansu", "apache"), default=None, help="default $BENCH_BROKER or tansu"
    )
    p.add_argument("--reaction-chats", type=int)
    p.add_argument("--reaction-window-s", type=float)
    p.add_argument("--waiting-chats", type=int)
    p.add_argument("--hold-s", type=float)
    p.add_argument("--throughput-chats", type=int)
    p.add_argument("--agents", type=int)
    p.add_argument("--heartbeats", type=int)
    p.add_argument("--growth", type=int, nargs="+", help="chats tracked at each step")
    p.add_argument("--growth-new-chats", type=int)
    p.add_argument("--bridge-chats", type=int, help="chats per reaction row through the bridge")
    p.add_argument("--bridge-window-s", type=float)
    p.add_argument("--watches", type=int, help="workspaces the bridge watches")
    p.add_argument("--idle-s", type=float, help="how long the watching bridge is measured idle")
    p.add_argument(
        "--profile",
        action="store_true",
        help="run only the throughput scenario with the daemon under pyinstrument",
    )
    return p


def _sizes(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    defaults: dict[str, Any] = {
        "reaction_chats": 50 if quick else 200,
        "reaction_window_s": 8.0 if quick else 30.0,
        "waiting_chats": 200 if quick else 1000,
        "hold_s": 15.0 if quick else 60.0,
        "throughput_chats": 1000 if quick else 10_000,
        "agents": 10_000 if quick else 100_000,
        "heartbeats": 100_000 if quick else 1_000_000,
        "growth": [1000, 5000] if quick else [1000, 10_000, 100_000],
        "growth_new_chats": 1000,
        "bridge_chats": 50 if quick else 200,
        "bridge_window_s": 8.0 if quick else 20.0,
        "watches": 2000 if quick else 10_000,
        "idle_s": 10.0 if quick else 30.0,
    }
    return {
        k: (getattr(args, k) if getattr(args, k) is not None else v) for k, v in defaults.items()
    }


def _machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


async def _run(
    svc: harness.Services, names: list[str], sizes: dict[str, Any], results: dict[str, Any]
) -> None:
    jobs = {
        "reaction": lambda: scenarios.reaction(
            svc, sizes["reaction_chats"], sizes["reaction_window_s"]
        ),
        "waiting": lambda: scenarios.waiting(svc, sizes["waiting_chats"], sizes["hold_s"]),
        "throughput": lambda: scenarios.throughput(svc, sizes["throughput_chats"]),
        "heartbeats": lambda: scenarios.heartbeats(svc, sizes["agents"], sizes["heartbeats"]),
        "growth": lambda: scenarios.growth(svc, sizes["growth"], sizes["growth_new_chats"]),
        "bridge": lambda: bridge.reaction(svc, sizes["bridge_chats"], sizes["bridge_window_s"]),
        "watching": lambda: bridge.watching(svc, sizes["watches"], sizes["idle_s"]),
    }
    tables = {"bridge": bridge.reaction_table, "watching": bridge.watching_table}
    for name in names:
        harness.say(f"\n== {name}")
        began = time.monotonic()
        try:
            results[name] = await jobs[name]()
        except Exception as exc:  # noqa: BLE001 - one failed scenario must not hide the others
            traceback.print_exc()
            results.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
        harness.say(f"   {name} took {time.monotonic() - began:.1f} s")
        if name in results:
            maker = tables.get(name) or getattr(
                report, f"{'heartbeat' if name == 'heartbeats' else name}_table"
            )
            harness.say("\n" + maker(results[name]))


async def _profile(svc: harness.Services, sizes: dict[str, Any]) -> None:
    out = harness.RESULTS / "profile-throughput.txt"
    result = await scenarios.throughput(svc, sizes["throughput_chats"], profile_to=out)
    ours = result["workspaced"]
    harness.say(f"under the profiler: {ours['chats_per_s']:.0f} chats/s; profile in {out}")


def main() -> int:
    args = _parser().parse_args()
    sizes = _sizes(args)
    broker = args.broker or os.environ.get("BENCH_BROKER", "tansu")
    names = list(args.only or ALL)
    harness.RESULTS.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(),
        "mode": "quick" if args.quick else "full",
        "broker": broker,
        "sizes": sizes,
        "machine": _machine(),
    }
    with harness.services(broker) as svc:
        if args.profile:
            asyncio.run(_profile(svc, sizes))
            return 0
        asyncio.run(_run(svc, names, sizes, results))
    results["total_s"] = time.monotonic() - began
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    mode = results["mode"]
    json_path = harness.RESULTS / f"{mode}-{broker}-{stamp}.json"
    png_path = harness.RESULTS / f"{mode}-{broker}-{stamp}-latency.png"
    report.write_json(results, json_path)
    drew = report.plot(results, png_path)
    harness.say("\n" + "=" * 72)
    harness.say(
        f"workspaced benchmarks ({mode}, broker {broker}, {results['machine']['cpus']} CPUs,"
        f" {results['machine']['memory_gib']} GiB) in {results['total_s']:.0f} s\n"
    )
    harness.say(report.render(results))
    if through := bridge.render(results):
        harness.say("\n" + through)
    harness.say(f"\nraw results: {json_path}")
    if drew:
        harness.say(f"latency plot: {png_path}")
    return 1 if results.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
