"""
Start and stop the service processes the project runs itself.

Every child is tied to the Python process that started it: on Linux it gets
``PR_SET_PDEATHSIG``, so an interrupted test run or a killed ``workspaced
dev`` never leaves an orphan broker or database behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

_PR_SET_PDEATHSIG = 1


class ServiceError(RuntimeError):
    """
    Raise when a service the project starts itself cannot be started.
    """


def free_port(host: str = "127.0.0.1") -> int:
    """
    Return a TCP port on ``host`` that nothing listens on right now.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent(sig: int) -> None:
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, sig)
    # The parent may have died between fork and prctl.
    if os.getppid() == 1:
        os.kill(os.getpid(), sig)


@dataclass(slots=True)
class ManagedProcess:
    """
    Hold one child process, its log file and the signal that stops it cleanly.
    """

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    stop_signal: int = signal.SIGTERM
    _log: IO[bytes] | None = field(default=None, repr=False)

    @classmethod
    def start(  # noqa: PLR0913 - each argument is one aspect of a process
        cls,
        name: str,
        argv: list[str],
        *,
        log_path: Path,
        env: dict[str, str] | None = None,
        user: str | None = None,
        stop_signal: int = signal.SIGTERM,
        cwd: Path | None = None,
    ) -> ManagedProcess:
        """
        Start ``argv`` with its output in ``log_path``; it dies with this process.
        """
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = log_path.open("ab")
        try:
            popen = subprocess.Popen(  # noqa: S603 - argv is built by the project
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                user=user,
                start_new_session=True,
                preexec_fn=lambda: _die_with_parent(stop_signal),  # noqa: PLW1509
            )
        except OSError as exc:
            log.close()
            msg = f"cannot start {name}: {exc}"
            raise ServiceError(msg) from exc
        return cls(name, popen, log_path, stop_signal, log)

    def alive(self) -> bool:
        """
        Tell whether the process is still running.
        """
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """
        Return the last lines the process wrote, for error messages.
        """
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout_s: float = 15.0) -> None:
        """
        Ask the process to stop, and kill it if it has not within ``timeout_s``.
        """
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(self.stop_signal)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None


def wait_for_port(process: ManagedProcess, host: str, port: int, timeout_s: float) -> None:
    """
    Wait until ``host:port`` accepts connections, or fail with the process log.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process.alive():
            msg = f"{process.name} exited with {process.popen.returncode}:\n{process.log_tail()}"
            raise ServiceError(msg)
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    process.stop()
    msg = f"{process.name} did not listen on {host}:{port} within {timeout_s:.0f} s"
    msg += f":\n{process.log_tail()}"
    raise ServiceError(msg)
