"""End to end through the real CLI: real TorchServe on loopback, real HTTP, real files."""

import json
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import make_project, write_handler
from tests.integration.conftest import ROOT, run_cli

pytestmark = pytest.mark.integration


def _report(reports: Path) -> dict:
    runs = sorted(reports.glob("*/report.json"))
    assert len(runs) == 1, runs
    return json.loads(runs[0].read_text())


def test_tiny_model_passes_and_reports_every_row(no_leftovers):
    tmp = no_leftovers
    spec = make_project(tmp / "proj")
    res = run_cli("run", str(spec), "--reports-dir", str(tmp / "reports"), "--model-store", str(tmp / "store"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "VERDICT: PASS" in res.stdout
    rep = _report(tmp / "reports")
    assert rep["status"] == "passed" and rep["complete"] is True
    assert rep["stages"]["replay"]["answered"] == 60 and rep["stages"]["replay"]["failed"] == 0
    assert rep["stages"]["server"]["token_auth"] is True
    assert rep["metrics"]["served"]["confusion"] == rep["metrics"]["baseline"]["confusion"]
    assert rep["served_latency_split"]["server_prediction_time"]["count"] == 60
    # Where the time goes: every row joined by request id (a BaseHandler logs HandlerTime), the frontend's
    # figures read for exactly the 60 timed requests (the warm-up's left out), the parts adding up.
    b = rep["served_latency_split"]["breakdown"]
    assert b["rows"] == {"joined": 60, "prediction_only": 0, "no_server_time": 0, "no_request_id": 0, "failed": 0}
    assert b["frontend_logged"] == 60 and b["frontend"]["queue_ms"]["count"] == 60
    assert b["components"]["handler_ms"]["count"] == 60
    assert b["components"]["handler_ms"]["p50"] <= b["components"]["prediction_ms"]["p50"]
    assert b["negative"]["client_overhead_ms"] == 0
    split_rows = pd.read_parquet(Path(rep["run_dir"]) / "rows.parquet")
    assert split_rows["served_handler_ms"].notna().all()
    assert "## Where the time goes" in (Path(rep["run_dir"]) / "report.md").read_text()
    assert "<h2>Where the time goes</h2><img" in (Path(rep["run_dir"]) / "report.html").read_text()
    assert all(c["passed"] for c in rep["gate"]["checks"] if c["is_gating"])
    assert (tmp / "store" / "tiny.mar").is_file()
    assert set(rep["stage_seconds"]) >= {"baseline", "export", "archive", "serve", "replay", "compare"}


def test_existing_mar_needs_force(no_leftovers):
    tmp = no_leftovers
    spec = make_project(tmp / "proj")
    (tmp / "store").mkdir()
    (tmp / "store" / "tiny.mar").write_bytes(b"old")
    res = run_cli("run", str(spec), "--reports-dir", str(tmp / "reports"), "--model-store", str(tmp / "store"))
    assert res.returncode == 2
    assert "--force" in res.stdout + res.stderr
    assert (tmp / "store" / "tiny.mar").read_bytes() == b"old"


def test_worker_that_cannot_load_fails_fast_with_module_named(no_leftovers):
    tmp = no_leftovers
    handler = write_handler(tmp / "broken_handler.py", """
        import not_a_real_module_for_tests  # noqa: F401


        class Broken:
            def initialize(self, context):
                pass

            def handle(self, data, context):
                return data
    """)
    spec = make_project(tmp / "proj", spec_overrides={"handler": str(handler)})
    t0 = time.monotonic()
    res = run_cli("run", str(spec), "--reports-dir", str(tmp / "reports"), "--model-store", str(tmp / "store"))
    elapsed = time.monotonic() - t0
    assert res.returncode == 2, res.stdout + res.stderr
    assert "No module named 'not_a_real_module_for_tests'" in res.stdout.splitlines()[1]
    assert elapsed < 90, f"took {elapsed:.0f} s: the run should fail as soon as the handler is loaded"
    rep = _report(tmp / "reports")
    assert rep["status"] == "error" and rep["complete"] is False
    assert rep["error"]["type"] == "UserCodeError" and "server" not in rep["stages"]


FLIPPING_HANDLER = '''
import json
import torch


class Flipping:
    """Serves the right model but answers the next class for rows whose first feature > 1."""

    def initialize(self, context):
        import os
        d = context.system_properties.get("model_dir")
        self.model = torch.jit.load(os.path.join(d, context.manifest["model"]["serializedFile"]))

    def handle(self, data, context):
        out = []
        for req in data:
            body = req.get("body") or req.get("data")
            body = json.loads(body) if isinstance(body, (bytes, str)) else body
            x = torch.tensor(body["features"], dtype=torch.float32).reshape(1, -1)
            logits = self.model(x)[0]
            probs = torch.softmax(logits.double(), 0)
            k = int(logits.argmax())
            if x[0, 0] > 1.0:
                k = (k + 1) % logits.shape[0]
            out.append(json.dumps({"prediction": k, "probabilities": probs.tolist(), "logits": logits.tolist()}))
        return out
'''


def test_served_predictions_that_differ_fail_the_gate_with_rows_listed(no_leftovers):
    tmp = no_leftovers
    handler = write_handler(tmp / "flipping_handler.py", FLIPPING_HANDLER)
    spec = make_project(tmp / "proj", rows=80, spec_overrides={"handler": str(handler)})
    res = run_cli("run", str(spec), "--reports-dir", str(tmp / "reports"), "--model-store", str(tmp / "store"))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "VERDICT: FAIL" in res.stdout
    rep = _report(tmp / "reports")
    import pandas as pd

    df = pd.read_csv(tmp / "proj" / "data.csv")
    expected = sorted(df.loc[df.f0 > 1.0, "id"])
    assert expected, "the fixture must have rows with f0 > 1"
    listed = sorted(r["id"] for r in rep["flipped_rows"])
    assert listed == expected
    assert rep["paired_tests"]["served"]["reference_only_correct"] == len(expected)
    assert rep["paired_tests"]["served"]["mcnemar_p"] < 0.05
    assert rep["paired_tests"]["exported"]["agreement"] == 1.0
    assert rep["attribution"]["layer"] == "handler problem", rep["attribution"]
    assert rep["steps"]["handled"]["disagreeing"] == len(expected) and rep["steps"]["served"]["disagreeing"] == 0
    failed = {c["name"] for c in rep["gate"]["checks"] if not c["passed"]}
    assert {"prediction agreement", "confusion matrix identical"} <= failed
    md = (Path(rep["run_dir"]) / "report.md").read_text()
    assert expected[0] in md and "McNemar" in md


def _quick_copy(example: str, tmp: Path) -> Path:
    """The example's spec with absolute paths and a shorter warm-up and timing loop (the suite's time budget);
    every other field, the data and the model are the example's own."""
    import yaml

    ex = ROOT / "examples" / example
    spec = yaml.safe_load((ex / "spec.yaml").read_text())
    spec["model"].update(factory=f"{ex / spec['model']['factory'].split(':')[0]}:{spec['model']['factory'].split(':')[1]}",
                         weights=str(ex / spec["model"]["weights"]))
    spec["dataset"].update(path=str(ex / spec["dataset"]["path"]), train_path=str(ex / spec["dataset"]["train_path"]))
    spec["replay"]["warmup_requests"] = 100
    spec.setdefault("export", {})["latency_repeats"] = 40
    path = tmp / f"{example}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.mark.parametrize("example", ["digits", "breast_cancer"])
def test_examples_pass(example, no_leftovers):
    tmp = no_leftovers
    spec = _quick_copy(example, tmp)
    res = run_cli("run", str(spec), "--reports-dir", str(tmp / "reports"), "--model-store", str(tmp / "store"))
    assert res.returncode == 0, res.stdout + res.stderr
    rep = _report(tmp / "reports")
    assert rep["stages"]["replay"]["failed"] == 0
    assert rep["dataset"]["leaked_ids"] == []
    assert rep["plan"]["stages"] == ["baseline", "exported", "handled", "served"]
    names = {(c["stage"], c["name"]) for c in rep["gate"]["checks"]}
    for stage in ("exported", "handled", "served"):
        assert {(stage, "prediction agreement"), (stage, "confusion matrix identical"),
                (stage, "max abs output difference"), (stage, "accuracy drop")} <= names
    assert ("served", "warm-up answers equal steady-state answers") in names
    assert ("served", "probe inputs") in names and ("handled", "probe inputs") in names
    if example == "breast_cancer":
        assert ("served", "recall of positive class 'malignant'") in names


def test_trace_of_data_dependent_model_fails_gate_at_export_stage(no_leftovers):
    tmp = no_leftovers
    spec = make_project(tmp / "proj", factory="build_branchy")
    res = run_cli("run", str(spec), "--export-mode", "trace", "--reports-dir", str(tmp / "reports"),
                  "--model-store", str(tmp / "store"))
    assert res.returncode == 1, res.stdout + res.stderr
    rep = _report(tmp / "reports")
    check = next(c for c in rep["gate"]["checks"] if c["name"] == "max abs output difference" and c["stage"] == "exported")
    assert not check["passed"]
    diverging = rep["stages"]["export"]["consistency"]["diverging_ids"]
    named = check["detail"].split("tolerance: ")[1].split(", ")
    assert diverging and set(named) <= set(diverging) and len(named) == min(10, len(diverging))
    assert rep["attribution"]["layer"] == "export problem"
    listed = [r for r in rep["diverging_rows"] if r["stage"] == "exported"]
    assert listed and listed[0]["reference_values"] != listed[0]["candidate_values"]
    assert "FAIL exported: max abs output difference" in res.stdout


def test_runs_appear_in_history_and_last_pass_is_a_second_baseline(no_leftovers):
    tmp = no_leftovers
    spec = make_project(tmp / "proj")
    common = ["--reports-dir", str(tmp / "reports"), "--model-store", str(tmp / "store"), "--force"]
    for extra in ([], ["--against-last-pass"]):
        res = run_cli("run", str(spec), *common, *extra)
        assert res.returncode == 0, res.stdout + res.stderr
    second = max((tmp / "reports").glob("*/report.json"), key=lambda p: p.stat().st_mtime)
    checks = json.loads(second.read_text())["gate"]["checks"]
    assert any(c["name"].startswith("accuracy drop vs run of") for c in checks)
    hist = run_cli("history", "--reports-dir", str(tmp / "reports"))
    assert hist.returncode == 0
    lines = [ln for ln in hist.stdout.splitlines() if " tiny " in ln and "passed" in ln]
    assert len(lines) == 2, hist.stdout
    assert "served.accuracy" in hist.stdout
