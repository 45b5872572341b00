"""Multi-label and regression on the task seam: labels, answers, "the same answer", metrics, checks, blame.

Stage outputs are built as the runner builds them (``task.model_outputs`` from a model's outputs,
``task.answer_outputs`` from decoded answers), then compared and gated; the traps of issue 23
(softmax for sigmoid, labels off by one, a wrong de-normalisation scale) are blamed on the handler.
"""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from pipeline.answers.base import AnswerError
from pipeline.answers.envelopes import ENVELOPES
from pipeline.errors import DatasetError, ReportError
from pipeline.evaluate.attribution import attribute
from pipeline.evaluate.gate import GateInputs, GatePlan, StageFacts, evaluate_gate
from pipeline.stages.outcomes import RowOutcome, failed
from pipeline.tasks import multilabel, regression
from pipeline.tasks import values as V
from pipeline.tasks.base import CompareContext
from pipeline.tasks.registry import task_for
from tests.unit._support import spec_for

N = 20
IDS = tuple(f"r{i}" for i in range(N))
NAMES = ("a", "b", "c")


def ml_spec(**gate):
    return spec_for(3, model={"task": "multilabel", "class_names": list(NAMES)}, **({"gate": gate} if gate else {}))


def rg_spec(k: int = 1, **gate):
    return spec_for(k, model={"task": "regression"}, **({"gate": gate} if gate else {}))


def scores(out: np.ndarray):
    return SimpleNamespace(logits=out.astype(np.float32), latencies_ms=np.ones(len(out)))


def answered(task, spec, docs, fail: tuple[int, ...] = ()):
    out = []
    for i, doc in enumerate(docs):
        if i in fail:
            out.append(failed(i, IDS[i], "bad_response", "no"))
            continue
        out.append(RowOutcome(i, IDS[i], True, 200, task.decode(doc, spec), 1.0, None, None, None, None, 1))
    return tuple(out)


def run(task_name, spec, y, base_out, docs, fail=()):
    """Baseline and exported from ``base_out``, handled from the answers ``docs``: compared, gated, blamed."""
    task = task_for(task_name)
    stages = [task.model_outputs("baseline", scores(base_out), spec), task.model_outputs("exported", scores(base_out),
                                                                                          spec),
              task.answer_outputs("handled", answered(task, spec, docs, fail), spec)]
    cmp = task.compare(IDS, y, stages, None, CompareContext(spec.class_labels, spec.gate.max_output_diff, spec=spec))
    plan = GatePlan(candidates=("exported", "handled"), labels=spec.class_labels, task=task_name)
    inputs = GateInputs(answered={"handled": StageFacts(len(fail) / N, {"bad_response": len(fail)} if fail else {},
                                                        True)},
                        export_size_ratio=1.0, export_latency_ratio=0.5)
    gate = evaluate_gate(spec.gate, plan, cmp, inputs)
    return cmp, gate, attribute(cmp, spec.gate.max_output_diff)


def failing(gate, stage="handled") -> set[str]:
    return {c.name for c in gate.checks if c.stage == stage and c.is_gating and not c.passed}


def check(gate, name, stage="handled"):
    (c,) = [c for c in gate.checks if c.stage == stage and c.name == name]
    return c


@pytest.fixture
def ml_case():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(N, 3)) * 2
    y = (logits + rng.normal(scale=1.0, size=(N, 3)) > 0).astype(np.int64)
    sig = multilabel.sigmoid(logits.astype(np.float32))
    return logits, y, sig


@pytest.fixture
def rg_case():
    rng = np.random.default_rng(1)
    out = rng.normal(size=(N, 1)) * 50 + 150
    y = out + rng.normal(scale=20, size=(N, 1))
    return out, y, out.astype(np.float32).astype(np.float64)


# --- labels --------------------------------------------------------------------------------------------


def test_multilabel_labels_as_lists_names_and_separated_text():
    df = pd.DataFrame({"label": ["[0, 2]", '["b"]', "a;c", "", "[]", "b"]})
    y, notes = multilabel.read_labels(df, ml_spec(), Path("d.csv"), [f"i{i}" for i in range(6)])
    assert y.tolist() == [[1, 0, 1], [0, 1, 0], [1, 0, 1], [0, 0, 0], [0, 0, 0], [0, 1, 0]]
    assert "lists" in notes[0] and "2 row(s) have no label" in notes[0]


