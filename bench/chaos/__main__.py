"""
Run the chaos and fuzz scenarios on real processes; print tables; write docs/reliability.md.

Exit status 1 when an invariant fails (known failures only with ``--strict``)
or a scenario could not run; 0 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psutil

from bench import harness
from bench.chaos import fuzzing, report, scenarios
from bench.chaos.services import ChaosServices, services

ALL = ("kills", "services", "outage", "fuzz", "backends")
DOC = harness.ROOT / "docs" / "reliability.md"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small sizes, for CI (under 3 minutes)")
    p.add_argument(
        "--broker", choices=("tansu", "apache"), default=None, help="default $BENCH_BROKER or tansu"
    )
    p.add_argument("--only", nargs="+", choices=ALL, help="run these scenarios only")
    p.add_argument(
        "--strict", action="store_true", help="known failing invariants fail the run too"
    )
    p.add_argument("--seed", type=int, default=20250131)
    p.add_argument(
        "--write-doc",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write the figures into docs/reliability.md (default: full runs only)",
    )
    p.add_argument(
        "--doc-from",
        nargs="+",
        type=Path,
        metavar="JSON",
        help="run nothing: write the figures of these saved runs into docs/reliability.md",
    )
    p.add_argument("--chats", type=int, help="chats of the kill scenario")
    p.add_argument("--kills", type=int, help="SIGKILLs of the kill scenario")
    p.add_argument("--fuzz-records", type=int, help="fuzzed records per input topic")
    return p


def _sizes(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    return {
        "kill_chats": args.chats or (300 if quick else 2000),
        "kills": args.kills or (3 if quick else 20),
        "kill_window_s": 20.0 if quick else 120.0,
        "service_chats": 200 if quick else 1000,
        "service_window_s": 20.0 if quick else 60.0,
        "down_s": 3.0 if quick else 10.0,
        "outage_chats": 30 if quick else 100,
        "outage_timeout_s": 6.0 if quick else 8.0,
        "fuzz_records": args.fuzz_records or (1000 if quick else 10_000),
        "fuzz_large": 3 if quick else 10,
        "backend_chats": 150 if quick else 600,
        "backend_window_s": 10.0 if quick else 30.0,
        "terminate_every_s": 0.1,
    }


def _jobs(
    svc: ChaosServices, z: dict[str, Any], seed: int
) -> dict[str, Callable[[], Awaitable[dict[str, Any]]]]:
    return {
        "kills": lambda: scenarios.kills(
            svc, z["kill_chats"], z["kills"], z["kill_window_s"], seed
        ),
        "services": lambda: scenarios.services_restart(
            svc, z["service_chats"], z["service_window_s"], z["down_s"], seed
        ),
        "outage": lambda: scenarios.outage(svc, z["outage_chats"], z["outage_timeout_s"], seed),
        "fuzz": lambda: fuzzing.fuzzing(svc, z["fuzz_records"], z["fuzz_large"], seed),
        "backends": lambda: scenarios.backends(
            svc, z["backend_chats"], z["backend_window_s"], z["terminate_every_s"], seed
        ),
    }


async def _run(
    svc: ChaosServices, names: list[str], sizes: dict[str, Any], seed: int
) -> list[dict[str, Any]]:
    jobs = _jobs(svc, sizes, seed)
    results = []
    for name in names:
        harness.say(f"\n== {name}")
        began = time.monotonic()
        try:
            result = await jobs[name]()
        except Exception as exc:  # noqa: BLE001 - one broken scenario must not hide the others
            traceback.print_exc()
            result = {"scenario": name, "title": name, "error": f"{type(exc).__name__}: {exc}"}
        result["duration_s"] = time.monotonic() - began
        results.append(result)
        harness.say(report.table(result))
    return results


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=harness.ROOT, capture_output=True, text=True, check=False
        )
    except OSError:
        return ""
    return done.stdout


def _code() -> dict[str, Any]:
    """
    Say which code ran: the commit, and the files changed beside it (the suite's own left out).
    """
    own = ("bench/chaos/", "bench/results/", "docs/reliability.md", "tests/test_chaos_tools.py")
    changed = [line[3:] for line in _git("status", "--porcelain").splitlines()]
    return {
        "commit": _git("rev-parse", "--short", "HEAD").strip() or "unknown",
        "changed": sorted(c for c in changed if not c.startswith(own)),
    }


def _machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
    }


def main() -> int:
    args = _parser().parse_args()
    # The run's own clients reconnect through every fault the scenarios make; their
    # retries would drown the tables. The daemons' logs are in bench/results/logs.
    for name in ("aiokafka", "asyncpg"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    if args.doc_from:
        for saved in args.doc_from:
            report.write(DOC, orjson.loads(saved.read_bytes()))
        harness.say(f"figures written to {DOC}")
        return 0
    broker = args.broker or os.environ.get("BENCH_BROKER", "tansu")
    sizes = _sizes(args)
    names = list(args.only or ALL)
    began = time.monotonic()
    run: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "broker": broker,
        "broker_name": "Apache Kafka 4.1 (KRaft, one node)" if broker == "apache" else "Tansu",
        "started_at": datetime.now(UTC).isoformat(),
        "machine": _machine(),
        "code": _code(),
        "sizes": sizes,
        "seed": args.seed,
        "command": "python -m bench.chaos " + " ".join(sys.argv[1:]),
    }
    with services(broker) as svc:
        run["results"] = asyncio.run(_run(svc, names, sizes, args.seed))
    run["total_s"] = time.monotonic() - began
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    harness.RESULTS.mkdir(parents=True, exist_ok=True)
    out = harness.RESULTS / f"chaos-{run['mode']}-{broker}-{stamp}.json"
    out.write_bytes(orjson.dumps(run, option=orjson.OPT_INDENT_2))
    harness.say(f"\nraw results: {out}  ({run['total_s']:.0f} s in all)")
    write_doc = args.write_doc if args.write_doc is not None else not args.quick
    if write_doc and (not args.only or args.write_doc):
        report.write(DOC, run)
        harness.say(f"figures written to {DOC}")
    failures = report.failed(run["results"], strict=args.strict)
    for failure in failures:
        harness.say(f"FAILED  {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
