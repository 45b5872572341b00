"""Detection and segmentation end to end: the shapes examples through TorchServe's built-in
``object_detector`` and ``image_segmenter`` (no handler code), real server, real HTTP.

Tiny subsets (12 detection images, 6 segmentation images: each segmentation answer is ~1.4 MB
of JSON) keep each run under a minute or so. Both need ``make examples`` first.
"""

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.integration.conftest import ROOT, run_cli

pytestmark = pytest.mark.integration

EXAMPLES = ROOT / "examples"


def _report(reports: Path) -> dict:
    runs = sorted(reports.glob("*/report.json"))
    assert len(runs) == 1, runs
    return json.loads(runs[0].read_text())


def small_spec(tmp: Path, example: str, rows: int, **overrides) -> Path:
    """The example's spec on its first `rows` test rows, paths absolute, warm-up and timing cut short."""
    ex = EXAMPLES / example
    assert (ex / "weights.pt").exists() and (ex / "test.csv").exists(), f"examples/{example}: run make examples"
    df = pd.read_csv(ex / "test.csv").head(rows)
    for col in ("path", "mask"):
        if col in df:
            df[col] = [str(ex / p) for p in df[col]]
    df.to_csv(tmp / "test.csv", index=False)
    spec = yaml.safe_load((ex / "spec.yaml").read_text())
    spec["model"].update(factory=f"{ex / 'model.py'}:build_model", weights=str(ex / "weights.pt"))
    spec["dataset"].update(path=str(tmp / "test.csv"), train_path=None)
    if "annotations" in spec["dataset"]:
        spec["dataset"]["annotations"] = str(ex / spec["dataset"]["annotations"])
    spec["handler"]["extra_files"] = [str(ex / f) for f in spec["handler"].get("extra_files", [])]
    spec["replay"]["warmup_requests"] = 2
    spec["export"].update(latency_repeats=10, probe=False)
    for key, value in overrides.items():
        section, field = key.split("__")
        spec[section][field] = value
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _checks(rep: dict, stage: str) -> dict:
    return {c["name"]: c for c in rep["gate"]["checks"] if c["stage"] == stage}


def test_detection_through_builtin_object_detector(no_leftovers):
    tmp = no_leftovers
    spec = small_spec(tmp, "shapes_detect", 12)
    res = run_cli("run", str(spec), "--reports-dir", str(tmp / "reports"), "--model-store", str(tmp / "store"),
                  timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "VERDICT: PASS" in res.stdout and "map_50" in res.stdout
    rep = _report(tmp / "reports")
    plan = rep["plan"]
    assert plan["handler"]["name"] == "object_detector" and plan["handler"]["origin"] == "builtin"
    assert plan["reference"]["name"] == "builtin:object_detector"
    assert plan["answers"]["format"] == "detection"  # the task decodes the built-in's answers
    assert plan["stages"] == ["baseline", "exported", "handled", "served"]
    served, base = rep["metrics"]["served"]["figures"], rep["metrics"]["baseline"]["figures"]
    assert served == base and base["map_50"] > 0.8 and 0 < base["map"] < base["map_50"]
    assert rep["metrics"]["served"]["answered"] == 12
    checks = _checks(rep, "served")
    assert checks["identical answers"]["value"] == 1.0 and checks["identical answers"]["passed"]
    assert checks["max box coordinate difference"]["value"] == 0.0
    assert checks["map drop"]["passed"] and checks["per-class figures drop"]["passed"]
    assert rep["attribution"]["layer"] is None
    assert any("ToTensor only" in n for n in rep["dataset"]["notes"]), rep["dataset"]["notes"]
    per_class = rep["metrics"]["served"]["per_class_figures"]
    assert set(per_class) == {"red_box", "green_disc", "blue_box"}
    html = next((tmp / "reports").glob("*/report.html")).read_text()
    assert "Per-class figures" in html and "map_50" in html
    # the built-in ignores EXIF: the rotated probe's boxes fit only in the stored frame, a WARN that never gates
    for stage in ("handled", "served"):
        exif = next(p for p in rep["probes"][stage] if p["probe"].startswith("EXIF-rotated"))
        assert (exif["outcome"], exif["passed"]) == ("stored frame", True), exif
        assert "exif_transpose" in exif["warning"] and "phone photos" in exif["warning"]
        warn = _checks(rep, stage)["probe warnings"]
        assert not warn["passed"] and not warn["is_gating"] and warn["detail"].startswith("EXIF-rotated")
    # where the served time goes: every row's server and handler times reach rows.parquet and the stacked plot
    import pandas as pd

    frame = pd.read_parquet(next((tmp / "reports").glob("*/rows.parquet")))
    assert frame["served_server_ms"].notna().all() and frame["served_handler_ms"].notna().all()
    assert "alt='Where the time goes'" in html


def test_segmentation_through_builtin_image_segmenter(no_leftovers):
    tmp = no_leftovers
    spec = small_spec(tmp, "shapes_segment", 6)
    res = run_cli("run", str(spec), "--reports-dir", str(tmp / "reports"), "--model-store", str(tmp / "store"),
                  timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "VERDICT: PASS" in res.stdout
    rep = _report(tmp / "reports")
    assert rep["plan"]["reference"]["name"] == "builtin:image_segmenter"
    assert rep["plan"]["answers"]["format"] == "segmentation"
    served, base = rep["metrics"]["served"]["figures"], rep["metrics"]["baseline"]["figures"]
    assert served == base and base["miou"] > 0.8
    checks = _checks(rep, "served")
    assert checks["pixel class agreement"]["value"] == 1.0
    assert checks["max abs output difference"]["value"] <= 1e-5
    assert any("CenterCrop(224)" in n for n in rep["dataset"]["notes"]), rep["dataset"]["notes"]
    # the built-in ignores EXIF: the mask of the rotated probe agrees with the original's only turned back
    exif = [p for stage in ("handled", "served") for p in rep["probes"][stage] if p["probe"].startswith("EXIF-rotated")]
    assert [(p["outcome"], p["passed"]) for p in exif] == [("stored frame", True)] * 2, exif
    assert "% of the pixels" in exif[0]["warning"]


def test_detection_answers_in_kserve_v2_decode_without_user_code(no_leftovers):
    """The built-in object_detector under kservev2 sends its boxes as one BYTES output: an image with one box (or
    none) must read as one box (or none), not as a bad answer. In-process: the handled stage alone."""
    tmp = no_leftovers
    spec = small_spec(tmp, "shapes_detect", 12)
    doc = yaml.safe_load(spec.read_text())
    doc["answers"] = {"envelope": "kserve_v2"}
    doc["handler"]["probes"] = False
    spec.write_text(yaml.safe_dump(doc, sort_keys=False))
    res = run_cli("run", str(spec), "--until", "handled", "--reports-dir", str(tmp / "reports"), timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    rep = _report(tmp / "reports")
    boxes_per_row = [len(json.loads(b)) for b in pd.read_parquet(next((tmp / "reports").glob("*/rows.parquet")))[
        "handled_boxes"]]
    assert 1 in boxes_per_row, "a row with one box: the case the first output's unwrapping broke"
    assert rep["metrics"]["handled"]["answered"] == 12 and _checks(rep, "handled")["identical answers"]["passed"]