def test_multilabel_labels_as_one_01_column_per_label():
    spec = spec_for(3, model={"task": "multilabel", "class_names": list(NAMES)},
                    dataset={"label_columns": ["ya", "yb", "yc"]})
    df = pd.DataFrame({"ya": [1, 0], "yb": [True, False], "yc": ["0", "1"]})
    y, _ = multilabel.read_labels(df, spec, Path("d.csv"), ["i0", "i1"])
    assert y.tolist() == [[1, 1, 0], [0, 0, 1]]
    df = pd.DataFrame({"ya": [1, 0], "yb": [True, 2], "yc": ["0", "1"]})
    with pytest.raises(DatasetError, match="not 0 or 1") as e:
        multilabel.read_labels(df, spec, Path("d.csv"), ["i0", "i1"])
    assert "id i1: column 'yb' holds 2" in e.value.details[0]


def test_multilabel_unknown_label_is_named_by_row_and_an_empty_cell_is_no_label():
    df = pd.DataFrame({"label": ["a", "z;b", None, "{1}", "[5]"]})
    with pytest.raises(DatasetError) as e:
        multilabel.read_labels(df, ml_spec(), Path("d.csv"), ["i0", "i1", "i2", "i3", "i4"])
    assert "3 row(s)" in str(e.value)
    assert any("id i1: 'z' is not a label" in d for d in e.value.details)
    assert any("id i4: 5 is not a label" in d for d in e.value.details)
    assert not any(d.startswith("id i2:") for d in e.value.details), "an empty cell is no label (CSV)"


def test_regression_labels_one_or_several_columns_and_lists():
    y, _ = regression.read_labels(pd.DataFrame({"label": [1, 2.5]}), rg_spec(), Path("d.csv"), ["i0", "i1"])
    assert y.tolist() == [[1.0], [2.5]] and y.dtype == np.float64
    spec2 = spec_for(2, model={"task": "regression"}, dataset={"label_columns": ["t0", "t1"]})
    y, _ = regression.read_labels(pd.DataFrame({"t0": [1, 2], "t1": [3, 4.5]}), spec2, Path("d.csv"), ["i0", "i1"])
    assert y.tolist() == [[1, 3], [2, 4.5]]
    y, _ = regression.read_labels(pd.DataFrame({"label": ["[1, 2]", "[3, 4]"]}), rg_spec(2), Path("d.csv"),
                                  ["i0", "i1"])
    assert y.tolist() == [[1, 2], [3, 4]]


def test_regression_target_not_a_finite_number_is_named_by_row():
    with pytest.raises(DatasetError, match="1 regression target") as e:
        regression.read_labels(pd.DataFrame({"label": [1.0, "high", 2]}), rg_spec(), Path("d.csv"),
                               ["i0", "i1", "i2"])
    assert e.value.details == ["id i1: column 'label' holds 'high'"]
    with pytest.raises(DatasetError, match="2 label column"):
        regression.read_labels(pd.DataFrame({"a": [1], "b": [2]}),
                               spec_for(3, model={"task": "regression"}, dataset={"label_columns": ["a", "b"]}),
                               Path("d.csv"), ["i0"])


# --- answers -------------------------------------------------------------------------------------------


def test_multilabel_answers_scores_mapping_present_labels_and_kserve_v2():
    spec = ml_spec()
    p = multilabel.parse_answer([0.9, 0.2, 0.6], spec)
    assert p.extra["values"].tolist() == [1, 0, 1] and p.probabilities.tolist() == [0.9, 0.2, 0.6]
    p = multilabel.parse_answer({"a": 0.1, "c": 0.7}, spec)
    assert p.extra["values"].tolist() == [0, 0, 1] and math.isnan(p.probabilities[1])
    p = multilabel.parse_answer(["b", "c"], spec)
    assert p.extra["values"].tolist() == [0, 1, 1] and p.probabilities is None
    body = json.dumps({"outputs": [{"name": "o", "shape": [3], "datatype": "FP32", "data": [0.1, 0.8, 0.5]}]})
    p = multilabel.parse_answer(ENVELOPES["kserve_v2"].unwrap(body.encode()), spec)
    assert p.extra["values"].tolist() == [0, 1, 1]


