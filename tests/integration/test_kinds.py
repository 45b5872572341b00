"""Raw inputs and real handlers through a real TorchServe: text rows, images, KServe envelopes."""

import pytest

from tests.helpers import make_project
from tests.imaging import image_handler, make_image_project, report_of
from tests.integration.conftest import run_cli
from tests.texts import make_text_project

pytestmark = pytest.mark.integration


def _run(tmp, spec, *extra):
    res = run_cli("run", str(spec), "--reports-dir", str(tmp / "reports"), "--model-store", str(tmp / "store"), *extra)
    return res, report_of(tmp / "reports")


def test_text_rows_end_to_end(no_leftovers):
    tmp = no_leftovers
    res, rep = _run(tmp, make_text_project(tmp / "proj"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert rep["dataset"]["kind"] == "text" and rep["dataset"]["content_type"].startswith("text/plain")
    assert rep["plan"]["reference"]["name"].endswith("features.py:preprocess")
    assert rep["metrics"]["served"]["accuracy"] == 1.0 and rep["stages"]["replay"]["answered"] == 40
    probes = {p["probe"]: p for p in rep["probes"]["served"]}
    assert {"empty text", "non-ASCII text", "very long text (100,000 characters)"} <= set(probes)
    assert all(p["passed"] for p in probes.values()), probes


def test_handler_that_reads_its_environment_is_a_serving_problem(no_leftovers):
    tmp = no_leftovers
    handler = image_handler(tmp / "env_handler.py", "flips_when_env")
    spec = make_image_project(tmp / "proj", handler=handler, spec_overrides={
        "serving": {"startup_timeout_s": 90, "env": {"PV_TEST_FLIP": "1"}}})
    res, rep = _run(tmp, spec)
    assert res.returncode == 1, res.stdout + res.stderr
    assert rep["attribution"]["layer"] == "serving problem", rep["attribution"]
    assert rep["steps"]["handled"]["disagreeing"] == 0 and rep["steps"]["served"]["disagreeing"] > 0
    assert "serving problem" in res.stdout


@pytest.mark.parametrize("envelope", ["kserve_v1", "kserve_v2"])
def test_kserve_envelopes_travel_and_answer(no_leftovers, envelope):
    tmp = no_leftovers
    spec = make_project(tmp / "proj", rows=30, spec_overrides={"answers": {"envelope": envelope}})
    res, rep = _run(tmp, spec)
    assert res.returncode == 0, res.stdout + res.stderr
    assert rep["plan"]["answers"]["envelope"] == envelope
    assert rep["stages"]["replay"]["answered"] == 30 and rep["metrics"]["served"]["accuracy"] == 1.0
    path = {"kserve_v1": "/v1/models/tiny:predict", "kserve_v2": "/v2/models/tiny/infer"}[envelope]
    access = (tmp / "reports").glob("*/torchserve/logs/access_log.log")
    assert path in next(access).read_text()
