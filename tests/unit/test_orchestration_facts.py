"""The runner's own figures, from a RunRecord built by hand: what the gate is given, server failures, a prior report.

No stage runs and no server starts: every record here is assembled from the stages' result
types (or stand-ins holding only the fields the runner reads), so each fact the gate reads
is pinned where the runner computes it (``_gate_inputs``, ``_answered_facts``, ``_outputs``,
``_server_failure``, ``history.prior.load_prior_report``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.errors import ReplayError, ReportError
from pipeline.history.prior import load_prior_report
from pipeline.model.forward import Scores
from pipeline.names import Stage
from pipeline.record import RunRecord
from pipeline.report.schema import SCHEMA as REPORT_SCHEMA
from pipeline.run import release, runner
from pipeline.stages.export import ProbeResult, Timing
from pipeline.stages.handled import HandledResult
from pipeline.stages.outcomes import RowOutcome, failed
from pipeline.stages.probing import ProbeOutcome
from pipeline.stages.replay import ReplayResult
from pipeline.answers.base import Prediction
from pipeline.torchserve.errors import SERVER_FAILURES
from tests.unit._support import fast_bootstrap, spec_for  # noqa: F401 (fixture)

BATCHED = "handled@batch4"


def ok(i: int, pred: int, c: int = 3, server_ms: float | None = None) -> RowOutcome:
    probs = np.full(c, 0.1)
    probs[pred] = 1.0 - 0.1 * (c - 1)
    return RowOutcome(i, f"r{i}", True, 200, Prediction(pred, probs, None), 1.0, f"q{i}", server_ms, None, None, 1)


def outcomes(preds: list[int | str]) -> tuple[RowOutcome, ...]:
    """One outcome per row: an int is an answer with that class, a str a failure of that class."""
    return tuple(ok(i, p) if isinstance(p, int) else failed(i, f"r{i}", p, f"{p} on r{i}")
                 for i, p in enumerate(preds))


def probe(name: str, stage: str, passed: bool) -> ProbeOutcome:
    return ProbeOutcome(name, "same", stage, "same" if passed else "crashed", 200 if passed else 503,
                        0 if passed else None, 0, "" if passed else "handler_error: boom", passed)


def replay_of(rows, complete: bool = True, abort: str | None = None) -> ReplayResult:
    return ReplayResult(tuple(rows), 1.0, 2, None, 0, complete, abort)


def record(**changes) -> RunRecord:
    """A run with every stage finished: 4 rows, 3 classes, served batch size 4 (so a batched handled stage)."""
    spec = spec_for(3, serving={"batch_size": 4})
    plan = SimpleNamespace(spec=spec, stages=(Stage.EXPORTED, Stage.HANDLED, BATCHED, Stage.SERVED),
                           batched_stage=BATCHED)
    logits = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]] * 5
    base = SimpleNamespace(scores=Scores(logits, np.array([1.0, 9.0, 2.0, np.nan])), weights_size_bytes=1000)
    probes = (ProbeResult("batch", 4, 8, 0.5, 0.75, False, "shape"), ProbeResult("ok", 4, 1, 0.0, 1.0, True))
    exported = SimpleNamespace(
        size_bytes=1500, scores=Scores(np.eye(3, dtype=np.float32)[[0, 1, 2, 1]] * 5, np.ones(4)),
        consistency=SimpleNamespace(failed_probes=tuple(p for p in probes if not p.is_ok)),
        timings=(Timing(8, 10.0, 1.0, 40.0, 1.0), Timing(1, 10.0, 1.0, 20.0, 1.0)))
    handled = HandledResult(
        batch1=outcomes([0, "bad_input", 2, 0]), batched=outcomes([0, "batch_mismatch", "batch_mismatch", 1]),
        batch_size=4, codec=None, handler="h.py", load_s=0.1, log_path=Path("h.log"),
        probes=(probe("exif", "handled", False), probe("gray", "handled", True)))
    served = [ok(0, 0, server_ms=0.5), ok(1, 1), failed(2, "r2", "handler_error", "Prediction failed"),
              failed(3, "r3", "not_sent", "stopped")]
    fields = dict(started_at="2026-12-01T00:00:00+00:00", spec=spec, plan=plan,
                  dataset=SimpleNamespace(leaked_ids=("r3",), rows=None), baseline=base, exported=exported,
                  handled=handled, replay=replay_of(served, False, "the server is gone"),
                  served_probes=(probe("exif", "served", True), probe("big", "served", False)),
                  prior=SimpleNamespace(metrics={"accuracy": 0.75}, started_at="2026-11-30T00:00:00+00:00"))
    fields.update(changes)
    return RunRecord(**fields)


# --- _gate_inputs: every figure the gate reads beyond the comparison ------------------------------------------------

def test_gate_inputs_list_each_stages_failed_probes_and_which_stages_probed():
    g = runner._gate_inputs(record())
    assert g.probes_run == (Stage.EXPORTED, Stage.HANDLED, Stage.SERVED)
    assert g.failed_probes == {
        Stage.EXPORTED: ("batch @ batch 8: max diff 0.5 (shape)",),
        Stage.HANDLED: ("exif: expected same, got crashed: handler_error: boom",),
        Stage.SERVED: ("big: expected same, got crashed: handler_error: boom",),
    }


def test_gate_inputs_without_probes_leave_those_stages_unprobed():
    no_probe = spec_for(3, serving={"batch_size": 4}, export={"probe": False})
    rec = record(served_probes=())
    rec = RunRecord(**{**rec.__dict__, "plan": SimpleNamespace(**{**rec.plan.__dict__, "spec": no_probe})})
    rec = RunRecord(**{**rec.__dict__, "handled": HandledResult(**{**rec.handled.__dict__, "probes": ()})})
    g = runner._gate_inputs(rec)
    assert g.probes_run == () and g.failed_probes == {}


def test_gate_inputs_error_rates_per_stage_with_the_batched_rate_from_the_batched_outcomes():
    g = runner._gate_inputs(record())
    assert set(g.answered) == {Stage.HANDLED, BATCHED, Stage.SERVED}
    handled, batched, served = g.answered[Stage.HANDLED], g.answered[BATCHED], g.answered[Stage.SERVED]
    assert (handled.error_rate, handled.errors, handled.complete, handled.abort_reason) == (
        0.25, {"bad_input": 1}, True, None)
    assert (batched.error_rate, batched.errors, batched.complete) == (0.5, {"batch_mismatch": 2}, True)
    assert (served.error_rate, served.errors, served.complete, served.abort_reason) == (
        0.5, {"handler_error": 1, "not_sent": 1}, False, "the server is gone")


def test_gate_inputs_have_no_batched_stage_when_the_plan_has_none():
    rec = record()
    plan = SimpleNamespace(**{**rec.plan.__dict__, "batched_stage": None,
                              "stages": (Stage.EXPORTED, Stage.HANDLED, Stage.SERVED)})
    g = runner._gate_inputs(RunRecord(**{**rec.__dict__, "plan": plan}))
    assert set(g.answered) == {Stage.HANDLED, Stage.SERVED}


def test_gate_inputs_ratios_latency_leaks_prior_and_not_run():
    g = runner._gate_inputs(record())
    assert g.export_size_ratio == 1.5
    assert g.export_latency_ratio == 2.0  # the batch-1 timing, not the first listed (batch 8: 4.0)
    assert g.eager_p50_ms == 2.0  # median of 1, 9, 2 (the row without a latency left out)
    assert g.leaked_ids == ("r3",)
    assert g.prior_metrics == {"accuracy": 0.75} and g.prior_label == "run of 2026-11-30T00:00:00+00:00"
    assert set(g.not_run) == {Stage.EXPORTED, Stage.HANDLED, BATCHED, Stage.SERVED}
    assert g.warmup_checked == 0 and g.warmup_differing == ()


def test_gate_inputs_of_a_run_stopped_after_the_baseline():
    rec = record(exported=None, handled=None, replay=None, served_probes=(), prior=None, dataset=None)
    g = runner._gate_inputs(rec)
    assert g.answered == {} and g.probes_run == () and g.failed_probes == {}
    assert g.export_size_ratio is None and g.export_latency_ratio is None and g.warmup_checked is None
    assert g.prior_metrics is None and g.prior_label == "previous run" and g.leaked_ids is None
    assert g.eager_p50_ms == 2.0


def test_answered_facts_count_each_error_class_and_keep_the_abort_reason():
    f = runner._answered_facts(outcomes([0, "timeout", "timeout", "bad_input", 1]), False, "stop")
    assert f.error_rate == pytest.approx(0.6) and f.errors == {"timeout": 2, "bad_input": 1}
    assert f.complete is False and f.abort_reason == "stop"
    empty = runner._answered_facts((), True, None)
    assert empty.error_rate is None and empty.errors == {} and empty.complete is True


# --- _outputs: what the comparison is given, per stage --------------------------------------------------------------

def test_outputs_line_up_every_stage_in_order_with_the_batched_predictions_and_server_times():
    stages, server_ms = runner._outputs(record())
    assert [s.name for s in stages] == [Stage.BASELINE, Stage.EXPORTED, Stage.HANDLED, BATCHED, Stage.SERVED]
    by = {s.name: s for s in stages}
    assert by[Stage.BASELINE].predictions.tolist() == [0, 1, 2, 0]
    assert by[Stage.EXPORTED].predictions.tolist() == [0, 1, 2, 1]
    assert by[Stage.HANDLED].predictions.tolist() == [0, -1, 2, 0]
    assert by[BATCHED].predictions.tolist() == [0, -1, -1, 1]
    assert by[Stage.SERVED].predictions.tolist() == [0, 1, -1, -1]
    assert server_ms[0] == 0.5 and np.isnan(server_ms[1:]).all() and len(server_ms) == 4


def test_outputs_without_a_replay_have_no_server_times():
    stages, server_ms = runner._outputs(record(replay=None))
    assert Stage.SERVED not in [s.name for s in stages] and server_ms is None


# --- _server_failure: a serving failure is exit 3, never a failed model --------------------------------------------

EXPECTED_SERVER_FAILURES = {"timeout", "worker_died", "connection_error", "not_found", "unauthorized"}
MODEL_FAILURES = ("bad_input", "handler_error", "batch_mismatch", "bad_response", "too_large")


def test_the_server_failure_classes_are_the_servers():
    assert SERVER_FAILURES == EXPECTED_SERVER_FAILURES


@pytest.mark.parametrize("cls", sorted(EXPECTED_SERVER_FAILURES))
def test_a_complete_replay_with_a_server_failure_is_a_replay_error_exit_3(cls):
    rec = RunRecord(started_at="t", replay=replay_of(outcomes([0, cls, 1, cls])))
    err = runner._server_failure(rec)
    assert isinstance(err, ReplayError) and err.exit_code == 3
    assert f"{cls}: 2" in err.message and "2 of 4 rows" in err.message
    assert release.exit_code_of("error", err) == 3


@pytest.mark.parametrize("cls", MODEL_FAILURES)
def test_a_model_failure_is_left_to_the_gate(cls):
    assert runner._server_failure(RunRecord(started_at="t", replay=replay_of(outcomes([0, cls, 1])))) is None


def test_an_incomplete_replay_is_a_server_failure_naming_the_reason():
    rec = RunRecord(started_at="t", replay=replay_of(outcomes([0, "not_sent"]), False, "8 consecutive refusals"))
    err = runner._server_failure(rec)
    assert isinstance(err, ReplayError) and "replay incomplete: 8 consecutive refusals" in err.message
    assert "1 of 2 rows answered" in err.message


def test_a_worker_that_died_and_was_restarted_is_a_server_failure(tmp_path):
    rec = RunRecord(started_at="t", replay=replay_of(outcomes([0, 1])), worker_restarts=2,
                    server=SimpleNamespace(log_dir=tmp_path))
    err = runner._server_failure(rec)
    assert isinstance(err, ReplayError) and "died 2 time(s)" in err.message
    assert runner._server_failure(RunRecord(started_at="t", replay=replay_of(outcomes([0, 1])))) is None
    assert runner._server_failure(RunRecord(started_at="t")) is None


# --- load_prior_report: only a complete run of the same model is a baseline ----------------------------------------

def _report(**changes) -> dict:
    rep = {"schema": REPORT_SCHEMA, "model": "m", "started_at": "2026-11-30T00:00:00+00:00", "status": "passed",
           "complete": True, "metrics": {"served": {"accuracy": 0.9, "f1_macro": 0.8, "latency": {"p99": 12.5}}}}
    rep.update(changes)
    return rep


def _write(tmp_path: Path, rep: dict) -> Path:
    path = tmp_path / "report.json"
    path.write_text(json.dumps(rep))
    return path


@pytest.mark.parametrize("status", ["interrupted", "error"])
def test_a_run_that_did_not_complete_is_refused_as_a_baseline_even_with_served_metrics(tmp_path, status):
    path = _write(tmp_path, _report(status=status, complete=False))
    with pytest.raises(ReportError, match=f"did not complete \\(status '{status}'\\)"):
        load_prior_report(path, "m")


@pytest.mark.parametrize("changes", [{"complete": None}, {"metrics": {}}, {"metrics": None}])
def test_a_report_without_completion_or_served_metrics_is_refused(tmp_path, changes):
    rep = _report(**changes)
    if changes.get("complete", True) is None:
        del rep["complete"]
    with pytest.raises(ReportError, match="did not complete"):
        load_prior_report(_write(tmp_path, rep), "m")


def test_a_report_of_another_model_is_refused(tmp_path):
    with pytest.raises(ReportError, match="of model 'other', not 'm'"):
        load_prior_report(_write(tmp_path, _report(model="other")), "m")


@pytest.mark.parametrize("status", ["passed", "failed"])
def test_a_complete_run_is_a_baseline_with_its_served_metrics(tmp_path, status):
    _write(tmp_path, _report(status=status))
    prior = load_prior_report(tmp_path, "m")  # the run folder works as well as the file
    assert prior.status == status and prior.served_p99_ms == 12.5
    assert prior.metrics == {"accuracy": 0.9, "f1_macro": 0.8} and prior.started_at == "2026-11-30T00:00:00+00:00"
    assert all(isinstance(v, float) and not math.isnan(v) for v in prior.metrics.values())


# --- compare_and_gate: a baseline accuracy on a known fixture, labels named in the spec's class order ---------------

def test_compare_and_gate_scores_every_stage_on_label_names_in_the_specs_class_order(fast_bootstrap):
    """Six rows labeled by name in a class order that is not sorted (zebra, apple, mango); every
    stage predicts the same classes, right on 5 of 6 rows. A name mapped through a sorted list
    shifts the labels: the gate would still pass (every stage agrees), only the accuracy tells."""
    import pandas as pd

    from pipeline.inputs.base import labels_of
    from pipeline.run.plan import plan_run
    from pipeline.stages.dataset import DatasetResult
    from tests.unit._support import tensor_rows

    names = ["zebra", "apple", "mango"]
    spec = spec_for(3, model={"class_names": names})
    plan = plan_run(spec, prior=False, until=None)
    labels, _ = labels_of(pd.Series(["zebra", "apple", "mango", "zebra", "apple", "mango"]), spec, Path("d.csv"),
                          [f"r{i}" for i in range(6)])
    pred = [0, 1, 2, 0, 1, 0]  # row 5 (a mango) called zebra
    logits = (np.eye(3)[pred] * 6).astype(np.float32)
    scores = Scores(logits, np.ones(6))
    rec = RunRecord(
        started_at="t", spec=spec, plan=plan, dataset=DatasetResult(tensor_rows(6, labels=labels), None, None),
        baseline=SimpleNamespace(scores=scores, weights_size_bytes=100),
        exported=SimpleNamespace(size_bytes=100, scores=scores, timings=(),
                                 consistency=SimpleNamespace(failed_probes=())),
        replay=replay_of([ok(i, p) for i, p in enumerate(pred)]))
    out = runner.compare_and_gate(rec)
    assert labels.tolist() == [0, 1, 2, 0, 1, 2]
    for stage in (Stage.BASELINE, Stage.EXPORTED, Stage.SERVED):
        assert out.comparison.stages[stage].accuracy == pytest.approx(5 / 6), stage
    assert out.comparison.stages[Stage.BASELINE].answered == 6
