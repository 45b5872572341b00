"""The embedded examples that exercise raw inputs and real handlers, end to end through the real CLI.

``digits_images``: PNG files posted as raw bytes to TorchServe's built-in ``image_classifier``
(no handler code), the model shipped eager (model file + state_dict). ``breast_cancer_records``:
JSON records posted to the example's own handler file, batched by the server. Both need
``make examples`` first (``make test`` and ``make integration`` do it).
"""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.integration.conftest import ROOT, run_cli

pytestmark = pytest.mark.integration

EXAMPLES = ROOT / "examples"
IMAGES_PER_CLASS = 5  # the full 540-image test set takes minutes on a 2-core machine


def _report(reports: Path) -> dict:
    runs = sorted(reports.glob("*/report.json"))
    assert len(runs) == 1, runs
    return json.loads(runs[0].read_text())


def _trained(example: str, *files: str) -> Path:
    folder = EXAMPLES / example
    missing = [f for f in files if not (folder / f).exists()]
    assert not missing, f"examples/{example} lacks {missing}: run make examples"
    return folder


def _small_images_spec(tmp: Path) -> tuple[Path, int]:
    """The digits_images spec on the first IMAGES_PER_CLASS test images of each class; paths absolute."""
    ex = _trained("digits_images", "weights.pt", "index_to_name.json", "images/test", "images/train")
    test = tmp / "images" / "test"
    rows = 0
    for folder in sorted(p for p in (ex / "images" / "test").iterdir() if p.is_dir()):
        (test / folder.name).mkdir(parents=True)
        for f in sorted(folder.glob("*.png"))[:IMAGES_PER_CLASS]:
            shutil.copyfile(f, test / folder.name / f.name)
            rows += 1
    spec = yaml.safe_load((ex / "spec.yaml").read_text())
    spec["model"].update(factory=f"{ex / 'model.py'}:build_model", weights=str(ex / "weights.pt"))
    spec["dataset"].update(path=str(test), train_path=str(ex / "images" / "train"))
    spec["handler"]["extra_files"] = [str(ex / "index_to_name.json")]
    spec["replay"]["warmup_requests"] = 20
    spec["export"]["latency_repeats"] = 20  # reported, not gated: at 3x224x224 the default 200 costs seconds
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path, rows


def _assert_every_row_answered(rep: dict, rows: int, stages: list[str]) -> None:
    for stage in stages:
        m = rep["metrics"][stage]
        assert (m["rows"], m["answered"]) == (rows, rows), (stage, m["rows"], m["answered"])
    assert rep["stages"]["replay"]["failed"] == 0 and rep["stages"]["replay"]["errors"] == {}


def test_digits_images_pass_through_builtin_image_classifier(no_leftovers):
    tmp = no_leftovers
    spec, rows = _small_images_spec(tmp)
    res = run_cli("run", str(spec), "--reports-dir", str(tmp / "reports"), "--model-store", str(tmp / "store"),
                  timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "VERDICT: PASS" in res.stdout
    rep = _report(tmp / "reports")
    plan = rep["plan"]
    assert plan["handler"]["name"] == "image_classifier" and plan["handler"]["origin"] == "builtin"
    assert plan["reference"]["name"] == "builtin:image_classifier"
    assert plan["answers"]["format"] == "topk"
    assert plan["answers"]["required_classes"] == 5  # every served answer decoded carried its top 5
    assert plan["class_map_source"] == "index_to_name.json"
    assert plan["stages"] == ["baseline", "exported", "handled", "served"]
    assert rep["stages"]["export"]["mode"] == "eager" and rep["stages"]["export"]["model_file"].endswith("model.py")
    assert rep["dataset"]["kind"] == "image" and rep["dataset"]["rows"] == rows == 10 * IMAGES_PER_CLASS
    assert rep["dataset"]["leaked_ids"] == []
    _assert_every_row_answered(rep, rows, ["handled", "served"])
    assert rep["stages"]["handled"]["batch1"]["answered"] == rows
    assert rep["metrics"]["served"]["confusion"] == rep["metrics"]["baseline"]["confusion"]
    assert rep["metrics"]["served"]["accuracy"] >= 0.9


def test_breast_cancer_records_pass_through_own_handler_batched(no_leftovers):
    tmp = no_leftovers
    _trained("breast_cancer_records", "weights.pt", "features.json", "train.csv", "test.csv")
    spec = EXAMPLES / "breast_cancer_records" / "spec.yaml"
    res = run_cli("run", str(spec), "--reports-dir", str(tmp / "reports"), "--model-store", str(tmp / "store"),
                  timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    rep = _report(tmp / "reports")
    plan = rep["plan"]
    assert plan["handler"]["origin"] == "file" and plan["handler"]["name"].endswith("breast_cancer_records/handler.py")
    assert plan["answers"]["format"] == "mapping"
    assert plan["answers"]["required_classes"] == 2  # answers.top_k: all: both classes' scores in every answer
    # serving.batch_size 4 adds the in-process stage at batch 4
    assert plan["stages"] == ["baseline", "exported", "handled", "handled@batch4", "served"]
    assert rep["dataset"]["kind"] == "json" and rep["dataset"]["leaked_ids"] == []
    rows = rep["dataset"]["rows"]
    _assert_every_row_answered(rep, rows, ["handled", "handled@batch4", "served"])
    assert rep["stages"]["server"]["served_settings"]["batchSize"] == 4
    names = {c["name"] for c in rep["gate"]["checks"]}
    assert "recall of positive class 'malignant'" in names
    # The tool's probe of a record missing a field: the handler answers 400, in-process and served.
    missing = [p for stage in ("handled", "served") for p in rep["probes"][stage] if "missing" in p["probe"]]
    assert len(missing) == 2 and all(p["status"] == 400 and p["passed"] for p in missing), missing
