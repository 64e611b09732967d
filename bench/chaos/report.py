"""
Print a table per scenario, decide the exit status, and write ``docs/reliability.md``.

Only the part of the document between two markers is written; the prose
around it is kept. That part keeps the figures of every (mode, broker) run
written so far as JSON in HTML comments, so a run on one broker updates its
own section and leaves the others as they were.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson

_RUN = re.compile(r"<!-- chaos-run (\{.*?\}) -->")
_ORDER = {
    ("full", "tansu"): 0,
    ("full", "apache"): 1,
    ("quick", "tansu"): 2,
    ("quick", "apache"): 3,
}


def verdict(inv: dict[str, Any]) -> str:
    if inv["ok"]:
        return "ok"
    return "FAIL (known)" if inv["known"] else "FAIL"


def failed(results: list[dict[str, Any]], *, strict: bool) -> list[str]:
    """
    Return the invariants that fail the run: every failing one, known ones only when strict.
    """
    found = [f"{r['scenario']}: {r['error']}" for r in results if "error" in r]
    found += [
        f"{r['scenario']}: {inv['name']} = {inv['value']}"
        for r in results
        for inv in r.get("invariants", [])
        if not inv["ok"] and (strict or not inv["known"])
    ]
    return found


def _text_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    line = "  ".join("-" * w for w in widths)

    def fmt(row: tuple[str, ...]) -> str:
        cells = [str(row[0]).ljust(widths[0])]
        cells += [str(c).rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        return "  ".join(cells).rstrip()

    return [line, fmt(header), line, *(fmt(r) for r in rows), line]


def table(r: dict[str, Any]) -> str:
    """
    Return one scenario's figures and invariants as plain text.
    """
    took = f"  ({r['duration_s']:.0f} s)" if "duration_s" in r else ""
    lines = [f"{r['scenario']}: {r['title']}{took}"]
    if "error" in r:
        return "\n".join([*lines, f"  ERROR: {r['error']}"])
    figures = [(k, _num(v)) for k, v in r["figures"].items()]
    if figures:
        lines += _text_table(("figure", "value"), figures)
    invs = [(i["name"], _num(i["value"]), verdict(i)) for i in r["invariants"]]
    lines += _text_table(("invariant (must be 0)", "value", "result"), invs)
    for kind, examples in r.get("examples", {}).items():
        lines.append(f"  e.g. {kind}:")
        lines += [f"    {e[:300]}" for e in examples]
    lines += [f"  note: {n}" for n in r.get("notes", [])]
    return "\n".join(lines)


def _num(value: Any) -> str:
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}"
    if isinstance(value, int | float):
        return f"{int(value):,}"
    return str(value)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(run: dict[str, Any]) -> str:
    """
    Return the figures of one run as a markdown section.
    """
    head = f"### {run['mode'].capitalize()} run on {run['broker_name']}"
    machine = run["machine"]
    lines = [
        head,
        "",
        (
            f"{run['started_at'][:16].replace('T', ' ')} UTC, {machine['cpus']} CPUs,"
            f" {machine['memory_gib']} GiB, Python {machine['python']};"
            f" {run['total_s']:.0f} s in all. Command: `{run['command']}`."
        ),
        "",
    ]
    code = run.get("code")
    if code:
        changed = code["changed"]
        also = f" plus uncommitted changes to {len(changed)} files" if changed else ""
        shown = ", ".join(f"`{c}`" for c in changed[:8]) + (", …" if len(changed) > 8 else "")
        lines += [f"Code: `{code['commit']}`{also}{': ' + shown if changed else ''}.", ""]
    for r in run["results"]:
        lines += [f"**{r['scenario']}** — {_md_escape(r['title'])}", ""]
        if "error" in r:
            lines += [f"Did not finish: `{_md_escape(r['error'])}`", ""]
            continue
        lines += ["| figure | value |", "|---|---:|"]
        lines += [f"| {_md_escape(k)} | {_num(v)} |" for k, v in r["figures"].items()]
        lines += [
            f"| **{_md_escape(i['name'])}** | **{_num(i['value'])}** {verdict(i)} |"
            for i in r["invariants"]
        ]
        lines.append("")
        lines += _per_kind(r.get("per_kind"))
        for kind, examples in r.get("examples", {}).items():
            lines.append(
                f"- e.g. {_md_escape(kind)}: "
                + "; ".join(f"`{_md_escape(e[:200])}`" for e in examples)
            )
        lines += [f"- {_md_escape(n)}" for n in r.get("notes", [])]
        if r.get("examples") or r.get("notes"):
            lines.append("")
    return "\n".join(lines)


def _per_kind(per_kind: dict[str, dict[str, int]] | None) -> list[str]:
    """
    Return what became of each kind of fuzzed record, as a markdown table.
    """
    if not per_kind:
        return []
    cols = ["dead_letter", "error_result", "accepted", "answered", "unaccounted"]
    lines = ["| fuzzed kind | " + " | ".join(c.replace("_", " ") for c in cols) + " |"]
    lines.append("|---" + "|---:" * len(cols) + "|")
    for kind, counts in per_kind.items():
        lines.append(f"| {kind} | " + " | ".join(_num(counts.get(c, 0)) for c in cols) + " |")
    return [*lines, ""]


def _embed(run: dict[str, Any]) -> str:
    text = orjson.dumps(run).decode()  # insertion order: the tables keep their row order
    return "<!-- chaos-run " + text.replace("--", "-\\u002d") + " -->"


def stored_runs(doc: str) -> list[dict[str, Any]]:
    """
    Return the runs embedded in an existing document.
    """
    return [orjson.loads(m.group(1)) for m in _RUN.finditer(doc)]


def merge(runs: list[dict[str, Any]], new: dict[str, Any]) -> list[dict[str, Any]]:
    """
    Replace the run of the same mode and broker by ``new``; keep the others, in a fixed order.
    """
    kept = [r for r in runs if (r["mode"], r["broker"]) != (new["mode"], new["broker"])]
    return sorted([*kept, new], key=lambda r: _ORDER.get((r["mode"], r["broker"]), 9))


START = "<!-- chaos figures: written by `python -m bench.chaos`; edit around them -->"
END = "<!-- end of chaos figures -->"
SKELETON = f"""# Reliability

Figures from `make chaos` (bench/chaos).

{START}
{END}
"""


def render(runs: list[dict[str, Any]], doc: str) -> str:
    """
    Return ``doc`` with the figures of ``runs`` between its markers; the prose around is kept.
    """
    if START not in doc or END not in doc:
        doc = f"{doc.rstrip()}\n\n{START}\n{END}\n" if doc.strip() else SKELETON
    before, _, rest = doc.partition(START)
    _, _, after = rest.partition(END)
    sections = [markdown(r) for r in runs] or ["No run written yet: `make chaos`."]
    figures = "\n\n".join(sections).rstrip() + "\n\n" + "\n".join(_embed(r) for r in runs)
    return f"{before}{START}\n\n{figures}\n\n{END}{after}"


def write(path: Path, new: dict[str, Any]) -> None:
    """
    Put ``new``'s figures into the document at ``path``, beside those of other brokers and modes.
    """
    doc = path.read_text() if path.exists() else ""
    path.write_text(render(merge(stored_runs(doc), new), doc))
