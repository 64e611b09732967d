"""
Write docs/schemas/<event type>.json, one JSON Schema per event type.

Run from the repository root: ``.venv/bin/python docs/generate_schemas.py``.
The schemas come from the pydantic models of ``consumers.schemas``, so the
docs and the validation the daemon does cannot drift apart; a test fails when
the committed files are stale.
"""

from __future__ import annotations

import json
from pathlib import Path

from consumers import schemas

DRAFT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"


def schema_of(event_type: str) -> dict[str, object]:
    """
    Return the JSON Schema of one event type's data.

    ``$id`` and ``title`` are the event type: three workspace events share a
    model, and the schema should still say which one it describes.
    """
    model = schemas.EVENT_TYPES[event_type]
    schema: dict[str, object] = model.model_json_schema(mode="validation")
    schema["$schema"] = DRAFT
    schema["$id"] = event_type
    schema["title"] = event_type
    return schema


def render() -> dict[str, str]:
    """
    Return the text of every schema file, by file name.

    Keys are sorted and the text ends with a newline, so the output is the
    same on every run and diffs only when a model changes.
    """
    return {
        f"{event_type}.json": json.dumps(schema_of(event_type), indent=2, sort_keys=True) + "\n"
        for event_type in sorted(schemas.EVENT_TYPES)
    }


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    """
    Write the schema files into ``directory`` and remove ones no event type has.
    """
    directory.mkdir(parents=True, exist_ok=True)
    files = render()
    for stale in directory.glob("*.json"):
        if stale.name not in files:
            stale.unlink()
    written = []
    for name, text in files.items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def main() -> None:
    """
    Regenerate docs/schemas and say which files were written.
    """
    for path in write():
        print(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path)


if __name__ == "__main__":
    main()
