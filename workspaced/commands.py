"""
The commands for the people who call workspaced: ``call``, ``events`` and ``show``.

Each prints for a person by default and JSON lines with ``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from datetime import datetime
from typing import Any

import orjson

from workspaced import client, settings, status

NAMES = ("call", "events", "show")
EXIT_ERROR_RESULT = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 124  # as coreutils' timeout


def add_parsers(sub: Any) -> None:
    """
    Add the three commands to the ``workspaced`` parser.
    """
    call = sub.add_parser("call", help="send a tool call and print its result")
    call.add_argument("--chat", required=True, type=_uuid, help="the chat's id (UUID)")
    call.add_argument("--owner", required=True, type=_uuid, help="the owner's user id (UUID)")
    call.add_argument(
        "--tool",
        default="create_workspace",
        choices=["create_workspace", "start_workspace", "stop_workspace"],
        help="which tool (create_workspace)",
    )
    call.add_argument("--template", help="the template id (UUID; create_workspace only)")
    call.add_argument("--name", help="the workspace name (Coder's rules; else one is made)")
    call.add_argument("--template-name", help="seeds a generated name when --name is absent")
    call.add_argument(
        "--param", action="append", default=[], metavar="K=V", help="a template parameter"
    )
    call.add_argument("--tool-call-id", help="the call's id (default: a new one)")
    call.add_argument("--no-wait", action="store_true", help="send and exit without the result")
    call.add_argument("--timeout", type=float, default=900.0, help="seconds to wait (900)")
    call.add_argument("--json", action="store_true", help="print the result as JSON")
    events = sub.add_parser("events", help="print workspace events, of one chat or all")
    events.add_argument("--chat", type=_uuid, help="only this chat's events")
    events.add_argument("--follow", action="store_true", help="keep printing new events")
    events.add_argument("--json", action="store_true", help="one JSON object per line")
    show = sub.add_parser("show", help="one chat: its row, deadline, calls and history")
    show.add_argument("chat_id", type=_uuid, help="the chat's id (UUID)")
    show.add_argument("--json", action="store_true", help="print as JSON")


def dispatch(args: argparse.Namespace, conf: settings.Settings) -> int:
    """
    Run the command ``args`` names; return the exit status.
    """
    if args.command == "call":
        return asyncio.run(_call(args, conf))
    if args.command == "events":
        return asyncio.run(_events(args, conf))
    return asyncio.run(_show(args, conf))


def _uuid(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        msg = f"{text!r} is not a UUID"
        raise argparse.ArgumentTypeError(msg) from None


def _parameters(pairs: list[str]) -> dict[str, str] | None:
    found = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            msg = f"--param {pair!r}: expected K=V"
            raise client.ClientError(msg)
        found[key] = value
    return found or None


async def _call(args: argparse.Namespace, conf: settings.Settings) -> int:
    arguments: dict[str, Any] = {}
    if args.tool == "create_workspace":
        if args.template is None:
            print("workspaced: create_workspace needs --template", file=sys.stderr)  # noqa: T201
            return EXIT_USAGE
        arguments["template_id"] = args.template
        if args.name is not None:
            arguments["name"] = args.name
        if (parameters := _parameters(args.param)) is not None:
            arguments["parameters"] = parameters
    async with client.WorkspaceClient(conf.kafka_config(), source="workspaced-cli") as calls:
        call_id = await calls.send(
            args.tool,
            args.chat,
            args.owner,
            arguments,
            template_name=args.template_name,
            tool_call_id=args.tool_call_id,
        )
        if args.no_wait:
            _out({"tool_call_id": call_id} if args.json else f"sent {call_id}")
            return 0
        try:
            result = await calls.result(call_id, args.timeout)
        except client.ResultTimeoutError as exc:
            print(f"workspaced: {exc}", file=sys.stderr)  # noqa: T201
            return EXIT_TIMEOUT
    if args.json:
        _out(
            {
                "tool_call_id": result.tool_call_id,
                "chat_id": result.chat_id,
                "tool": result.tool,
                "is_error": result.is_error,
                "content": dict(result.content),
            }
        )
    else:
        word = "error" if result.is_error else "ok"
        content = orjson.dumps(dict(result.content)).decode()
        _out(f"{word}  {result.tool_call_id}  {content}")
    return EXIT_ERROR_RESULT if result.is_error else 0


async def _events(args: argparse.Namespace, conf: settings.Settings) -> int:
    async with client.WorkspaceClient(conf.kafka_config(), source="workspaced-cli") as calls:
        async for event in calls.events(args.chat, from_beginning=True, follow=args.follow):
            if args.json:
                _out(
                    {
                        "type": event.ce_type,
                        "id": event.ce_id,
                        "chat_id": event.chat_id,
                        "from_state": event.from_state,
                        "to_state": event.to_state,
                        "trigger": event.trigger,
                        "version": event.version,
                        "occurred_at": event.occurred_at.isoformat(),
                        "workspace_id": event.workspace_id,
                        "workspace_name": event.workspace_name,
                        "agent_id": event.agent_id,
                        "reason": event.reason,
                    }
                )
            else:
                extra = event.reason or event.workspace_name or ""
                _out(
                    f"{event.occurred_at:%H:%M:%S.%f}"[:-3]
                    + f"  {event.chat_id[:8]}  {event.kind:<13}  {event.from_state:>13} → "
                    f"{event.to_state:<13}  {event.trigger:<18}  {extra}"
                )
    return 0


async def _show(args: argparse.Namespace, conf: settings.Settings) -> int:
    found = await status.chat(conf.database_url.get_secret_value(), args.chat_id)
    if found is None:
        print(f"workspaced: no chat {args.chat_id}", file=sys.stderr)  # noqa: T201
        return EXIT_ERROR_RESULT
    _out(found if args.json else status.chat_text(found))
    return 0


def _out(value: Any) -> None:
    if isinstance(value, str):
        print(value, flush=True)  # noqa: T201
    else:
        print(orjson.dumps(value, default=_default).decode(), flush=True)  # noqa: T201


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)
