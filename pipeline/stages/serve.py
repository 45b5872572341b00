"""Stage 5, serve: a real TorchServe on loopback, ready only when the model's workers are.

``serve_model`` is a context manager. It checks Java and the ports, writes a run-private
config (``torchserve.config``), starts TorchServe under a guardian in its own session with
its own working folder, TMPDIR and logs, waits until every worker reports READY, and checks
through the management API that the model runs with the spec's batch size, delay, timeout
and worker count. If the server or a worker dies first it fails at once, quoting the log
lines that say why. On every exit path (normal, exception, Ctrl-C once or twice, SIGTERM, the
deadline) the whole process group it started is gone before ``serve_model`` returns or
raises (``stop_server``: SIGTERM, SIGKILL after ``STOP_GRACE_S``, 15 s at most); after a
SIGKILL of this process the guardian stops it within seconds. TorchServe inherits the
caller's environment minus its secrets (``torchserve.childenv``).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import requests

from pipeline.errors import ServerError
from pipeline.spec import Spec
from pipeline.lint.properties import Properties
from pipeline.torchserve.config import Override, config_properties, merge_user_config, server_env, write_config
from pipeline.torchserve.logcap import LogCap
from pipeline.torchserve.logs import explain_failure, tail
from pipeline.torchserve.process import Ports, ServerProcess, check_ports, find_java, pick_ports, signals_deferred, \
    start_server, stop_server

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.2
_DIED = re.compile(r"(Backend worker process died|Load model failed|Worker disconnected)")
_BIND = re.compile(r"BindException|Address already in use")
PORT_ATTEMPTS = 3  # free ports picked again when another program takes one between the pick and Java's bind


class PortTakenError(ServerError):
    """TorchServe could not bind a port: with picked ports, another program took it after the pick."""


@dataclass(frozen=True)
class ServeConfig:
    """Where the server runs and how long start-up may take."""

    run_dir: Path
    mar_path: Path
    startup_timeout_s: float
    envelope: str | None = None  # TorchServe's service_envelope (kserve, kservev2)
    ports: Ports | None = None  # None: pick free ports
    user_config: Properties | None = None  # --ts-config: served with the keys the run owns replaced
    properties: dict | None = None  # config.properties entries over the run's own (tune: the model API, loopback)


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
    described: dict | None = None  # the management API's description of the model
    config: dict | None = None  # the config.properties the server was started with
    overrides: tuple[Override, ...] = ()  # the keys of the user's config.properties the run replaced

    @property
    def started_by_pipeline(self) -> bool:
        return self.pid is not None


def _read_tokens(workdir: Path) -> tuple[str | None, str | None]:
    key_file = workdir / "key_file.json"
    if not key_file.is_file():
        return None, None
    try:
        data = json.loads(key_file.read_text())
    except (OSError, ValueError):
        return None, None
    return data.get("inference", {}).get("key"), data.get("management", {}).get("key")


def _describe(mgmt_url: str, name: str, token: str | None) -> dict | None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = requests.get(f"{mgmt_url}/models/{name}", headers=headers, timeout=2)
    if r.status_code != 200:
        return None
    info = r.json()
    return info[0] if isinstance(info, list) and info else info


def _wait_ready(spec: Spec, proc: ServerProcess, mgmt_url: str, workdir: Path, log_dir: Path,
                deadline: float) -> tuple[str | None, str | None, dict]:
    inf_token = mgmt_token = None
    states: list[str] = []
    while time.monotonic() < deadline:
        ts_log = "\n".join(tail(log_dir / "ts_log.log", 200))
        if _BIND.search(ts_log) or _BIND.search("\n".join(tail(log_dir / "torchserve.out", 50))):
            raise PortTakenError("TorchServe could not bind a port.", details=explain_failure(log_dir))
        if proc.poll() is not None:
            raise ServerError(
                f"TorchServe exited with code {proc.poll()} before model {spec.name} was ready.",
                details=explain_failure(log_dir) or [f"see {log_dir / 'torchserve.out'}"],
            )
        model_log = "\n".join(tail(log_dir / "model_log.log", 200))
        if _DIED.search(model_log) or _DIED.search(ts_log):
            why = explain_failure(log_dir)
            cause = next((ln for ln in why if re.match(r"^(\w+\.)*\w*(Error|Exception)\b", ln)), "see the model log")
            raise ServerError(
                f"the worker for model {spec.name} died while loading: {cause}. TorchServe would retry it "
                f"forever; fix the handler or model and re-run (logs: {log_dir}).",
                details=why,
            )
        if inf_token is None:
            inf_token, mgmt_token = _read_tokens(workdir)
        try:
            described = _describe(mgmt_url, spec.name, mgmt_token)
        except (requests.RequestException, ValueError):
            described = None
        states = [w.get("status", "?") for w in (described or {}).get("workers", [])]
        if len([s for s in states if s == "READY"]) >= spec.serving.workers:
            return inf_token, mgmt_token, described
        time.sleep(POLL_INTERVAL_S)
    raise ServerError(
        f"model {spec.name} was not ready within serving.startup_timeout_s={spec.serving.startup_timeout_s:g} s "
        f"(worker states: {states or 'none reported'}). Raise serving.startup_timeout_s if the model is slow "
        "to load.",
        details=explain_failure(log_dir),
    )


def _check_described(spec: Spec, described: dict) -> None:
    """The served model runs with the spec's settings (a .mar's config can be overridden)."""
    s = spec.serving
    want = {"batchSize": s.batch_size, "maxBatchDelay": s.max_batch_delay_ms, "responseTimeout": s.response_timeout_s}
    got = {k: described.get(k) for k in want}
    workers = len(described.get("workers", []))
    wrong = [f"{k}: served {got[k]}, spec {v}" for k, v in want.items() if got[k] != v]
    if workers != s.workers:
        wrong.append(f"workers: served {workers}, spec {s.workers}")
    if wrong:
        raise ServerError(f"TorchServe serves model {spec.name} with other settings than the spec asks for. "
                          "Rebuild the archive (a prebuilt .mar carries its own model-config.yaml).", details=wrong)


@contextmanager
def serve_model(spec: Spec, cfg: ServeConfig) -> Iterator[ServerHandle]:
    """Start TorchServe with the run's .mar, wait for READY workers, stop it on exit.

    Args:
        spec: the validated spec (model name, serving settings).
        cfg: the run folder, the .mar to serve, the start-up deadline, envelope, optional fixed ports.

    Yields:
        A handle with the URLs and tokens of the ready server.

    Raises:
        ServerError: no Java 17+, a port in use, TorchServe exits, a worker dies while
            loading (its traceback quoted), the deadline passes, or the served settings differ.
    """
    java = find_java()
    workdir = cfg.run_dir / "torchserve"
    log_dir = workdir / "logs"
    store = cfg.mar_path.parent
    config_path = workdir / "config.properties"
    cmd = [
        sys.executable, "-c", "import sys; from ts.model_server import start; sys.argv[0] = 'torchserve'; start()",
        "--start", "--foreground", "--ncs",
        "--model-store", str(store),
        "--ts-config", str(config_path),
    ]
    logcap = LogCap(log_dir)  # raises ConfigError for a bad $PACKAGE_VALIDATE_LOG_CAP, before anything starts
    # Java and the worker meet on a unix socket under TMPDIR; sun_path allows ~107 bytes.
    tmp = Path(tempfile.mkdtemp(prefix="pv-ts-"))
    proc = None
    try:
        logcap.start()
        attempts = 1 if cfg.ports else PORT_ATTEMPTS  # ports the spec fixes are never changed behind its back
        for attempt in range(1, attempts + 1):
            ports = cfg.ports or pick_ports()
            check_ports(ports)
            log_dir.mkdir(parents=True, exist_ok=True)
            props = config_properties(spec, ports, store, cfg.mar_path.name, cfg.envelope)
            overrides: tuple[Override, ...] = ()
            if cfg.user_config is not None:
                props, overrides = merge_user_config(cfg.user_config, props, spec.name, cfg.envelope)
            write_config(config_path, {**props, **(cfg.properties or {})})
            env = server_env(spec, java, tmp, log_dir, cfg.run_dir).env
            started = time.monotonic()
            with signals_deferred():  # a server that started is always in ``proc``, to be stopped
                proc = start_server(cmd, workdir, env, log_dir / "torchserve.out")
            log.info("TorchServe under guardian %d (process group %d), logs in %s", proc.pid, proc.pid, log_dir)
            mgmt = f"http://127.0.0.1:{ports.management}"
            try:
                inf_token, mgmt_token, described = _wait_ready(spec, proc, mgmt, workdir, log_dir,
                                                               started + cfg.startup_timeout_s)
                break
            except PortTakenError:
                stop_server(proc)
                proc = None
                if attempt == attempts:
                    raise PortTakenError(
                        "TorchServe could not bind a port: another program holds it" + (
                            " (serving.ports fixes them; leave it unset to pick free ones)." if cfg.ports else
                            f" (free ports picked {attempts} time(s), each taken before Java bound it)."),
                        details=explain_failure(log_dir)) from None
                # Another program bound one of the picked ports first; keep this attempt's logs, pick again.
                log.warning("TorchServe could not bind a picked port (attempt %d of %d); picking others",
                            attempt, attempts)
                log_dir.rename(workdir / f"logs-attempt{attempt}")
                (workdir / "key_file.json").unlink(missing_ok=True)
        if inf_token is None:
            raise ServerError(
                f"TorchServe is ready but wrote no inference token in {workdir / 'key_file.json'}; "
                "token authorization must stay on."
            )
        _check_described(spec, described)
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
            described=described,
            config={k: str(v) for k, v in props.items()},
            overrides=overrides,
        )
    finally:
        with signals_deferred():  # a second Ctrl-C is raised after the stop and the clean-up, not amid them
            if proc is not None:
                stop_server(proc)
            logcap.close()  # after the writers stopped: each log over the cap becomes head, cut line, tail
            shutil.rmtree(tmp, ignore_errors=True)


def remote_handle(endpoint: str, model_name: str, token: str | None) -> ServerHandle:
    """A handle for a TorchServe this pipeline did not start (``--endpoint``); it is never stopped."""
    endpoint = endpoint.rstrip("/")
    return ServerHandle(
        model_name=model_name, inference_url=endpoint, management_url="", metrics_url="",
        inference_token=token, management_token=None, pid=None, log_dir=None, java=None, startup_s=0.0,
    )