def test_multilabel_threshold_is_the_specs():
    spec = spec_for(3, model={"task": "multilabel", "class_names": list(NAMES), "threshold": 0.7})
    assert multilabel.parse_answer([0.69, 0.7, 0.9], spec).extra["values"].tolist() == [0, 1, 1]


@pytest.mark.parametrize("doc, words", [
    ([0.5, 1.3, 0.1], "outside [0, 1]"),  # logits answered as scores: checked on their own
    ([-0.2, 0.5, 0.1], "outside [0, 1]"),
    ({"z": 0.5}, "'z' is not a label"),
    (["d"], "'d' is not a label"),
    ("a", "a multilabel answer is"),
])
def test_multilabel_bad_answers_say_why(doc, words):
    with pytest.raises(AnswerError, match=words.replace("[", r"\[").replace("]", r"\]")):
        multilabel.parse_answer(doc, ml_spec())


def test_regression_answers_number_list_mapping_and_value_keys():
    spec = rg_spec()
    for doc in (151.5, [151.5], {"value": 151.5}, {"predictions": [151.5]}, [[151.5]], {"0": 151.5}):
        p = regression.parse_answer(doc, spec)
        assert p.logits.tolist() == [151.5] and p.extra["values"].tolist() == [151.5], doc
    spec2 = spec_for(2, model={"task": "regression", "class_names": ["x", "y"]})
    assert regression.parse_answer({"y": 2, "x": 1}, spec2).logits.tolist() == [1, 2]


@pytest.mark.parametrize("doc, words", [([1.0, 2.0], "must hold 1 numbers"), ("high", "must be a list"),
                                        ([float("nan")], "NaN or infinity"), ({"z": 1.0}, "names each")])
def test_regression_bad_answers_say_why(doc, words):
    with pytest.raises(AnswerError, match=words):
        regression.parse_answer(doc, rg_spec())


def test_a_task_codec_decodes_through_the_envelope_and_settles_at_once():
    from pipeline.answers.classes import class_map_for
    from pipeline.answers.registry import codec_for

    spec = spec_for(1, model={"task": "regression"}, answers={"envelope": "kserve_v2"})
    codec = codec_for(spec, class_map_for(spec), "auto", "test")
    assert codec.format == "regression" and codec.settled
    body = json.dumps({"outputs": [{"name": "o", "shape": [1], "datatype": "FP32", "data": [42.0]}]}).encode()
    assert codec.settle(body) is codec and codec.decode(body).extra["values"].tolist() == [42.0]


# --- what "the same" means, metrics, checks, blame ------------------------------------------------------


def test_multilabel_faithful_answers_pass(ml_case):
    logits, y, sig = ml_case
    cmp, gate, blame = run("multilabel", ml_spec(), y, logits, [list(map(float, r)) for r in sig])
    assert gate.passed, [(c.stage, c.name, c.detail) for c in gate.failures]
    assert blame.layer is None
    assert check(gate, "max abs output difference").detail.startswith("probabilities, 20 row(s)")


def test_multilabel_softmax_instead_of_sigmoid_is_a_handler_problem_named_as_softmax(ml_case):
    logits, y, _ = ml_case
    z = logits.astype(np.float32)
    soft = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    cmp, gate, blame = run("multilabel", ml_spec(), y, logits, [list(map(float, r)) for r in soft])
    assert {"prediction agreement", "max abs output difference"} <= failing(gate)
    assert "a softmax over the labels" in check(gate, "max abs output difference").detail
    assert blame.layer == "handler problem"
    assert not failing(gate, "exported")


def test_multilabel_labels_off_by_one_is_a_handler_problem_with_the_rows_named(ml_case):
    logits, y, sig = ml_case
    shifted = [[NAMES[(k + 1) % 3] for k in range(3) if r[k] >= 0.5] for r in sig]
    cmp, gate, blame = run("multilabel", ml_spec(), y, logits, shifted)
    agreement = check(gate, "prediction agreement")
    assert not agreement.passed and "answer another set of labels (r" in agreement.detail
    assert blame.layer == "handler problem"
    # the answers carry no scores: nothing to compare numerically, said as not evaluable
    assert "not evaluable" in check(gate, "max abs output difference").detail


