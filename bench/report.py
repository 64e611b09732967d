"""
Print one plain-text table per scenario, check the goals, write JSON and a latency plot.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

Row = tuple[str, str, str, str]


def _fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "—"
    if abs(value) >= 10_000:
        return f"{value:,.0f}{unit}"
    return f"{value:,.{digits}f}{unit}"


def _ratio(baseline: float | None, ours: float | None, *, higher_is_better: bool = False) -> str:
    if baseline is None or ours is None or ours == 0 or baseline == 0:
        return "—"
    r = ours / baseline if higher_is_better else baseline / ours
    return f"{r:,.1f}x"


def table(
    title: str, rows: Sequence[tuple[str, ...]], header: tuple[str, ...] | None = None
) -> str:
    header = header or ("metric", "workspaced", "baseline", "baseline ÷ workspaced")
    cols = list(zip(header, *rows, strict=False))
    widths = [max(len(str(c)) for c in col) for col in cols]
    line = "  ".join("-" * w for w in widths)

    def fmt(row: tuple[str, ...]) -> str:
        first = row[0].ljust(widths[0])
        rest = [str(c).rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest])

    return "\n".join([title, line, fmt(header), line, *(fmt(r) for r in rows), line])


def reaction_table(r: dict[str, Any]) -> str:
    ours, theirs = r["workspaced_ms"], r["baseline_ms"]
    rows: list[Row] = [
        (
            f"{q} (ms)",
            _fmt(ours.get(q), digits=2),
            _fmt(theirs.get(q), digits=0),
            _ratio(theirs.get(q), ours.get(q)),
        )
        for q in ("p50", "p95", "p99", "max")
    ]
    rows.append(("answered", str(ours["n"]), str(theirs["n"]), ""))
    title = (
        f"Reaction latency: {r['chats']} chats, builds finish at random over {r['window_s']:.0f} s"
    )
    return table(title, rows)


def waiting_table(r: dict[str, Any]) -> str:
    ours, theirs = r["workspaced"], r["baseline"]
    rows: list[Row] = [
        (
            "statements/s (pg_stat_statements)",
            _fmt(ours["statements_per_s"], digits=2),
            _fmt(theirs["statements_per_s"], digits=1),
            _ratio(theirs["statements_per_s"], ours["statements_per_s"]),
        ),
        (
            "statements per waiting chat per minute",
            _fmt(ours["statements_per_chat_min"], digits=3),
            _fmt(theirs["statements_per_chat_min"], digits=1),
            _ratio(theirs["statements_per_chat_min"], ours["statements_per_chat_min"]),
        ),
        (
            "transactions/s (pg_stat_database)",
            _fmt(ours["commits_per_s"], digits=2),
            _fmt(theirs["commits_per_s"], digits=1),
            _ratio(theirs["commits_per_s"], ours["commits_per_s"]),
        ),
        (
            "CPU seconds during the hold",
            _fmt(ours["cpu_s"], digits=2),
            _fmt(theirs["cpu_s"], digits=2),
            _ratio(theirs["cpu_s"], ours["cpu_s"]),
        ),
        (
            "RSS (MB)",
            _fmt(ours["rss_mb"]),
            _fmt(theirs["rss_mb"]),
            _ratio(theirs["rss_mb"], ours["rss_mb"]),
        ),
    ]
    title = f"Waiting cost: {r['chats']} chats held in building for {r['hold_s']:.0f} s"
    return table(title, rows)


def throughput_table(r: dict[str, Any]) -> str:
    ours = r["workspaced"]
    base = r.get("baseline_pass", {}).get("baseline", {})
    rows: list[Row] = [
        (
            "chats/s, first tool call → last answer",
            _fmt(ours["chats_per_s"]),
            _fmt(base.get("chats_per_s")),
            _ratio(base.get("chats_per_s"), ours["chats_per_s"], higher_is_better=True),
        ),
        (
            "seconds for all chats",
            _fmt(ours["seconds"], digits=2),
            _fmt(base.get("seconds"), digits=2),
            "",
        ),
    ]
    for q in ("p50", "p99"):
        theirs = base.get("latency_ms", {}).get(q)
        ours_q = ours["latency_ms"].get(q)
        rows.append(
            (
                f"per-chat latency {q} (ms)",
                _fmt(ours_q, digits=0),
                _fmt(theirs, digits=0),
                _ratio(theirs, ours_q),
            )
        )
    rows += [
        ("error results", str(ours["errors"]), "", ""),
        (
            "daemon CPU s / RSS MB",
            f"{ours['daemon_cpu_s']:.1f} / {ours['daemon_rss_mb']:.0f}",
            "",
            "",
        ),
    ]
    title = (
        f"Throughput: {r['chats']} chats, simulator with zero delays"
        " (baseline: same run, waiting done by the pollers)"
    )
    return table(title, rows)


def heartbeat_table(r: dict[str, Any]) -> str:
    rows: list[Row] = [
        ("heartbeats/s absorbed (until lag 0)", _fmt(r["per_s"]), "—", ""),
        ("heartbeats/s published", _fmt(r["publish_per_s"]), "—", ""),
        ("backlog drained, heartbeats/s", _fmt(r.get("backlog", {}).get("per_s")), "—", ""),
        ("drain after last publish (s)", _fmt(r["drain_after_publish_s"], digits=2), "—", ""),
        ("agents stored", str(r["agents_stored"]), "—", ""),
        (
            "daemon CPU s / peak RSS MB",
            f"{r['daemon_cpu_s']:.1f} / {r['daemon_rss_mb']:.0f}",
            "—",
            "",
        ),
    ]
    title = (
        f"Heartbeat ingest: {r['agents']} agents, {r['heartbeats']} heartbeats"
        " (the baseline ingests none: it reads what something else wrote)"
    )
    return table(title, rows)


def growth_table(r: dict[str, Any]) -> str:
    steps = r["steps"]
    first = steps[0] if steps else None
    rows: list[Row] = []
    for s in steps:
        vs = ""
        if first:
            speed = s["chats_per_s"] / first["chats_per_s"]
            vs = f"{speed:.2f} / {s['daemon_rss_mb'] / first['daemon_rss_mb']:.2f}"
        rows.append((f"{s['tracked']:,}", _fmt(s["chats_per_s"]), _fmt(s["daemon_rss_mb"]), vs))
    header = ("chats tracked", "chats/s (new)", "daemon RSS MB", "vs first: chats/s / RSS")
    return table(f"Growth: {r['new_chats']} new chats on top of the chats tracked", rows, header)


def goals(results: dict[str, Any]) -> str:
    lines = ["Goals (measured, not asserted)"]

    def check(label: str, ok: bool | None, measured: str) -> None:
        mark = "—" if ok is None else ("met" if ok else "NOT met")
        lines.append(f"  [{mark:^7}] {label}: {measured}")

    if "reaction" in results:
        ours, theirs = results["reaction"]["workspaced_ms"], results["reaction"]["baseline_ms"]
        check("reaction p50 ≤ 5 ms", ours["p50"] <= 5, f"{ours['p50']:.2f} ms")
        check("reaction p99 ≤ 25 ms", ours["p99"] <= 25, f"{ours['p99']:.2f} ms")
        if theirs.get("p50"):
            ratio = theirs["p50"] / ours["p99"]
            check("p99 ≥ 100x below baseline median", ratio >= 100, f"{ratio:.0f}x")
    if "waiting" in results:
        w = results["waiting"]
        ours_m = w["workspaced"]["statements_per_chat_min"]
        check(
            "~0 statements per waiting chat per minute",
            ours_m < 1,
            f"{ours_m:.3f} (baseline {w['baseline']['statements_per_chat_min']:.1f})",
        )
    if "throughput" in results:
        t = results["throughput"]["workspaced"]["chats_per_s"]
        check("throughput ≥ 1,000 chats/s", t >= 1000, f"{t:,.0f} chats/s")
    if "heartbeats" in results:
        h = results["heartbeats"]
        best = max(h["per_s"], h.get("backlog", {}).get("per_s") or 0)
        check(
            "heartbeat ingest ≥ 50,000/s",
            best >= 50_000,
            f"live {h['per_s']:,.0f}/s, backlog {best:,.0f}/s",
        )
    if "growth" in results and results["growth"]["steps"]:
        steps = results["growth"]["steps"]
        last, first = steps[-1], steps[0]
        check(
            f"≤ 150 MB RSS at {last['tracked']:,} chats",
            last["daemon_rss_mb"] <= 150,
            f"{last['daemon_rss_mb']:.0f} MB",
        )
        drop = last["chats_per_s"] / first["chats_per_s"]
        grow = last["daemon_rss_mb"] / first["daemon_rss_mb"]
        # Growth is about degradation: faster at the largest size is within bounds.
        ok = drop >= 0.8 and grow <= 1.2
        check("growth within 20%", ok, f"throughput x{drop:.2f}, RSS x{grow:.2f}")
    return "\n".join(lines)


def render(results: dict[str, Any]) -> str:
    parts = []
    makers = {
        "reaction": reaction_table,
        "waiting": waiting_table,
        "throughput": throughput_table,
        "heartbeats": heartbeat_table,
        "growth": growth_table,
    }
    for name, maker in makers.items():
        if name in results:
            parts.append(maker(results[name]))
    for name, error in results.get("errors", {}).items():
        parts.append(f"{name}: FAILED: {error}")
    parts.append(goals(results))
    return "\n\n".join(parts)


def write_json(results: dict[str, Any], path: Path) -> None:
    path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))


def plot(results: dict[str, Any], path: Path) -> bool:
    """
    Draw the latency distributions (cumulative, log scale); return whether anything was drawn.
    """
    import matplotlib as mpl  # noqa: PLC0415 - only the report needs it

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    series: list[tuple[str, str, list[float]]] = []
    if "reaction" in results:
        r = results["reaction"]
        series.append(("Reaction latency", "workspaced", r["workspaced_samples_ms"]))
        series.append(("Reaction latency", "baseline (2 s polling)", r["baseline_samples_ms"]))
    if "throughput" in results:
        t = results["throughput"]
        series.append(
            ("Throughput: tool call → answer", "workspaced", t["workspaced"]["latency_samples_ms"])
        )
        base = t.get("baseline_pass", {}).get("baseline")
        if base:
            series.append(
                (
                    "Throughput: tool call → answer",
                    "baseline (2 s polling)",
                    base["latency_samples_ms"],
                )
            )
    if not series:
        return False
    titles = list(dict.fromkeys(s[0] for s in series))
    fig, axes = plt.subplots(1, len(titles), figsize=(6 * len(titles), 4.2), squeeze=False)
    for ax, title in zip(axes[0], titles, strict=True):
        for _, label, samples in (s for s in series if s[0] == title):
            values = sorted(max(v, 0.01) for v in samples)
            if not values:
                continue
            ys = [(i + 1) / len(values) for i in range(len(values))]
            ax.step(values, ys, where="post", label=f"{label} (n={len(values)})")
        ax.set_xscale("log")
        ax.set_xlabel("milliseconds (log scale)")
        ax.set_ylabel("fraction of chats")
        ax.set_title(title)
        ax.grid(visible=True, which="both", alpha=0.3)
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
