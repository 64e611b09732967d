"""
Fail when docs/contract.md drifts from the code, the JSON Schemas, the AsyncAPI file or the tables.

The contract is written so it can be read by these tests: one section per
subject (``## Event data``, ``## Settings``, …), one ``###`` section per event
type or table, and tables whose first row names their columns. Everything it
is compared with is computed from the code at test time (the pydantic models,
``consumers.kafka.TOPICS``, ``Settings.model_fields``, the CLI parser, the
migrated database), so a field, topic, setting, message, command or column
added to the code and not to the contract fails here.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import jsonschema
import pytest
from pydantic import SecretStr

from consumers import codec, kafka, schemas
from statemachine import machine, results
from statemachine.states import State, Trigger
from workspaced import cli, settings

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CONTRACT = DOCS / "contract.md"
ASYNCAPI = DOCS / "asyncapi.yaml"
SCHEMA_DIR = DOCS / "schemas"

# Modules whose public string constants are texts a caller sees (results,
# reasons, event types, content types).
MESSAGE_CONSTANT_MODULES = ("statemachine.results", "statemachine.decide", "consumers.codec")
# Packages searched for the texts of errors and dead letters.
MESSAGE_PACKAGES = ("statemachine", "consumers", "storage", "workspaced", "coder")
# Calls whose text argument reaches a caller: (name, index of the argument).
MESSAGE_CALLS = {
    "DecodeError": 0,
    "InvalidArgumentError": 0,
    "DeadLetter": 0,
    "InvalidToolCall": -1,
}
UUID_PATTERN = schemas.UUID.__metadata__[0].pattern  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------
# Reading the contract


def _contract() -> str:
    return CONTRACT.read_text(encoding="utf-8")


def _sections(text: str, level: int) -> dict[str, str]:
    """
    Return the body of every heading of ``level`` (``##`` is 2), by heading text.
    """
    marker = "#" * level + " "
    found: dict[str, str] = {}
    heading: str | None = None
    body: list[str] = []
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and re.match(rf"#{{1,{level}}} ", line):
            if heading is not None:
                found[heading] = "\n".join(body)
            heading = line[len(marker) :].strip() if line.startswith(marker) else None
            body = []
        elif heading is not None:
            body.append(line)
    if heading is not None:
        found[heading] = "\n".join(body)
    return found


def _section(title: str) -> str:
    sections = _sections(_contract(), 2)
    assert title in sections, f"docs/contract.md has no section `## {title}`"
    return sections[title]


def _subsections(title: str) -> dict[str, str]:
    return _sections(_section(title), 3)


def _cells(line: str) -> list[str]:
    # A `|` inside a code span or escaped as `\|` is not a column separator.
    parts, cell, code = [], "", False
    i = 0
    body = line.strip().strip("|") if line.strip().endswith("|") else line.strip()[1:]
    while i < len(body):
        char = body[i]
        if char == "\\" and i + 1 < len(body) and body[i + 1] == "|":
            cell += "|"
            i += 2
            continue
        if char == "`":
            code = not code
        if char == "|" and not code:
            parts.append(cell.strip())
            cell = ""
        else:
            cell += char
        i += 1
    parts.append(cell.strip())
    return parts


def _tables(body: str) -> list[list[dict[str, str]]]:
    """
    Return every markdown table of ``body``: a list of rows, each by column name.
    """
    tables: list[list[dict[str, str]]] = []
    lines = body.splitlines()
    i = 0
    while i < len(lines) - 1:
        if lines[i].lstrip().startswith("|") and re.fullmatch(
            r"\s*\|?[\s:|-]+\|?\s*", lines[i + 1]
        ):
            header = [_plain(c) for c in _cells(lines[i])]
            rows = []
            i += 2
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                cells = _cells(lines[i])
                assert len(cells) == len(header), f"table row with wrong cell count: {lines[i]}"
                rows.append(dict(zip(header, cells, strict=True)))
                i += 1
            tables.append(rows)
        else:
            i += 1
    return tables


def _table(body: str, column: str) -> list[dict[str, str]]:
    """
    Return the first table of ``body`` that has ``column``.
    """
    for table in _tables(body):
        if table and column in table[0]:
            return table
    pytest.fail(f"no table with a `{column}` column")


def _plain(cell: str) -> str:
    """
    Return a cell's text without code marks and with single spaces.
    """
    return " ".join(cell.replace("`", "").split())


def _codes(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def _flat(text: str) -> str:
    return " ".join(text.split())


def _collapse(text: str) -> str:
    return re.sub(r"\s+", " ", text)


# ---------------------------------------------------------------------------
# What the code says


def _resolve(prop: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in prop:
        return {
            **defs[prop["$ref"].rsplit("/", 1)[-1]],
            **{k: v for k, v in prop.items() if k != "$ref"},
        }
    return prop


def _type_of(prop: dict[str, Any], defs: dict[str, Any]) -> tuple[str, dict[str, Any] | None, str]:
    """
    Return how the contract writes a property's type, its nested object, and the nesting suffix.
    """
    nullable = False
    if "anyOf" in prop:
        options = [o for o in prop["anyOf"] if o.get("type") != "null"]
        nullable = len(options) < len(prop["anyOf"])
        assert len(options) == 1, f"cannot describe a union: {prop}"
        prop = {**{k: v for k, v in prop.items() if k != "anyOf"}, **options[0]}
    prop = _resolve(prop, defs)
    nested: dict[str, Any] | None = None
    suffix = "."
    kind = prop.get("type")
    if "const" in prop:
        text = json.dumps(prop["const"])
    elif "enum" in prop:
        text = "one of " + ", ".join(json.dumps(v) for v in prop["enum"])
    elif kind == "string":
        text = _string_type(prop)
    elif kind == "object" and "properties" in prop:
        text, nested = "object", prop
    elif kind == "object":
        extra = prop.get("additionalProperties", True)
        text = "object" if extra is True else f"object of string to {_type_of(extra, defs)[0]}"
    elif kind == "array":
        items = _resolve(prop.get("items", {}), defs)
        if items.get("type") == "object" and "properties" in items:
            text, nested, suffix = "array of objects", items, "[]."
        else:
            text = f"array of {_type_of(items, defs)[0]}"
    else:
        text = str(kind)
    return (f"{text} or null" if nullable else text), nested, suffix


def _string_type(prop: dict[str, Any]) -> str:
    low, high = prop.get("minLength"), prop.get("maxLength")
    plural = "s" if low != 1 else ""
    choices = (
        (prop.get("pattern") == UUID_PATTERN, "uuid"),
        (prop.get("format") == "date-time", "date-time"),
        ("pattern" in prop, f"string matching {prop.get('pattern')}"),
        (low is not None and high is not None, f"string, {low} to {high} characters"),
        (low is not None, f"string, at least {low} character{plural}"),
        (high is not None, f"string, at most {high} characters"),
    )
    return next((text for matches, text in choices if matches), "string")


def _field_rows(schema: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """
    Return ``{field: (type, required)}`` of a JSON Schema, nested fields as ``a.b`` and ``a[].b``.
    """
    defs = schema.get("$defs", {})
    rows: dict[str, tuple[str, str]] = {}

    def walk(obj: dict[str, Any], prefix: str) -> None:
        required = set(obj.get("required", ()))
        for name, prop in obj["properties"].items():
            text, nested, suffix = _type_of(prop, defs)
            rows[prefix + name] = (text, "yes" if name in required else "no")
            if nested is not None:
                walk(nested, prefix + name + suffix)

    walk(schema, "")
    return rows


def _code_schema(event_type: str) -> dict[str, Any]:
    return schemas.EVENT_TYPES[event_type].model_json_schema(mode="validation")


def _file_schema(event_type: str) -> dict[str, Any]:
    path = SCHEMA_DIR / f"{event_type}.json"
    assert path.is_file(), f"docs/schemas/{event_type}.json is missing"
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema


def _event_tables() -> dict[str, list[dict[str, str]]]:
    """
    Return the field table of every event type named in a ``###`` heading of ``## Event data``.
    """
    found: dict[str, list[dict[str, str]]] = {}
    for heading, body in _subsections("Event data").items():
        for event_type in _codes(heading):
            assert event_type not in found, f"{event_type} has two sections"
            found[event_type] = _table(body, "field")
    return found


def _render_default(value: Any) -> str:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str) and not value:
        return "empty"
    return str(value)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """
    Return the options (by long name) and positional arguments (by upper-case name) of a parser.
    """
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        longs = [o for o in action.option_strings if o.startswith("--")]
        found[longs[0] if longs else (action.metavar or action.dest).upper()] = action
    return found


def _render_option_default(action: argparse.Action) -> str:
    if action.required or not action.option_strings:
        return "required"
    if isinstance(action, argparse._StoreTrueAction):
        return "off"
    if action.default in ([], ()):
        return "none"
    return _render_default(action.default)


def _module_path(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    assert spec is not None
    assert spec.origin is not None
    return Path(spec.origin)


def _template(node: ast.expr) -> str | None:
    """
    Return a regular expression for a string literal or f-string, placeholders matching anything.
    """
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return re.escape(_collapse(node.value)) if node.value.strip() else None
    if isinstance(node, ast.JoinedStr):
        parts = [
            re.escape(_collapse(str(v.value))) if isinstance(v, ast.Constant) else ".+?"
            for v in node.values
        ]
        return "".join(parts)
    return None


def _call_name(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Name):
        return node.func.id
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    return None


def _assignments(function: ast.AST) -> dict[str, list[ast.expr]]:
    """
    Return the values assigned to each plain name inside ``function``.
    """
    assigned: dict[str, list[ast.expr]] = {}
    for node in ast.walk(function):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    assigned.setdefault(target.id, []).append(node.value)
    return assigned


def _message_arguments(function: ast.AST) -> Iterator[ast.expr]:
    """
    Yield the text argument of every error or dead letter built in ``function``.
    """
    assigned = _assignments(function)
    for node in ast.walk(function):
        name = _call_name(node) if isinstance(node, ast.Call) else None
        if name in MESSAGE_CALLS and isinstance(node, ast.Call) and node.args:
            arg = node.args[MESSAGE_CALLS[name]]
            yield from assigned.get(arg.id, []) if isinstance(arg, ast.Name) else [arg]


def _texts_in(path: Path) -> Iterator[tuple[str, str]]:
    """
    Yield (where, pattern) for every text passed to an error or dead letter in ``path``.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for function in ast.walk(tree):
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            for candidate in _message_arguments(function):
                pattern = _template(candidate)
                if pattern is not None:
                    yield f"{path.relative_to(ROOT)}:{candidate.lineno}", pattern


def _message_patterns() -> list[tuple[str, str]]:
    found: dict[str, str] = {}
    for module in MESSAGE_CONSTANT_MODULES:
        path = _module_path(module)
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            target = (
                node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
            )
            value = getattr(node, "value", None)
            if (
                isinstance(target, ast.Name)
                and target.id.isupper()
                and not target.id.startswith("_")
                and value is not None
                and (pattern := _template(value)) is not None
            ):
                found.setdefault(pattern, f"{module}.{target.id}")
    for package in MESSAGE_PACKAGES:
        folder = ROOT / package
        for path in sorted(folder.rglob("*.py")) if folder.is_dir() else ():
            for where, pattern in _texts_in(path):
                found.setdefault(pattern, where)
    return sorted((where, pattern) for pattern, where in found.items())


# ---------------------------------------------------------------------------
# What the AsyncAPI document says (checked as text: PyYAML is not a dependency)


def _children(lines: list[str], start: int, end: int, indent: int) -> dict[str, tuple[int, int]]:
    """
    Return the mapping keys at ``indent`` spaces within [start, end), with their line ranges.
    """
    keys: list[tuple[str, int]] = []
    for i in range(start, end):
        match = re.match(r"^( *)([A-Za-z0-9_.$-]+):", lines[i])
        if match and len(match.group(1)) == indent:
            keys.append((match.group(2), i))
    found = {}
    for n, (key, line) in enumerate(keys):
        found[key] = (line, keys[n + 1][1] if n + 1 < len(keys) else end)
    return found


def _asyncapi() -> dict[str, dict[str, Any]]:
    """
    Return, by channel address: direction, event types and key binding.
    """
    lines = ASYNCAPI.read_text(encoding="utf-8").splitlines()
    top = _children(lines, 0, len(lines), 0)
    components = _children(lines, *top["components"], 2)
    messages = {}
    for message, (s, e) in _children(lines, *components["messages"], 4).items():
        block = "\n".join(lines[s:e])
        name = re.search(r"^      name: (\S+)$", block, re.MULTILINE)
        binding = re.search(r"#/components/messageBindings/(\w+)", block)
        assert name, f"message {message} has no name"
        assert binding, f"message {message} has no key binding"
        messages[message] = (name.group(1), binding.group(1))
    actions: dict[str, str] = {}
    for s, e in _children(lines, *top["operations"], 2).values():
        block = "\n".join(lines[s:e])
        action = re.search(r"^    action: (\w+)$", block, re.MULTILINE)
        channel = re.search(r"^      \$ref: '#/channels/(\w+)'$", block, re.MULTILINE)
        assert action, "an operation without action"
        assert channel, "an operation without channel"
        actions[channel.group(1)] = action.group(1)
    channels = {}
    for channel, (s, e) in _children(lines, *top["channels"], 2).items():
        block = "\n".join(lines[s:e])
        address = re.search(r"^    address: (\S+)$", block, re.MULTILINE)
        assert address, f"channel {channel} has no address"
        refs = re.findall(r"#/components/messages/(\w+)", block)
        channels[address.group(1)] = {
            "direction": {"receive": "in", "send": "out"}[actions[channel]],
            "types": {messages[r][0] for r in refs},
            "keys": {messages[r][1] for r in refs},
        }
    return channels


# ---------------------------------------------------------------------------
# States, transitions, rules


def test_the_states_table_has_every_state_of_the_code() -> None:
    rows = _table(_section("States"), "state")
    assert [_plain(r["state"]) for r in rows] == [s.value for s in State], (
        f"the states table should list {[s.value for s in State]}"
    )
    assert all(_plain(r["meaning"]) for r in rows)


def test_the_triggers_table_has_every_trigger_of_the_code() -> None:
    rows = _table(_section("States"), "trigger")
    documented = sorted(_plain(r["trigger"]) for r in rows)
    assert documented == sorted(t.value for t in Trigger), "the triggers table differs from Trigger"


def test_the_transition_table_is_the_machine_s_table() -> None:
    rows = _table(_section("States"), "from")
    documented = {
        (Trigger(_plain(r["trigger"])), State(source), State(_plain(r["to"])))
        for r in rows
        for source in _codes(r["from"])
    }
    expected = set(machine.allowed())
    assert documented == expected, (
        f"missing: {sorted(expected - documented)}; not in the machine: {sorted(documented - expected)}"
    )


def test_every_rule_r1_to_r16_has_its_own_section() -> None:
    headings = list(_subsections("Rules"))
    numbers = [m.group(1) for h in headings if (m := re.match(r"R(\d+)\b", h))]
    assert numbers == [str(n) for n in range(1, 17)], "## Rules needs `### R1 …` to `### R16 …`"


# ---------------------------------------------------------------------------
# Texts and results


@pytest.mark.parametrize(("where", "pattern"), _message_patterns())
def test_every_text_the_code_gives_callers_appears_verbatim(where: str, pattern: str) -> None:
    assert re.search(pattern, _flat(_contract())), (
        f"the text of {where} (pattern {pattern!r}) is not in docs/contract.md"
    )


def _json_objects(text: str) -> list[Any]:
    found = []
    for span in re.findall(r"`(\{[^`]*\})`", text):
        try:
            found.append(json.loads(span))
        except json.JSONDecodeError:
            continue
    return found


def _shape(content: dict[str, Any]) -> dict[str, Any]:
    keep = {"workspace_name", "error"}
    return {k: ("…" if k in keep else v) for k, v in content.items()}


@pytest.mark.parametrize(
    "content",
    [
        results.created("alice/dev"),
        results.created("alice/dev", "no_agent"),
        results.created("alice/dev", "not_ready"),
        results.existing("alice/dev", "already_exists", results.ALREADY_BUILT),
        results.existing("alice/dev", "already_exists", results.ALREADY_RUNNING),
        results.existing("alice/dev", "stopped", results.STOPPED),
        results.error("anything"),
    ],
    ids=lambda c: "-".join(str(v) for v in c.values())[:60],
)
def test_every_result_content_is_shown_as_exact_json(content: dict[str, Any]) -> None:
    shown = [_shape(o) for o in _json_objects(_section("Tool results")) if isinstance(o, dict)]
    assert _shape(content) in shown, f"no JSON like {json.dumps(content)} in ## Tool results"


def test_every_json_example_parses_and_those_named_after_an_event_type_validate() -> None:
    blocks = re.findall(r"^```json([^\n]*)\n(.*?)^```$", _contract(), re.MULTILINE | re.DOTALL)
    assert blocks
    for info, body in blocks:
        value = json.loads(body)
        event_type = info.strip()
        if event_type:
            assert event_type in schemas.EVENT_TYPES, f"```json {event_type}: unknown type"
            schemas.EVENT_TYPES[event_type].model_validate(value)
            jsonschema.Draft202012Validator(_file_schema(event_type)).validate(value)


# ---------------------------------------------------------------------------
# Event data


def test_every_event_type_has_a_section_a_schema_file_and_an_asyncapi_message() -> None:
    documented = set(_event_tables())
    in_code = set(schemas.EVENT_TYPES)
    assert documented == in_code, "## Event data and consumers/schemas.py name other event types"
    assert {p.stem for p in SCHEMA_DIR.glob("*.json")} == in_code, "docs/schemas is stale"
    in_asyncapi = set().union(*(c["types"] for c in _asyncapi().values()))
    assert in_code <= in_asyncapi, f"missing in asyncapi.yaml: {sorted(in_code - in_asyncapi)}"


@pytest.mark.parametrize("event_type", sorted(schemas.EVENT_TYPES))
@pytest.mark.parametrize("source", ["code", "docs/schemas"])
def test_the_field_table_of_each_event_type_matches_its_schema(
    event_type: str, source: str
) -> None:
    schema = _code_schema(event_type) if source == "code" else _file_schema(event_type)
    expected = _field_rows(schema)
    table = _event_tables().get(event_type)
    assert table is not None, f"## Event data has no section for `{event_type}`"
    documented = {_plain(r["field"]): (_plain(r["type"]), _plain(r["required"])) for r in table}
    assert len(documented) == len(table), f"{event_type}: a field is listed twice"
    hint = "\n".join(f"| `{f}` | {t} | {q} | … |" for f, (t, q) in expected.items())
    assert documented == expected, f"{event_type} ({source}) should have these rows:\n{hint}"
    assert all(_plain(r["meaning"]) for r in table), f"{event_type}: a field has no meaning"


# ---------------------------------------------------------------------------
# Kafka interface


def _topic_rows() -> dict[str, dict[str, str]]:
    rows = _table(_section("Kafka interface"), "role")
    return {_plain(r["role"]): r for r in rows}


def test_the_topic_table_has_every_topic_role_with_its_default_name_and_direction() -> None:
    rows = _topic_rows()
    assert set(rows) == set(kafka.TOPICS), (
        f"the topic table should have roles {sorted(kafka.TOPICS)}"
    )
    for role, default in kafka.TOPICS.items():
        row = rows[role]
        assert _plain(row["topic"]) == default, role
        expected = "in" if role in kafka.INPUT_ROLES else "out"
        assert _plain(row["direction"]) == expected, role


def test_the_topic_table_places_every_event_type_where_the_code_reads_it() -> None:
    rows = _topic_rows()
    placed: list[str] = []
    for role, row in rows.items():
        types = set(_codes(row["event types"])) & set(schemas.EVENT_TYPES)
        placed += types
        if role in codec.INPUT_TYPES:
            assert types == set(codec.INPUT_TYPES[role]), role
    assert sorted(placed) == sorted(schemas.EVENT_TYPES), "each event type on exactly one topic"


def test_the_topic_table_agrees_with_the_asyncapi_channels() -> None:
    channels = _asyncapi()
    keys = {
        "keyChatId": "chat_id",
        "keyWorkspaceId": "workspace_id",
        "keyAgentId": "agent_id",
        "keyOriginal": "original",
    }
    rows = {_plain(r["topic"]): r for r in _topic_rows().values()}
    assert set(rows) == set(channels), f"asyncapi.yaml has channels {sorted(channels)}"
    for topic, channel in channels.items():
        row = rows[topic]
        assert _plain(row["direction"]) == channel["direction"], topic
        documented = set(_codes(row["event types"])) & set(schemas.EVENT_TYPES)
        assert documented == channel["types"] & set(schemas.EVENT_TYPES), topic
        (key,) = channel["keys"]
        assert keys[key] in _plain(row["key"]), f"{topic}: asyncapi key is {keys[key]}"


def test_the_contract_names_every_cloudevents_and_dead_letter_header() -> None:
    section = _section("Kafka interface")
    headers = [name for name, _ in codec.encode_headers("s", "i", "t", _any_time())]
    handler_source = _module_path("workspaced.handler").read_text(encoding="utf-8")
    dead_letter = set(re.findall(r'"(dlq_[a-z_]+)"', handler_source))
    assert dead_letter
    asyncapi = ASYNCAPI.read_text(encoding="utf-8")
    for name in [*headers, *sorted(dead_letter)]:
        assert f"`{name}`" in section, f"header {name} is not in ## Kafka interface"
        assert f"        {name}:\n" in asyncapi, f"header {name} is not in asyncapi.yaml"
    for content_type in (codec.JSON, codec.STRUCTURED):
        assert f"`{content_type}`" in section, content_type


def _any_time() -> datetime:
    return datetime(2025, 1, 31, tzinfo=UTC)


# ---------------------------------------------------------------------------
# Tables and views


async def _relations(db: asyncpg.Connection) -> dict[str, tuple[str, list[tuple[str, str]]]]:
    rows = await db.fetch(
        """
        SELECT c.relname, c.relkind::text AS relkind, a.attname, format_type(a.atttypid, a.atttypmod) AS type,
               a.attnotnull
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'v')
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')
        ORDER BY c.relname, a.attnum
        """
    )
    found: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    short = {"timestamp with time zone": "timestamptz"}
    for r in rows:
        kind = "table" if r["relkind"] == "r" else "view"
        text = short.get(r["type"], r["type"])
        if kind == "table" and not r["attnotnull"]:
            text += " or null"
        found.setdefault(r["relname"], (kind, []))[1].append((r["attname"], text))
    return found


async def test_every_table_and_view_is_listed_with_its_columns_and_types(
    db: asyncpg.Connection,
) -> None:
    relations = await _relations(db)
    documented = {}
    for heading, body in _subsections("Tables and views").items():
        names = _codes(heading)
        assert len(names) == 1, f"### {heading}: name one table or view in backticks"
        rows = _table(body, "column")
        documented[names[0]] = [(_plain(r["column"]), _plain(r["type"])) for r in rows]
    assert sorted(documented) == sorted(relations)
    for name, (kind, columns) in relations.items():
        hint = "\n".join(f"| `{c}` | {t} | … |" for c, t in columns)
        assert documented[name] == columns, f"{kind} {name} should have these rows:\n{hint}"


# ---------------------------------------------------------------------------
# Command line and settings


def test_every_command_of_the_cli_is_in_the_command_table() -> None:
    rows = _table(_section("Command line"), "command")
    documented = [_plain(r["command"]) for r in rows]
    expected = [f"workspaced {name}" for name in _subcommands(cli._parser())]
    assert sorted(documented) == sorted(expected)


def test_every_option_of_the_cli_is_in_the_option_table_with_its_default() -> None:
    rows = _table(_section("Command line"), "option")
    documented: dict[tuple[str, str], str] = {}
    for row in rows:
        option = _codes(row["option"])[0].split()[0]
        for command in _codes(row["commands"]) or ["all"]:
            documented[(command, option)] = _plain(row["default"])
    parser = cli._parser()
    expected = {("all", o): a for o, a in _options(parser).items()}
    for name, sub in _subcommands(parser).items():
        expected |= {(name, o): a for o, a in _options(sub).items()}
    assert sorted(documented) == sorted(expected)
    for key, action in expected.items():
        wanted = _render_option_default(action)
        assert documented[key] == wanted, f"{key}: default should read {wanted!r}"


def test_every_setting_is_in_the_settings_table_with_its_variable_and_default() -> None:
    rows = _table(_section("Settings"), "setting")
    documented = {_plain(r["setting"]): r for r in rows}
    fields = settings.Settings.model_fields
    assert sorted(documented) == sorted(fields)
    prefix = settings.Settings.model_config.get("env_prefix", "")
    for name, info in fields.items():
        row = documented[name]
        assert _plain(row["variable"]) == f"{prefix}{name.upper()}", name
        assert _plain(row["default"]) == _render_default(info.default), (
            f"{name}: default should read {_render_default(info.default)!r}"
        )
        assert _plain(row["meaning"]), name
    assert "WORKSPACED_CONFIG_DIR" in _section("Settings")


# ---------------------------------------------------------------------------
# Links


def _links(text: str) -> list[str]:
    inline = re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text)
    references = re.findall(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", text, re.MULTILINE)
    return inline + references


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_link_in_the_readme_or_docs_leaves_the_repository(path: Path) -> None:
    for link in _links(path.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", link) or link.startswith("#"):
            continue
        target = (path.parent / link.split("#", 1)[0]).resolve()
        assert target.is_relative_to(ROOT), f"{path.name}: {link} points outside the repository"
        assert target.exists(), f"{path.name}: {link} does not exist"


def test_the_contract_links_only_inside_the_repository() -> None:
    links = _links(_contract())
    assert links
    for link in links:
        assert not re.match(r"^[a-z][a-z0-9+.-]*:", link), f"{link} leaves the repository"
    assert "../" not in _contract()
