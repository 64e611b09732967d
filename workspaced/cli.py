"""
The ``workspaced`` command: migrate, run, simulate, dev and status.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from consumers import kafka
from devtools import simulator
from storage import errors, migrate
from telemetry import logs
from workspaced import client, commands, daemon, dashboard, settings, status
from workspaced.bridge import app as bridge


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="workspaced",
        description="One live Coder workspace per AI chat, driven by Kafka, kept in PostgreSQL.",
    )
    parser.add_argument("--config", type=Path, help="a TOML settings file read after config/*.toml")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("migrate", help="create or upgrade the database schema")
    sub.add_parser("run", help="run the daemon until SIGTERM")
    sub.add_parser("bridge", help="connect to Coder: execute commands, watch workspaces")
    fake = sub.add_parser("fake-coder", help="serve a fake Coder API for demos and tests")
    fake.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    fake.add_argument("--port", type=int, default=3000, help="port to listen on (3000)")
    sim = sub.add_parser("simulate", help="stand in for Coder's provisioner and agents")
    _simulator_flags(sim)
    dev = sub.add_parser(
        "dev", help="embedded PostgreSQL and broker, then migrate, run and simulate together"
    )
    dev.add_argument("--demo", action="store_true", help="publish a few tool calls and show them")
    dev.add_argument("--data-dir", type=Path, help="keep the embedded PostgreSQL data here")
    dev.add_argument(
        "--coder-url",
        help="a real Coder instead of the fake (token from WORKSPACED_CODER_SESSION_TOKEN)",
    )
    dev.add_argument(
        "--simulator",
        action="store_true",
        help="the Kafka-level simulator instead of the bridge and a Coder (as the benchmarks)",
    )
    _simulator_flags(dev)
    stat = sub.add_parser("status", help="state counts and recent transitions")
    stat.add_argument("--recent", type=int, default=15, help="how many transitions to show")
    commands.add_parsers(sub)
    dash = sub.add_parser("dashboard", help="a live, read-only web page of the state")
    dash.add_argument(
        "--host", default="127.0.0.1", help="address to listen on; the page has no login"
    )
    dash.add_argument("--port", type=int, default=8765, help="port to listen on (8765)")
    return parser


def _simulator_flags(parser: argparse.ArgumentParser) -> None:
    defaults = simulator.SimulatorOptions()
    for name, value in (
        ("create-delay-s", defaults.create_delay_s),
        ("job-step-s", defaults.job_step_s),
        ("agent-connect-delay-s", defaults.agent_connect_delay_s),
        ("heartbeat-interval-s", defaults.heartbeat_interval_s),
        ("create-failure-rate", defaults.create_failure_rate),
        ("build-failure-rate", defaults.build_failure_rate),
        ("no-agent-rate", defaults.no_agent_rate),
        ("never-connect-rate", defaults.never_connect_rate),
        ("stop-rate", defaults.stop_rate),
        ("delete-rate", defaults.delete_rate),
    ):
        parser.add_argument(f"--{name}", type=float, default=value, help=f"default {value}")
    parser.add_argument("--seed", type=int, default=None, help="random seed for repeatable runs")


def _simulator_options(args: argparse.Namespace) -> simulator.SimulatorOptions:
    return simulator.SimulatorOptions(
        create_delay_s=args.create_delay_s,
        job_step_s=args.job_step_s,
        agent_connect_delay_s=args.agent_connect_delay_s,
        heartbeat_interval_s=args.heartbeat_interval_s,
        create_failure_rate=args.create_failure_rate,
        build_failure_rate=args.build_failure_rate,
        no_agent_rate=args.no_agent_rate,
        never_connect_rate=args.never_connect_rate,
        stop_rate=args.stop_rate,
        delete_rate=args.delete_rate,
        seed=args.seed,
    )


async def _simulate(conf: settings.Settings, options: simulator.SimulatorOptions) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await kafka.ensure_topics(conf.kafka_config())
    await simulator.CoderSimulator(conf, options).run(stop)


def _fake_coder(args: argparse.Namespace, conf: settings.Settings) -> int:
    from devtools.fake_coder import server  # noqa: PLC0415 - a developer tool, as dev

    token = conf.coder_session_token
    if token is None:
        print(  # noqa: T201 - a fake's token, for the person who started it
            "workspaced: set WORKSPACED_CODER_SESSION_TOKEN to the token clients will send",
            file=sys.stderr,
        )
        return 2
    stop = asyncio.Event()

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await server.serve(args.host, args.port, token.get_secret_value(), stop)

    asyncio.run(serve())
    return 0


def _service(exc: Exception) -> str:
    """
    Name what failed, so "certificate verify failed" says whether it was PostgreSQL or Kafka.
    """
    if isinstance(exc, errors.StorageError | daemon.NotMigratedError):
        return "postgresql"
    if isinstance(exc, kafka.BrokerError | client.ClientError):
        return "kafka"
    return "coder"


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the command line; return the exit status.
    """
    args = _parser().parse_args(argv)
    try:
        conf = settings.load(args.config)
    except settings.SettingsError as exc:
        print(f"workspaced: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    logs.configure(conf.log_level, conf.log_format)
    try:
        return _dispatch(args, conf)
    except (
        errors.StorageError,
        kafka.BrokerError,
        daemon.NotMigratedError,
        client.ClientError,
        bridge.BridgeConfigError,
    ) as exc:
        logs.get("workspaced").error(
            "command_failed", command=args.command, service=_service(exc), error=str(exc)
        )
        return 1
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace, conf: settings.Settings) -> int:
    dsn = conf.database_url.get_secret_value()
    if args.command == "migrate":
        applied = asyncio.run(migrate.migrate(dsn, daemon.settings_rows(conf)))
        print(f"applied {applied}" if applied else "schema is up to date")  # noqa: T201
    elif args.command == "run":
        asyncio.run(daemon.run(conf, shutdown_grace_s=conf.shutdown_grace_seconds))
    elif args.command == "dashboard":
        asyncio.run(dashboard.run(dsn, args.host, args.port))
    elif args.command == "bridge":
        asyncio.run(bridge.run(conf))
    elif args.command == "fake-coder":
        return _fake_coder(args, conf)
    elif args.command == "simulate":
        asyncio.run(_simulate(conf, _simulator_options(args)))
    elif args.command == "status":
        print(asyncio.run(status.report(dsn, args.recent)))  # noqa: T201
    elif args.command in commands.NAMES:
        return commands.dispatch(args, conf)
    elif args.command == "dev":
        from devtools import dev  # noqa: PLC0415 - starts services; only dev needs it

        return dev.main(
            conf,
            _simulator_options(args),
            demo=args.demo,
            data_dir=args.data_dir,
            coder_url=args.coder_url,
            use_simulator=args.simulator,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