def test_multilabel_a_failed_row_counts_as_every_label_wrong(ml_case):
    logits, y, sig = ml_case
    cmp, gate, _ = run("multilabel", ml_spec(), y, logits, [list(map(float, r)) for r in sig], fail=(3,))
    base, handled = cmp.stages["baseline"], cmp.stages["handled"]
    assert handled.answered == N - 1 and handled.hamming_loss > base.hamming_loss
    assert handled.f1_micro < base.f1_micro
    assert "handled error rate" in failing(gate)


def test_multilabel_metrics_are_torchmetrics_and_the_bootstrap_figures_match_them(ml_case):
    logits, y, sig = ml_case
    task = task_for("multilabel")
    s = task.model_outputs("baseline", scores(logits), ml_spec())
    m = multilabel.score(s, y, NAMES, 0.5)
    w = np.ones((1, N), int)
    figs = multilabel.weighted_figures(w, multilabel._filled(s, y), y)
    p = (sig >= 0.5).astype(int)
    tp, fp, fn = (p & y).sum(), (p & (1 - y)).sum(), ((1 - p) & y).sum()
    assert m.f1_micro == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert m.hamming_loss == pytest.approx((p != y).mean())
    for k in ("f1_micro", "f1_macro", "hamming_loss", "subset_accuracy"):
        assert figs[k][0] == pytest.approx(m.get(k), abs=1e-6), k


def test_regression_faithful_values_pass_within_the_relative_tolerance(rg_case):
    out, y, exact = rg_case
    # float32 rounding of values near 150 is ~1e-5 absolute: within max_output_diff + value_rtol x |baseline|
    cmp, gate, blame = run("regression", rg_spec(), y, out, [float(v) * (1 + 3e-6) for v in exact[:, 0]])
    assert gate.passed, [(c.stage, c.name, c.detail) for c in gate.failures]
    assert blame.layer is None and check(gate, "max abs value difference").value > 1e-5


def test_regression_without_relative_tolerance_the_same_values_fail():
    rng = np.random.default_rng(1)
    out = rng.normal(size=(N, 1)) * 50 + 150
    y = out + 1
    cmp, gate, blame = run("regression", rg_spec(value_rtol=0.0), y, out,
                           [float(v) * (1 + 3e-6) for v in out.astype(np.float32)[:, 0]])
    assert {"prediction agreement", "max abs value difference"} <= failing(gate)
    assert blame.layer == "handler problem"


def test_regression_wrong_denormalisation_scale_is_a_handler_problem(rg_case):
    out, y, exact = rg_case
    mean, std, wrong_std = 150.0, 50.0, 55.0
    docs = [float((v - mean) / std * wrong_std + mean) for v in exact[:, 0]]
    cmp, gate, blame = run("regression", rg_spec(), y, out, docs)
    assert {"prediction agreement", "max abs value difference"} <= failing(gate)
    assert blame.layer == "handler problem" and "handled vs exported" in blame.summary
    assert not failing(gate, "exported")
    assert cmp.diverging and cmp.diverging[0].stage == "handled" and cmp.diverging[0].quantity == "values"


def test_regression_an_unanswered_row_makes_its_metrics_undefined_not_better(rg_case):
    out, y, exact = rg_case
    cmp, gate, _ = run("regression", rg_spec(), y, out, [float(v) for v in exact[:, 0]], fail=(0,))
    assert math.isnan(cmp.stages["handled"].mae) and "1 of 20 row(s) got no answer" in cmp.stages["handled"].undefined[
        "mae"]
    c = check(gate, "mae relative rise")  # the default limit of a loss in the target's units
    assert not c.passed and c.detail.startswith("not evaluable: 1 of 20")


