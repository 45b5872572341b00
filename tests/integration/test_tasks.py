"""Regression and multi-label end to end: the diabetes example served by a real TorchServe, and the
traps of each task in-process (``--until handled``), each blamed on the handler.

The multi-label project is written here: a 4-feature linear model with 3 labels (its own thresholded
sigmoids as labels, a few flipped), JSON records, and a handler answering ``{label: score}``.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from tests.integration.conftest import ROOT, run_cli

pytestmark = pytest.mark.integration

EXAMPLE = ROOT / "examples" / "diabetes_records"
ROWS = 16
LABELS = ("cat", "dog", "bird")

ML_MODEL = '''
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Linear(4, 3)
'''

ML_HANDLER = '''
import json
import os

import torch

LABELS = ("cat", "dog", "bird")


class MultiLabelHandler:
    def initialize(self, context):
        d = context.system_properties["model_dir"]
        self.model = torch.jit.load(os.path.join(d, context.manifest["model"]["serializedFile"]))
        self.initialized = True

    def handle(self, data, context):
        rows = []
        for r in data:
            body = r.get("data") if r.get("data") is not None else r.get("body")
            body = json.loads(body) if isinstance(body, (bytes, bytearray, str)) else body
            rows.append(torch.tensor([float(body[f"f{i}"]) for i in range(4)]))
        with torch.inference_mode():
            logits = self.model(torch.stack(rows))
        return [self.answer(row) for row in logits]

    def answer(self, row):
        DEFECT
'''
DEFECTS = {
    None: 'return {name: p for name, p in zip(LABELS, torch.sigmoid(row).tolist())}',
    "softmax": 'return {name: p for name, p in zip(LABELS, torch.softmax(row, 0).tolist())}',
    "labels_shifted": 'return [LABELS[(k + 1) % 3] for k, p in enumerate(torch.sigmoid(row).tolist()) if p >= 0.5]',
}


def _report(reports: Path) -> dict:
    (path,) = sorted(reports.glob("*/report.json"))
    return json.loads(path.read_text())


def _multilabel_project(root: Path, defect: str | None) -> Path:
    root.mkdir(parents=True)
    (root / "model.py").write_text(ML_MODEL)
    ns: dict = {}
    exec(ML_MODEL, ns)
    model = ns["build"]().eval()
    torch.save(model.state_dict(), root / "weights.pt")
    x = np.random.default_rng(0).normal(size=(ROWS, 4)).astype(np.float32)
    with torch.no_grad():
        present = torch.sigmoid(model(torch.from_numpy(x))).numpy() >= 0.5
    present[::5, 0] = ~present[::5, 0]  # a few wrong labels: the metrics are not all 1
    df = pd.DataFrame(x.astype(np.float64), columns=[f"f{i}" for i in range(4)])
    df.insert(0, "labels", [";".join(n for n, p in zip(LABELS, row) if p) for row in present])
    df.insert(0, "id", [f"r{i:02d}" for i in range(ROWS)])
    df.to_csv(root / "data.csv", index=False)
    (root / "handler.py").write_text(ML_HANDLER.replace("DEFECT", DEFECTS[defect]))
    spec = {"name": "tags", "model": {"task": "multilabel", "factory": "model.py:build", "weights": "weights.pt",
                                      "num_classes": 3, "class_names": list(LABELS)},
            "dataset": {"kind": "json", "path": "data.csv", "label_column": "labels",
                        "feature_columns": [f"f{i}" for i in range(4)]},
            "export": {"mode": "script", "latency_repeats": 20},
            "handler": {"name": "handler.py", "probes": False},  # refusing a bad record: tested elsewhere
            "serving": {"startup_timeout_s": 90}}
    (root / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return root / "spec.yaml"


def _failing(rep: dict, stage: str) -> set[str]:
    return {c["name"] for c in rep["gate"]["checks"] if c["stage"] == stage and c["is_gating"] and not c["passed"]}


@pytest.mark.parametrize("defect, failing", [
    (None, set()),
    ("softmax", {"prediction agreement", "max abs output difference"}),
    ("labels_shifted", {"prediction agreement"}),
])
def test_multilabel_handler_in_process(no_leftovers, defect, failing):
    tmp = no_leftovers
    spec = _multilabel_project(tmp / "proj", defect)
    res = run_cli("run", str(spec), "--until", "handled", "--reports-dir", str(tmp / "reports"), timeout=180)
    rep = _report(tmp / "reports")
    assert res.returncode == (1 if defect else 0), res.stdout + res.stderr
    assert rep["schema"] == "package-validate/report/v3" and rep["plan"]["answers"]["format"] == "multilabel"
    assert set(rep["metrics"]["handled"]) >= {"f1_micro", "f1_macro", "hamming_loss", "subset_accuracy"}
    assert not _failing(rep, "exported")
    if defect is None:
        assert rep["attribution"]["layer"] is None
        assert rep["metrics"]["handled"]["f1_micro"] == rep["metrics"]["baseline"]["f1_micro"] < 1
        return
    assert failing <= _failing(rep, "handled"), _failing(rep, "handled")
    assert rep["attribution"]["layer"] == "handler problem", rep["attribution"]
    if defect == "softmax":
        out = next(c for c in rep["gate"]["checks"] if c["stage"] == "handled" and c["name"] == "max abs output "
                   "difference")
        assert "a softmax over the labels" in out["detail"]


def test_regression_denormalised_with_the_wrong_scale_is_a_handler_problem(no_leftovers):
    tmp = no_leftovers
    assert (EXAMPLE / "weights.pt").exists(), "run make examples"
    proj = tmp / "proj"
    shutil.copytree(EXAMPLE, proj, ignore=shutil.ignore_patterns("__pycache__", ".trained"))
    handler = (proj / "handler.py").read_text()
    # the team's handler re-scales the answer from the training std (77) to a wrong one (80, the test rows')
    wrong = handler.replace("answers[i] = {\"value\": v}",
                            "answers[i] = {\"value\": (v - 152.0) / 77.0 * 80.0 + 152.0}")
    assert wrong != handler
    (proj / "handler.py").write_text(wrong)
    spec = yaml.safe_load((proj / "spec.yaml").read_text())
    spec["serving"]["batch_size"] = 1
    spec["export"] = {**spec.get("export", {}), "latency_repeats": 20}
    (proj / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    res = run_cli("run", str(proj / "spec.yaml"), "--until", "handled", "--reports-dir", str(tmp / "reports"),
                  timeout=180)
    assert res.returncode == 1, res.stdout + res.stderr
    rep = _report(tmp / "reports")
    assert {"prediction agreement", "max abs value difference", "mae relative rise"} <= _failing(rep, "handled")
    assert not _failing(rep, "exported")
    assert rep["attribution"]["layer"] == "handler problem", rep["attribution"]
    assert rep["diverging_rows"] and rep["diverging_rows"][0]["quantity"] == "values"


def test_diabetes_records_regression_served_end_to_end(no_leftovers):
    tmp = no_leftovers
    for f in ("weights.pt", "features.json", "train.csv", "test.csv"):
        assert (EXAMPLE / f).exists(), f"examples/diabetes_records lacks {f}: run make examples"
    res = run_cli("run", str(EXAMPLE / "spec.yaml"), "--reports-dir", str(tmp / "reports"),
                  "--model-store", str(tmp / "store"), timeout=240)
    rep = _report(tmp / "reports")
    assert res.returncode == 0, (res.stdout + res.stderr, [(c["stage"], c["name"], c["detail"]) for c in
                                                         (rep.get("gate") or {}).get("checks", []) if not c["passed"]])
    assert "VERDICT: PASS" in res.stdout and "mae" in res.stdout
    assert rep["plan"]["stages"] == ["baseline", "exported", "handled", "handled@batch4", "served"]
    assert rep["plan"]["answers"]["format"] == "regression"
    base = rep["metrics"]["baseline"]
    for stage in ("exported", "handled", "handled@batch4", "served"):
        m = rep["metrics"][stage]
        assert m["answered"] == m["rows"] == base["rows"] == 24, stage
        assert abs(m["mae"] - base["mae"]) < 1e-3 and abs(m["r2"] - base["r2"]) < 1e-4, stage
        assert rep["paired_tests"][stage]["agreement"] == 1.0, stage
    run_dir = Path(rep["run_dir"])
    rows = pd.read_parquet(run_dir / "rows.parquet")
    assert {"label_progression", "baseline_value_progression", "served_value_progression", "served_status"} <= set(
        rows.columns)
    assert (rows["served_value_progression"] - rows["baseline_value_progression"]).abs().max() < 1e-2
    html = (run_dir / "report.html").read_text()
    assert "<svg" in html and "residual (prediction - truth)" in html
    assert "<h2>Latency distributions</h2>" in html, "the per-row latencies reach the plots"
