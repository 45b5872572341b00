"""The handled stage blames the right layer: handler defects found in-process, without starting TorchServe.

Each test builds the tiny image project (tests/imaging.py) with a handler carrying one
defect and runs the CLI with ``--until handled``: dataset, baseline, export, archive and the
handler in-process through TorchServe's own handler API; no server.
"""

import time

import pytest

from tests.imaging import image_handler, make_image_project, report_of
from tests.integration.conftest import run_cli

pytestmark = pytest.mark.integration


def _run(tmp, defect, **overrides):
    handler = image_handler(tmp / f"handler_{defect or 'ok'}.py", defect, **{
        k: v for k, v in overrides.items() if k in ("init_extra", "handle_extra")})
    spec = make_image_project(tmp / "proj", handler=handler, spec_overrides=overrides.get("spec"))
    t0 = time.monotonic()
    res = run_cli("run", str(spec), "--until", "handled", "--reports-dir", str(tmp / "reports"), timeout=180)
    return res, report_of(tmp / "reports"), time.monotonic() - t0


def test_correct_handler_passes_in_process(no_leftovers):
    res, rep, _ = _run(no_leftovers, None)
    assert res.returncode == 0, res.stdout + res.stderr
    assert rep["plan"]["stages"] == ["baseline", "exported", "handled"] and "server" not in rep["stages"]
    assert rep["plan"]["answers"]["format"] == "topk" and rep["attribution"]["layer"] is None
    assert rep["stages"]["handled"]["batch1"]["answered"] == 24


@pytest.mark.parametrize("defect, failing", [
    ("swap_channels", {"prediction agreement", "max abs output difference"}),
    ("no_normalisation", {"max abs output difference"}),
    ("labels_shifted", {"prediction agreement", "accuracy drop"}),
])
def test_handler_defect_is_a_handler_problem_with_the_rows_named(no_leftovers, defect, failing):
    res, rep, _ = _run(no_leftovers, defect)
    assert res.returncode == 1, res.stdout + res.stderr
    assert rep["attribution"]["layer"] == "handler problem", rep["attribution"]
    failed = {c["name"] for c in rep["gate"]["checks"] if c["stage"] == "handled" and not c["passed"]}
    assert failing <= failed, failed
    assert not [c for c in rep["gate"]["checks"] if c["stage"] == "exported" and c["is_gating"] and not c["passed"]]
    named = [r["id"] for r in rep["diverging_rows"] if r["stage"] == "handled"] + [
        r["id"] for r in rep["flipped_rows"] if r["predictions"]["handled"][0] != r["predictions"]["baseline"][0]]
    assert named, "the diverging or flipped rows are listed"
    agreement = next(c for c in rep["gate"]["checks"] if c["stage"] == "handled" and c["name"] == "prediction agreement")
    if not agreement["passed"]:
        assert named[-1] in agreement["detail"] or "..." in agreement["detail"]


def test_handler_returning_fewer_classes_than_promised_is_caught(no_leftovers):
    res, rep, _ = _run(no_leftovers, "top1_only")
    assert res.returncode == 1, res.stdout + res.stderr
    batch1 = rep["stages"]["handled"]["batch1"]
    assert batch1["errors"] == {"bad_response": 24}
    assert "carries 1 class(es) but answers.top_k: all requires 3" in batch1["examples"]["bad_response"]["message"]
    rate = next(c for c in rep["gate"]["checks"] if c["name"] == "handled error rate")
    assert not rate["passed"] and "bad_response: 24" in rate["detail"]


def test_handler_that_mixes_rows_only_in_batches_is_a_batch_dependent_problem(no_leftovers):
    res, rep, _ = _run(no_leftovers, "mixes_rows_in_batches",
                       spec={"serving": {"batch_size": 4, "max_batch_delay_ms": 50, "startup_timeout_s": 90}})
    assert res.returncode == 1, res.stdout + res.stderr
    assert rep["plan"]["stages"] == ["baseline", "exported", "handled", "handled@batch4"]
    assert rep["attribution"]["layer"] == "handler problem that depends on the batch", rep["attribution"]
    assert rep["steps"]["handled"]["disagreeing"] == 0 and rep["steps"]["handled@batch4"]["disagreeing"] > 0


@pytest.mark.parametrize("where", ["init", "handle"])
def test_handler_that_hangs_ends_at_its_deadline_with_the_handler_named(no_leftovers, where):
    hang = "import time; time.sleep(600)"
    # The load deadline covers the child's start (torch's import) too: only the hanging case gets a short one.
    startup = 4 if where == "init" else 60
    res, rep, elapsed = _run(no_leftovers, None, spec={"serving": {"startup_timeout_s": startup, "response_timeout_s": 3}},
                             **({"init_extra": hang} if where == "init" else {"handle_extra": hang}))
    assert res.returncode == 3, res.stdout + res.stderr
    assert rep["error"]["type"] == "HandledError"
    field = "serving.startup_timeout_s=4" if where == "init" else "serving.response_timeout_s=3"
    assert "handler_ok.py" in rep["error"]["message"] and field in rep["error"]["message"]
    assert elapsed < 150  # the deadline, not the handler's 600 s sleep, even on a busy machine