def test_regression_metrics_are_torchmetrics_and_the_bootstrap_figures_match_them(rg_case):
    out, y, _ = rg_case
    s = task_for("regression").model_outputs("baseline", scores(out), rg_spec())
    m = regression.score(s, y, ("0",))
    e = s.values - y
    assert m.mae == pytest.approx(np.abs(e).mean()) and m.rmse == pytest.approx(np.sqrt((e ** 2).mean()))
    assert m.r2 == pytest.approx(1 - (e ** 2).sum() / ((y - y.mean()) ** 2).sum())
    figs = regression.weighted_figures(np.ones((1, N), int), s.values, y)
    for k in ("mae", "rmse", "r2"):
        assert figs[k][0] == pytest.approx(m.get(k), rel=1e-6), k
    assert len(m.points) == N and m.points[0] == (float(y[0, 0]), float(s.values[0, 0]))


def test_a_loss_that_rises_fails_and_one_that_falls_is_no_drop(rg_case):
    out, y, exact = rg_case
    spec = rg_spec(metrics={"mae": {"max_drop": 0.01}}, flag_improvement=False, value_rtol=1.0)
    worse = [float(v) + (5.0 if i % 2 else -5.0) for i, v in enumerate(exact[:, 0])]  # away from nothing in particular
    _, gate, _ = run("regression", spec, y, out, worse)
    c = check(gate, "mae rise")
    assert c.value != c.baseline and c.passed == (c.value - c.baseline <= 0.01)
    better = [float(t) for t in y[:, 0]]  # the truth itself: MAE 0
    _, gate, _ = run("regression", spec, y, out, better)
    assert check(gate, "mae rise").passed and check(gate, "mae rise").value == 0.0


def test_an_improvement_beyond_noise_fails(rg_case):
    out, y, _ = rg_case
    _, gate, _ = run("regression", rg_spec(value_rtol=1.0), y, out, [float(t) for t in y[:, 0]])
    c = check(gate, "no improvement beyond noise")
    assert not c.passed and "improved after packaging beyond noise" in c.detail


def test_the_bootstrap_is_bounded_in_time_and_count():
    calls = []

    def stat(w):
        calls.append(len(w))
        return {"m": w[:, 0].astype(float)}

    cis, drawn = V.paired_bootstrap(stat, 10, resamples=1000, seconds=0.0)
    assert drawn == 100 and calls == [100], "one batch when the time is spent at once"
    cis, drawn = V.paired_bootstrap(stat, 10, resamples=250, seconds=60.0)
    assert drawn == 250 and calls[1:] == [100, 100, 50]
    lo, hi = cis["m"]
    assert 0 <= lo <= hi <= 10
    assert V.paired_bootstrap(stat, 0)[1] == 0


def test_the_default_gate_metrics_are_the_tasks_and_another_tasks_metric_is_refused():
    assert set(ml_spec().gate.metrics) == {"f1_micro", "f1_macro", "hamming_loss"}
    assert set(rg_spec().gate.metrics) == {"mae", "rmse", "r2"}
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown metric\(s\) \['accuracy'\].*model.task: regression"):
        rg_spec(metrics={"accuracy": {"max_drop": 0.01}})
    with pytest.raises(ConfigError, match="a classifier has at least 2 classes"):
        spec_for(1)


def test_a_loss_in_target_units_is_limited_relatively_by_default_and_may_take_a_max_drop_above_one():
    from pipeline.errors import ConfigError

    m = rg_spec().gate.metrics
    assert (m["mae"].max_relative_drop, m["mae"].max_drop) == (0.01, None)
    assert (m["rmse"].max_relative_drop, m["rmse"].max_drop) == (0.01, None)
    assert (m["r2"].max_drop, m["r2"].max_relative_drop) == (0.01, None)  # a score: 1 point
    h = ml_spec().gate.metrics["hamming_loss"]  # a loss in [0, 1]: 1 point, as a score
    assert (h.max_drop, h.max_relative_drop) == (0.01, None)
    assert rg_spec(metrics={"mae": {"max_drop": 2.5}}).gate.metrics["mae"].max_drop == 2.5
    with pytest.raises(ConfigError, match=r"gate.metrics.r2.max_drop is 2.5: r2 lies in \[0, 1\]"):
        rg_spec(metrics={"r2": {"max_drop": 2.5}})
    with pytest.raises(ConfigError, match=r"gate.metrics.mae.min: mae is a loss .*max_relative_drop"):
        rg_spec(metrics={"mae": {"min": 0.5}})
    with pytest.raises(ConfigError, match=r"hamming_loss is a loss"):
        ml_spec(metrics={"hamming_loss": {"min": 0.1}})


