"""Test helpers: a tiny model project on disk, and a check for processes a run left behind."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import torch
import yaml

from pipeline.torchserve.process import RUN_MARKER_ENV
from tests.unit._support import spec_for as tiny_spec  # noqa: F401  (one definition; _support stays torch-free)

TINY_MODEL = '''
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class Branchy(nn.Module):
    """Data-dependent control flow: tracing bakes in one branch."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.b = nn.Linear(4, 3)

    def forward(self, x):
        if bool(x.sum() > 0):
            return self.a(x)
        return self.b(x) * 3.0


def build():
    torch.manual_seed(0)
    return Tiny()


def build_branchy():
    torch.manual_seed(0)
    return Branchy()
'''


def make_project(root: Path, *, rows: int = 60, factory: str = "build", spec_overrides: dict | None = None,
                 seed: int = 0) -> Path:
    """Write a tiny model, its weights, a labeled CSV and a spec under ``root``; return the spec path.

    Labels are the model's own predictions, so a faithful export and server score 100%.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "tiny_model.py").write_text(TINY_MODEL)
    ns: dict = {}
    exec(compile(TINY_MODEL, str(root / "tiny_model.py"), "exec"), ns)
    model = ns[factory]().eval()
    torch.save(model.state_dict(), root / "weights.pt")
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 4)).astype(np.float32)
    with torch.no_grad():
        y = model(torch.from_numpy(x)).argmax(1).numpy()
    df = pd.DataFrame(x, columns=[f"f{i}" for i in range(4)])
    df.insert(0, "label", y)
    df.insert(0, "id", [f"row-{i:03d}" for i in range(rows)])
    df.to_csv(root / "data.csv", index=False)
    spec = {
        "name": "tiny",
        "model": {"factory": f"tiny_model.py:{factory}", "weights": "weights.pt", "num_classes": 3},
        "dataset": {"path": "data.csv", "input_shape": [4]},
        "export": {"latency_repeats": 20},
        "replay": {"warmup_requests": 5},
        "serving": {"startup_timeout_s": 90},
        "gate": {"metrics": {"accuracy": {"max_drop": 0.01}}},
    }
    for key, value in (spec_overrides or {}).items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def write_handler(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body))
    return path


def leftover_processes(prefix: Path | str) -> list[str]:
    """Processes whose run marker lies under ``prefix``: TorchServe, Java or workers left behind."""
    prefix = str(prefix)
    found = []
    for p in psutil.process_iter(["pid", "name"]):
        try:
            if p.pid == os.getpid():
                continue
            marker = p.environ().get(RUN_MARKER_ENV)
        except (psutil.Error, OSError):
            continue
        if marker and marker.startswith(prefix) and p.status() != psutil.STATUS_ZOMBIE:
            found.append(f"{p.pid} {p.info['name']}")
    return found


def in_process(spec_path: Path):
    """Spec, plan, rows, eager model and baseline of a project: the in-process stages, without a server."""
    from types import SimpleNamespace

    from pipeline.model.loading import load_model
    from pipeline.run.plan import plan_run
    from pipeline.spec import load_spec
    from pipeline.stages.baseline import score_baseline
    from pipeline.stages.dataset import load_dataset

    spec = load_spec(spec_path)
    plan = plan_run(spec)
    rows = load_dataset(spec).rows
    model = load_model(spec)
    base = score_baseline(spec, model, rows, plan.reference)
    return SimpleNamespace(spec=spec, plan=plan, rows=rows, model=model, base=base)




def codec_for_tests(num_classes: int = 2, fmt: str = "package_validate", **sections):
    """An answer codec of a format, as the plan would build it."""
    from pipeline.answers.classes import class_map_for
    from pipeline.answers.registry import codec_for

    spec = tiny_spec(num_classes, **sections)
    return codec_for(spec, class_map_for(spec), fmt, "the test", 5 if fmt == "topk" else None)


def tensor_rows(n: int, width: int = 2, labels=None):
    """n zero rows of the tensor kind, ids r0..r{n-1}."""
    from pipeline.inputs import tensor
    from pipeline.inputs.base import MemoryBodies, Rows

    x = np.zeros((n, width), np.float32)
    return Rows(kind="tensor", source=Path("mem"), ids=tuple(f"r{i}" for i in range(n)),
                labels=np.asarray(labels if labels is not None else np.zeros(n), np.int64),
                content_type=tensor.CONTENT_TYPE, bodies=MemoryBodies(tuple(tensor.body_of(r) for r in x)),
                features=x)
