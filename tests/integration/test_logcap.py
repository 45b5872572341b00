"""A handler that prints a lot: the run folder stays small, the verdict and the server times stay whole.

TorchServe writes each line a worker prints into model_log.log, ts_log.log and torchserve.out;
the handled stage's child writes it into handler.log. With a 1 MiB cap per file, ~256 KB
printed per request for 40 rows (~45 requests served, as many handled) would otherwise fill the
run folder with ~50 MB.
"""

import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import make_project, write_handler
from tests.integration.conftest import run_cli

pytestmark = pytest.mark.integration

NOISY_HANDLER = '''
import json
import os
import re
import sys

import torch

LINE = "noise " + "z" * 1018


class Noisy:
    """Answers correctly, and prints ~256 KB (256 lines of 1 KiB) for every request."""

    def initialize(self, context):
        d = context.system_properties.get("model_dir")
        self.model = torch.jit.load(os.path.join(d, context.manifest["model"]["serializedFile"]))
        self.served = 0

    def handle(self, data, context):
        out = []
        for req in data:
            self.served += 1
            print(f"request {self.served} begins")
            print("\\n".join([LINE] * 256))
            print(f"request {self.served} ends", flush=True)
            body = req.get("body") or req.get("data")
            body = json.loads(body) if isinstance(body, (bytes, str)) else body
            logits = self.model(torch.tensor(body["features"], dtype=torch.float32).reshape(1, -1))[0]
            out.append(json.dumps({"prediction": int(logits.argmax()),
                                   "probabilities": torch.softmax(logits.double(), 0).tolist(),
                                   "logits": logits.tolist()}))
        return out
'''


def _disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def test_a_handler_printing_256_kb_a_request_keeps_the_run_folder_small_and_the_verdict(no_leftovers):
    tmp = no_leftovers
    handler = write_handler(tmp / "noisy_handler.py", NOISY_HANDLER)
    spec = make_project(tmp / "proj", rows=40, spec_overrides={"handler": {"name": str(handler), "probes": False}})
    res = run_cli("run", str(spec), "--reports-dir", str(tmp / "reports"), "--model-store", str(tmp / "store"),
                  env={"PACKAGE_VALIDATE_LOG_CAP": "1M"}, timeout=240)
    (report,) = list((tmp / "reports").glob("*/report.json"))
    rep = json.loads(report.read_text())
    run_dir = Path(rep["run_dir"])
    assert res.returncode == 0 and rep["status"] == "passed", res.stdout + res.stderr
    assert rep["stages"]["replay"]["answered"] == 40
    rows = pd.read_parquet(run_dir / "rows.parquet")
    assert rows.served_server_ms.notna().all(), "every row's PredictionTime joined from model_metrics.log"
    # 5 capped logs of 1 MiB, the small metrics logs, the tiny model and its archive.
    assert _disk_bytes(run_dir) < 12 << 20, sorted((p.stat().st_blocks * 512, str(p)) for p in run_dir.rglob("*")
                                                   if p.is_file())[-6:]
    logs = run_dir / "torchserve" / "logs"
    cut = rep["stages"]["server"]["logs_cut"]
    assert {"model_log.log", "ts_log.log", "torchserve.out"} <= set(cut), cut
    model_log = (logs / "model_log.log").read_text()
    (line,) = [ln for ln in model_log.splitlines() if "cut here" in ln]
    m = cut["model_log.log"]
    assert f"[package-validate: {m['cut_bytes']} bytes ({m['cut_lines']} lines) cut here" in line
    assert m["cut_bytes"] > 5 << 20 and m["kept_bytes"] <= 1 << 20 and m["cap_bytes"] == 1 << 20
    head, kept_tail = model_log.split(line)
    assert "request 1 begins" in head and re.search(r"request \d+ ends", kept_tail), \
        "the head and the tail are kept"
    handled = rep["stages"]["handled"]["log_cut"]
    assert handled and handled["cut_bytes"] > 5 << 20 and os.path.getsize(run_dir / "handled" / "handler.log") <= 1 << 20