def test_rows_parquet_columns_of_each_task(ml_case, rg_case):
    logits, _, _ = ml_case
    s = task_for("multilabel").model_outputs("baseline", scores(logits), ml_spec())
    cols = V.row_columns("baseline", s, NAMES, labels=True)
    assert set(cols) == {"baseline_labels", "baseline_score_a", "baseline_score_b", "baseline_score_c"}
    k = int(np.argmax(logits[0]))
    assert (NAMES[k] in cols["baseline_labels"][0]) == (logits[0, k] >= 0)
    out, _, _ = rg_case
    s = task_for("regression").model_outputs("baseline", scores(out), rg_spec())
    cols = V.row_columns("baseline", s, ("progression",), labels=False)
    assert list(cols) == ["baseline_value_progression"] and cols["baseline_value_progression"][0] == pytest.approx(
        out[0, 0], rel=1e-6)


def test_report_sections_render_from_report_json_with_a_residual_plot(rg_case):
    from pipeline.report.html import render_html
    from pipeline.report.markdown import render_markdown
    from pipeline.report.schema import jsonable

    out, y, exact = rg_case
    cmp, gate, _ = run("regression", rg_spec(), y, out, [float(v) * 1.1 for v in exact[:, 0]])
    rep = {"verdict": "FAIL", "model": "m", "complete": True, "spec": {"model": {"task": "regression"}},
           "metrics": jsonable(cmp.stages), "paired_tests": jsonable(cmp.tests), "flipped_rows": jsonable(cmp.flipped),
           "flipped_total": cmp.flipped_total, "diverging_rows": jsonable(cmp.diverging),
           "gate": {"passed": False, "checks": jsonable(gate.checks)}}
    md = render_markdown(rep)
    assert "| mae (lower is better) |" in md and "## Per target (MAE / RMSE / R2)" in md
    assert "Rows whose answer differs from the baseline's (20)" in md and "accuracy" not in md
    html = render_html(rep, None)
    assert "<svg" in html and "residual (prediction - truth)" in html and "Confusion" not in html
    rows = pd.DataFrame({"baseline_latency_ms": np.linspace(0.1, 1.0, N), "handled_latency_ms": np.full(N, 2.0)})
    assert "<h2>Latency distributions</h2>" in render_html(rep, rows), "a task's tables leave the rows to the plots"


# --- history and the prior run -------------------------------------------------------------------------


def _report(task: str, status: str = "passed", run_dir: str | None = None) -> dict:
    figures = {"regression": {"mae": 4.0, "rmse": 5.0, "r2": 0.5}, "classification": {"accuracy": 0.9}}[task]
    return {"schema": "package-validate/report/v3", "status": status, "exit_code": 0, "started_at": "t",
            "model": "m", "version": "1", "run_dir": run_dir, "complete": True,
            "spec": {"model": {"task": task}}, "metrics": {"served": figures}}


def test_history_records_each_tasks_figures_and_migrates_rows_before_the_task_column(tmp_path):
    from pipeline.history.store import last_passing, load_history, record_run

    db = tmp_path / "history.sqlite"
    with sqlite3.connect(db) as conn:  # a history written before the task seam
        conn.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, started_at TEXT NOT NULL, model TEXT, "
                     "version TEXT, status TEXT NOT NULL, exit_code INTEGER NOT NULL, run_dir TEXT, spec_path TEXT, "
                     "figures TEXT NOT NULL, published TEXT)")
        old = tmp_path / "old"
        old.mkdir()
        (old / "report.json").write_text("{}")
        conn.execute("INSERT INTO runs (started_at, model, status, exit_code, run_dir, figures) VALUES "
                     "('t0', 'm', 'passed', 0, ?, '{\"served.accuracy\": 0.9}')", (str(old),))
    new = tmp_path / "new"
    new.mkdir()
    (new / "report.json").write_text("{}")
    record_run(db, _report("regression", run_dir=str(new)))
    runs = load_history(db, "m")
    assert [r.task for r in runs] == ["regression", "classification"]
    assert runs[0].figures["served.mae"] == 4.0 and "served.accuracy" not in runs[0].figures
    assert last_passing(db, "m", "classification").run_dir == str(old)
    assert last_passing(db, "m", "regression").run_dir == str(new)
    assert last_passing(db, "m", "multilabel") is None


