"""The report's schema name, and turning results into JSON-ready values.

``report.json`` follows ``package-validate/report/v3``; its top-level keys are
``REPORT_KEYS`` (a snapshot test holds them), and every reader (the HTML and JUnit
renderers, the history, the prior-run baseline, the CLI) reads only these keys.
"""

from __future__ import annotations

import math
import platform
import sys
from dataclasses import asdict, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.names import StageName

# v3: model.task (tasks/): the metrics, paired tests and flipped rows of a task other than classification
# have that task's fields. A v2 report (before the task seam) is a classification report and still reads.
SCHEMA = "package-validate/report/v3"
READABLE_SCHEMAS = ("package-validate/report/v2", SCHEMA)
VERDICT = {"passed": "PASS", "failed": "FAIL", "error": "ERROR", "interrupted": "INTERRUPTED"}
REPORT_KEYS = (
    "schema", "status", "verdict", "complete", "exit_code", "started_at", "run_dir", "model", "version",
    "spec_path", "spec", "error", "plan", "dataset", "stage_seconds", "stages", "sizes_bytes", "environment",
    "metrics", "paired_tests", "steps", "flipped_rows", "flipped_total", "diverging_rows", "served_latency_split",
    "attribution", "gate", "published", "release", "server_failures", "probes",
)


def jsonable(x: Any) -> Any:
    """Plain JSON values: dataclasses as dicts, paths as strings, NaN and infinity as null."""
    if isinstance(x, StageName):
        return str(x)
    if is_dataclass(x) and not isinstance(x, type):
        return jsonable(asdict(x))
    if isinstance(x, Enum):
        return x.value
    if isinstance(x, dict):
        return {str(k.value if isinstance(k, Enum) else k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return None if math.isnan(x) or math.isinf(x) else x
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def environment() -> dict[str, str]:
    """Versions that can change results: Python, torch, TorchServe, the archiver, Java, the CPU."""
    import torch

    env = {"python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
           "cpu": platform.processor() or platform.machine(), "torch_threads": str(torch.get_num_threads())}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    env["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    for pkg in ("torchserve", "torch-model-archiver", "torchvision", "captum", "pillow", "scikit-learn", "numpy"):
        try:
            env[pkg] = version(pkg)
        except PackageNotFoundError:
            env[pkg] = "not installed"
    from pipeline.compat import torchvision_state

    env["torchvision ops"] = torchvision_state()
    return env