def test_a_prior_report_of_another_task_is_refused_and_a_v2_report_reads_as_classification(tmp_path):
    from pipeline.history.prior import load_prior_report

    path = tmp_path / "report.json"
    path.write_text(json.dumps(_report("regression")))
    assert load_prior_report(path, "m", "regression").metrics == {"mae": 4.0, "rmse": 5.0, "r2": 0.5}
    with pytest.raises(ReportError, match="is of a regression run, this spec's model.task is classification"):
        load_prior_report(path, "m", "classification")
    v2 = {**_report("classification"), "schema": "package-validate/report/v2", "spec": {"model": {}}}
    path.write_text(json.dumps(v2))
    assert load_prior_report(path, "m", "classification").metrics == {"accuracy": 0.9}


def test_served_warm_up_answers_are_compared_with_the_tasks_tolerance():
    from pipeline.run.runner import warmup_differences

    spec = rg_spec()
    task = task_for("regression")
    steady = answered(task, spec, [300.0])
    warm = answered(task, spec, [300.0 + 3e-5])  # float32 batching at ~300: within 1e-5 + 1e-5 x 300
    replay = SimpleNamespace(rows=steady, warmup_answers=warm)
    assert warmup_differences(replay, *task.tolerances(spec)) == (1, ())
    assert warmup_differences(replay, *task_for("classification").tolerances(spec))[1], "absolute only: differs"
    far = SimpleNamespace(rows=steady, warmup_answers=answered(task, spec, [300.1]))
    assert warmup_differences(far, *task.tolerances(spec))[1]


def test_a_loss_against_an_earlier_run_is_limited_in_its_rise(rg_case):
    out, y, exact = rg_case
    spec = rg_spec(metrics={"mae": {"max_drop": 0.01}, "r2": {"max_drop": 0.01}})
    task = task_for("regression")
    stages = [task.model_outputs("baseline", scores(out), spec),
              task.answer_outputs("served", answered(task, spec, [float(v) for v in exact[:, 0]]), spec)]
    cmp = task.compare(IDS, y, stages, None, CompareContext(spec.class_labels, spec.gate.max_output_diff, spec=spec))
    mae, r2 = cmp.stages["served"].mae, cmp.stages["served"].r2
    plan = GatePlan(candidates=("served",), labels=spec.class_labels, task="regression", has_prior=True)
    for prior, ok in (({"mae": mae - 0.5, "r2": r2}, False), ({"mae": mae + 0.5, "r2": r2}, True)):
        inputs = GateInputs(answered={"served": StageFacts(0.0, {}, True)}, prior_metrics=prior, prior_label="run of t")
        c = check(evaluate_gate(spec.gate, plan, cmp, inputs), "mae rise vs run of t", "served")
        assert c.passed is ok and c.detail == f"rise {mae - prior['mae']:+.4f}"
    assert check(evaluate_gate(spec.gate, plan, cmp, inputs), "r2 drop vs run of t", "served").passed


def test_answers_decode_of_a_task_returns_what_the_task_reads_and_its_errors_are_the_rows():
    spec = ml_spec()
    dec = V.TaskDecoder("multilabel", lambda doc: multilabel.parse_answer(doc, spec), V.Carried("some", False, "x"),
                        fn=lambda doc: np.asarray(doc["out"]["scores"]), ref="mine.py:read")
    assert dec.decode({"out": {"scores": [0.9, 0.1, 0.8]}}).extra["values"].tolist() == [1, 0, 1]
    with pytest.raises(AnswerError, match=r"answers.decode mine.py:read raised KeyError: 'out'"):
        dec.decode({"scores": [0.9, 0.1, 0.8]})
