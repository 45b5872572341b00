"""What detection and segmentation share (tasks/structured.py) and the registry, with exact figures and messages:
the stage figures, the time-bounded paired bootstrap, the seeds' limits and each candidate's gate checks."""

from __future__ import annotations

import math
from types import SimpleNamespace as NS

import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.evaluate.compare import OutputDiff
from pipeline.evaluate.gate import Check
from pipeline.spec.schema import MetricThreshold
from pipeline.tasks import registry
from pipeline.tasks import structured as T
from tests.unit._support import spec_for

NAN = math.nan


# --- stage figures ------------------------------------------------------------------------------------


def test_stage_metrics_flat_figures_and_what_is_undefined():
    m = T.stage_metrics("handled", 5, 4, {"map": 0.5, "map_50": None, "f1_macro": 0.25, "other": NAN},
                        {"cat": {"ap": 0.5}}, np.array([1.0, 3.0]), "boxes", 2)
    full = T.stage_metrics("s", 1, 1, {"map_50": 0.25, "precision_macro": 0.5, "recall_macro": 0.75}, {}, None,
                           "boxes", 2)
    assert (full.map_50, full.precision_macro, full.recall_macro) == (0.25, 0.5, 0.75)
    assert math.isnan(full.precision_weighted) and math.isnan(full.f1_weighted) and math.isnan(full.f1_macro)
    assert (m.stage, m.rows, m.answered) == ("handled", 5, 4)
    assert m.map == 0.5 and math.isnan(m.map_50) and m.f1_macro == 0.25 and math.isnan(m.miou)
    assert math.isnan(m.accuracy) and math.isnan(m.precision_macro) and math.isnan(m.recall_weighted)
    why = "not a classification figure: this task answers boxes per row"
    assert m.undefined == {"accuracy": why, "precision_macro": why, "recall_macro": why, "precision_weighted": why,
                           "recall_weighted": why, "f1_weighted": why, "map_50": "undefined (0/0)",
                           "other": "undefined (0/0)"}
    assert m.figures == {"map": 0.5, "map_50": None, "f1_macro": 0.25, "other": NAN}
    assert m.per_class_figures == {"cat": {"ap": 0.5}} and m.per_class == {} and m.confusion == []
    assert m.latency.count == 2 and m.classes_total == 0 and m.failed_by_class == []
    assert m.get("map") == 0.5 and m.get("f1_macro") == 0.25 and math.isnan(m.get("miou"))
    assert isinstance(m.get("map"), float)
    n = T.stage_metrics("s", 1, 1, {"miou": 0.75, "pixel_accuracy": 1}, {}, None, "a class per pixel", 3)
    assert n.latency is None and n.miou == 0.75 and n.pixel_accuracy == 1.0 and n.undefined["f1_macro"].endswith(
        "answers a class per pixel per row") and "miou" not in n.undefined
    assert isinstance(n.pixel_accuracy, float)
    assert T.answered_of(NS(predictions=[0, -1, 2])).tolist() == [True, False, True]


def test_the_paired_bootstrap_draws_rows_and_keeps_finite_figures():
    seen = []

    def stat(idx):
        seen.append(idx.copy())
        return {"sum": float(idx.sum()), "never": NAN, "none": None}

    cis, drawn = T.paired_bootstrap(stat, 4, seed=3, seconds=60, resamples=50)
    assert drawn == 50 and len(seen) == 50 and all(len(i) == 4 and i.min() >= 0 and i.max() <= 3 for i in seen)
    rng = np.random.default_rng(3)
    sums = [float(rng.integers(0, 4, size=4).sum()) for _ in range(50)]
    vals = np.array([0.1, 0.7, 1.3, 2.9])
    spread = T.paired_bootstrap(lambda i: {"v": float(vals[i].sum())}, 4, seconds=60, resamples=60)[0]["v"]
    rng = np.random.default_rng(0)  # the default seed
    draws = [float(vals[rng.integers(0, 4, size=4)].sum()) for _ in range(60)]
    assert spread == (float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5)))
    assert cis == {"sum": (float(np.percentile(sums, 2.5)), float(np.percentile(sums, 97.5)))}
    assert any(i.max() == 3 for i in seen)
    # fewer than 20 finite draws: no interval
    assert T.paired_bootstrap(stat, 4, resamples=19, seconds=60) == ({}, 19)
    assert set(T.paired_bootstrap(stat, 4, resamples=20, seconds=60)[0]) == {"sum"}
    # bounded in time: past the deadline it stops after the resample in hand
    assert T.paired_bootstrap(stat, 4, seconds=-1.0) == ({}, 1)
    seen.clear()
    assert T.paired_bootstrap(stat, 4)[1] == 400 and len(seen) == 400   # the defaults: 400 within a second
    assert T.paired_bootstrap(lambda i: {}, 4, resamples=0) == ({}, 0)


def test_metric_limits_are_the_specs_or_the_seeds():
    gate = NS(metrics={"map": MetricThreshold(max_drop=0.05), "accuracy": MetricThreshold(min=0.5)})
    assert T.metric_limits(gate, ("map", "miou")) == {"map": MetricThreshold(max_drop=0.05)}
    seeds = T.metric_limits(spec_for(2).gate, ("miou", "pixel_accuracy"))
    assert seeds == {"miou": MetricThreshold(max_drop=0.01), "pixel_accuracy": MetricThreshold(max_drop=0.01)}


def test_decoder_for_a_structured_task():
    spec = spec_for(2)
    task = NS(name="segmentation", decode=lambda doc, s: ("decoded", doc, s is spec))
    dec = T.decoder_for(task, spec, "a class per pixel")
    assert dec.name == "segmentation" and dec.carries.describe() == "a class per pixel"
    assert dec.carries.probabilities == "none" and dec.carries.logits is False
    assert dec.decode(b'{"a": 1}') == ("decoded", {"a": 1}, True)


# --- gate checks ---------------------------------------------------------------------------------------


def stage(invalid=None, per_class=None, **figures):
    return NS(get=lambda m: figures.get(m, NAN), undefined={}, invalid_answers=invalid or {},
              per_class_figures=per_class or {})


def paired(agreement=1.0, disagreeing=0, output=OutputDiff("box scores", 0.0, 2), differences=None, deltas=None,
           delta_cis=None, resamples=0):
    return NS(agreement=agreement, disagreeing=disagreeing, output=output, differences=differences or {},
              deltas=deltas or {}, delta_cis=delta_cis or {}, resamples=resamples)


def comparison(cand, base, t=None, diverging=()):
    return NS(stages={"handled": cand, "baseline": base}, tests={"handled": t or paired()}, diverging=list(diverging))


def gate(**kw):
    return spec_for(2, gate=kw).gate


def task_gate(task, **kw):
    return spec_for(3, model={"task": task}, gate=kw).gate


LIMITS = {"map": MetricThreshold(max_drop=0.1)}


def checks(spec, cmp, limits=LIMITS, keys=("ap",), extra=None) -> dict[str, Check]:
    got = T.checks_for(spec, None, cmp, "handled", "baseline", "not run", limits, keys, "<= 1e-05 (box scores)",
                       extra)
    return {c.name: c for c in got}


def test_checks_of_a_faithful_candidate():
    per = {"cat": {"ap": 0.5, "f1": 0.25}}
    got = checks(gate(), comparison(stage(map=0.5, per_class=per), stage(map=0.5, per_class=per)))
    assert list(got) == ["answers valid on their own", "identical answers", "map drop", "per-class figures drop",
                         "max abs output difference"]
    assert got["answers valid on their own"] == Check("answers valid on their own", "handled", 0, 0, "no row", True,
                                                      "every answer checked alone")
    assert got["identical answers"] == Check("identical answers", "handled", 1.0, 1.0, ">= 1.0000 of rows", True,
                                             "0 row(s) differ")
    assert got["map drop"] == Check("map drop", "handled", 0.5, 0.5, "drop <= 0.1000", True, "drop +0.0000")
    assert got["per-class figures drop"] == Check("per-class figures drop", "handled", 0.0, 0.0,
                                                  "drop <= 0.1000 for every class", True, "no class dropped")
    assert got["max abs output difference"] == Check("max abs output difference", "handled", 0.0, 0.0,
                                                     "<= 1e-05 (box scores)", True, "box scores, 2 row(s) compared")


def test_checks_of_a_candidate_that_differs():
    base = stage(map=0.5, per_class={"cat": {"ap": 0.5, "f1": 0.5}, "dog": {"ap": 0.75, "f1": 0.5},
                                     "eel": {"ap": NAN}, "fox": {"f1": 0.5}})
    cand = stage(map=0.3, invalid={"r3": ["label(s) [7] outside 0..1", "b", "c", "d"], "r4": ["x"]},
                 per_class={"cat": {"ap": 0.25}, "dog": {"ap": NAN}})
    diverging = [NS(id=f"r{i}", stage="handled") for i in range(7)] + [NS(id="z", stage="served")]
    t = paired(0.5, 3, OutputDiff("box scores", 0.25, 2))
    got = checks(gate(max_output_diff=0.25, min_prediction_agreement=0.5), comparison(cand, base, t, diverging))
    assert got["answers valid on their own"] == Check("answers valid on their own", "handled", 2, 0, "no row", False,
                                                      "r3: label(s) [7] outside 0..1; b; c")
    assert got["identical answers"] == Check("identical answers", "handled", 0.5, 1.0, ">= 0.5000 of rows", True,
                                             "3 row(s) differ: r0, r1, r2, r3, r4")
    assert got["map drop"].passed is False and got["map drop"].detail == "drop +0.2000"
    # dog's AP fell to NaN: counted as 0, the worst drop (0.75); eel's baseline is NaN: not compared
    assert got["per-class figures drop"] == Check("per-class figures drop", "handled", 0.75, 0.0,
                                                  "drop <= 0.1000 for every class", False, "ap of dog: 0.7500 -> nan")
    assert got["max abs output difference"].passed is True
    got = checks(gate(max_output_diff=0.2, min_prediction_agreement=0.51), comparison(cand, base, t, diverging))
    assert not got["identical answers"].passed and not got["max abs output difference"].passed
    worse = stage(map=0.5, per_class={"cat": {"ap": 0.375}})
    got = checks(gate(), comparison(worse, stage(map=0.5, per_class={"cat": {"ap": 0.5}, "dog": {"ap": 0.25}})))
    assert got["per-class figures drop"].value == 0.25
    assert got["per-class figures drop"].detail == "ap of dog: 0.2500 -> None"
    got = checks(gate(), comparison(worse, stage(map=0.5, per_class={"cat": {"ap": 0.5}})))
    assert got["per-class figures drop"] == Check("per-class figures drop", "handled", 0.125, 0.0,
                                                  "drop <= 0.1000 for every class", False, "ap of cat: 0.5000 -> 0.375")
    edge = checks(gate(), comparison(stage(map=0.5, per_class={"cat": {"ap": 0.4}}),
                                     stage(map=0.5, per_class={"cat": {"ap": 0.5}})))
    assert edge["per-class figures drop"].passed
    up = checks(gate(), comparison(stage(map=0.5, per_class={"cat": {"ap": 0.9}}),
                                   stage(map=0.5, per_class={"cat": {"ap": 0.5}})))
    assert up["per-class figures drop"].value == 0.0 and up["per-class figures drop"].detail == "no class dropped"


def test_per_class_drops_past_an_undefined_figure_quoted_to_four_decimals():
    base = stage(map=0.5, per_class={"cat": {"ap": NAN, "f1": 0.5}})
    cand = stage(map=0.5, per_class={"cat": {"f1": 0.123456}})
    got = checks(gate(), comparison(cand, base), keys=("ap", "f1"))
    assert got["per-class figures drop"].detail == "f1 of cat: 0.5000 -> 0.1235"


def test_the_per_class_limit_is_the_tightest_max_drop():
    base = stage(map=0.5, f1_macro=0.5, per_class={"cat": {"ap": 0.5}})
    cand = stage(map=0.5, f1_macro=0.5, per_class={"cat": {"ap": 0.47}})
    limits = {"map": MetricThreshold(max_drop=0.05), "f1_macro": MetricThreshold(max_drop=0.02)}
    got = checks(gate(), comparison(cand, base), limits)
    assert got["per-class figures drop"].limit == "drop <= 0.0200 for every class"
    assert not got["per-class figures drop"].passed
    got = checks(gate(), comparison(cand, base), {"map": MetricThreshold(min=0.1)})
    assert got["per-class figures drop"].limit == "drop <= 0.0100 for every class"


def test_checks_not_evaluated_say_why():
    got = checks(gate(), None)
    limits = {"answers valid on their own": "no row", "identical answers": ">= 1.0000 of rows",
              "map drop": "drop <= 0.1000", "per-class figures drop": "drop <= 0.1000 for every class",
              "max abs output difference": "<= 1e-05 (box scores)"}
    for name, limit in limits.items():
        assert got[name] == Check(name, "handled", None, None, limit, False, "not evaluated: not run",
                                  evaluated=False), name
    assert got["max abs output difference"].limit == "<= 1e-05 (box scores)"
    assert got["identical answers"].limit == ">= 1.0000 of rows"
    only_base = NS(stages={"baseline": stage(map=0.5)}, tests={}, diverging=[])
    assert checks(gate(), only_base)["identical answers"].detail == "not evaluated: not run"
    only_cand = NS(stages={"handled": stage(map=0.5)}, tests={"handled": paired()}, diverging=[])
    assert checks(gate(), only_cand)["map drop"].detail == "not evaluated: not run"
    none = comparison(stage(map=0.5), stage(map=0.5), paired(output=OutputDiff(None, None, 0, "no row answered")))
    c = checks(gate(), none)["max abs output difference"]
    assert c == Check("max abs output difference", "handled", None, None, "<= 1e-05 (box scores)", False,
                      "not evaluated: no row answered", evaluated=False)
    only_base = NS(stages={"baseline": stage(map=0.5), "handled": None}, tests={"handled": paired()}, diverging=[])
    assert checks(gate(), only_base)["per-class figures drop"].detail == "not evaluated: not run"
    calls = []
    got = checks(gate(), comparison(stage(map=0.5), stage(map=0.5)),
                 extra=lambda t: calls.append(t) or [Check("x", "handled", 1, 1, "l", True)])
    assert "x" in got and len(calls) == 1
    assert "x" not in checks(gate(), None, extra=lambda t: [Check("x", "handled", 1, 1, "l", True)])


# --- the registry --------------------------------------------------------------------------------------


def test_registry_names_and_errors():
    assert registry.names() == ("classification", "multilabel", "regression", "detection", "segmentation")
    assert registry.task_for(None).name == "classification" and registry.task_for("").name == "classification"
    with pytest.raises(ConfigError) as e:
        registry.task_for("ranking")
    assert str(e.value) == ("model.task 'ranking' is not a task package-validate knows; choose one of "
                            "['classification', 'multilabel', 'regression', 'detection', 'segmentation']")
    assert registry.task_of(NS(model=NS(task="regression"))).name == "regression"
    assert registry.task_of(NS(model=NS(task=None))).name == "classification"
    assert registry.task_of(NS()).name == "classification"
    assert registry.task_of(NS(model=NS())).name == "classification"
    for report, name in (({"spec": {"model": {"task": "detection"}}}, "detection"), ({}, "classification"),
                         ([], "classification"), ({"spec": {"model": None}}, "classification"),
                         ({"spec": {"model": {"task": 3}}}, "classification"),
                         ({"spec": {"model": {"task": ""}}}, "classification"), ({"spec": []}, "classification")):
        assert registry.task_name_of_report(report) == name, report
    assert registry.task_of_report({"spec": {"model": {"task": "segmentation"}}}).name == "segmentation"


# --- stage outputs -------------------------------------------------------------------------------------


def test_stage_outputs_of_encoded_rows_and_of_answers():
    scores = NS(logits=np.array([[1.0], [np.nan], [2.0]], np.float32), latencies_ms=np.array([1.0, 2.0, 3.0]))
    s = T.encoded_outputs("exported", scores, lambda r: None if np.isnan(r[0]) else float(r[0]))
    assert s.name == "exported" and s.answers == (1.0, None, 2.0) and s.predictions.tolist() == [0, -1, 0]
    assert s.predictions.dtype == np.int64 and s.latencies_ms is scores.latencies_ms
    assert s.probabilities is None and s.logits is None

    def row(i, ok=True, extra=None, lat=5.0, pred=True):
        return NS(index=i, is_ok=ok, latency_ms=lat, prediction=NS(extra=extra) if pred else None)

    rows = (row(0, extra={"mask": "m0"}), row(1, ok=False, extra={"mask": "m1"}), row(2, extra={"boxes": "b"}),
            row(3, extra=None), row(4, pred=False), row(5, extra={"mask": "m5"}, lat=None),
            row(6, extra={"mask": None}))
    s = T.answered_outputs("handled", rows, "mask")
    assert s.name == "handled" and s.answers == ("m0", None, None, None, None, "m5", None)
    assert s.predictions.tolist() == [0, -1, -1, -1, -1, 0, -1] and s.predictions.dtype == np.int64
    assert s.latencies_ms[0] == 5.0 and np.isnan(s.latencies_ms[1:]).all()
    assert s.probabilities is None and s.logits is None
    assert T.answered_outputs("h", (), "mask").answers == ()


def test_task_decoder_applies_the_teams_function_first(tmp_path):
    from pipeline.tasks import values as V

    f = tmp_path / "dec.py"
    f.write_text("def read(doc):\n    return {'wrapped': doc}\n")
    spec = spec_for(2, answers={"decode": f"{f}:read"})
    dec = V.task_decoder("regression", lambda d: ("parsed", d), V.Carried("none", True, "values"), spec)
    assert dec.decode(b"[1]") == ("parsed", {"wrapped": b"[1]"}) and dec.name == "regression"
    assert dec._ref == "dec.py:read"
    from pipeline.errors import UserCodeError

    with pytest.raises(UserCodeError, match="^answers.decode: .* has no callable 'absent'. Fix answers.decode in"):
        V.task_decoder("regression", lambda d: d, V.Carried("none", True, "values"),
                       spec_for(2, answers={"decode": f"{f}:absent"}))
    plain = V.task_decoder("regression", lambda d: ("parsed", d), V.Carried("none", True, "values"), spec_for(2))
    assert plain.decode(b"[1]") == ("parsed", [1]) and plain._fn is None and plain._ref == ""


# --- each structured task's own checks -----------------------------------------------------------------


def test_detection_checks_add_box_coordinates_and_threshold_flips():
    from pipeline.tasks import detection as D

    figures = dict(map=0.5, map_50=0.5, precision_macro=0.5, recall_macro=0.5, f1_macro=0.5)
    t = paired(differences={"coordinate_px": 0.002, "threshold_flips": 2.0})
    cmp = comparison(stage(**figures), stage(**figures), t)
    got = D.TASK.stage_checks(task_gate("detection", max_output_diff=0.5), None, cmp, "handled", "baseline", (),
                              "not run")
    names = [c.name for c in got]
    assert names == ["answers valid on their own", "identical answers", "map drop", "map_50 drop",
                     "precision_macro drop", "recall_macro drop", "f1_macro drop", "per-class figures drop",
                     "max abs output difference", "max box coordinate difference", "threshold flips",
                     "no improvement beyond noise"]
    by = {c.name: c for c in got}
    assert by["max abs output difference"].limit == "<= 0.5 (box scores)"
    assert by["max box coordinate difference"] == Check("max box coordinate difference", "handled", 0.002, 0.0,
                                                        "<= 0.001 px", False,
                                                        "matched boxes, pixels of the image as sent")
    assert by["threshold flips"] == Check("threshold flips", "handled", 2.0, 0.0, "reported", True,
                                          "boxes whose score lies within 0.01 of 0.5 on one side only: not counted "
                                          "as missing", is_gating=False)
    t = paired(differences={"coordinate_px": 0.001})
    same = comparison(stage(**figures), stage(**figures), t)
    by = {c.name: c for c in D.TASK.stage_checks(task_gate("detection"), None, same, "handled", "baseline", (), "")}
    assert by["max box coordinate difference"].passed and by["threshold flips"].value == 0.0
    same = comparison(stage(**figures), stage(**figures))
    by = {c.name: c for c in D.TASK.stage_checks(task_gate("detection"), None, same, "handled", "baseline", (), "")}
    assert by["max box coordinate difference"].value == 0.0
    assert by["per-class figures drop"].limit == "drop <= 0.0100 for every class"
    got = D.TASK.stage_checks(task_gate("detection"), None, None, "handled", "baseline", (), "not run")
    assert "max box coordinate difference" not in {c.name for c in got} and len(got) == 10
    assert {c.detail for c in got} == {"not evaluated: not run"}
    for key in ("ap", "precision", "recall", "f1"):
        base = stage(per_class={"cat": {"ap": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5}}, **figures)
        cand = stage(per_class={"cat": {"ap": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5, key: 0.25}},
                     **figures)
        by = {c.name: c for c in D.TASK.stage_checks(task_gate("detection"), None, comparison(cand, base),
                                                     "handled", "baseline", (), "")}
        assert by["per-class figures drop"].detail == f"{key} of cat: 0.5000 -> 0.25", key


def test_segmentation_checks_add_pixel_agreement():
    from pipeline.tasks import segmentation as S

    figures = dict(miou=0.5, pixel_accuracy=0.5)
    per = {"cat": {"iou": 0.5, "support": 3}}
    t = paired(differences={"pixel_disagreement": 0.0125})
    cmp = comparison(stage(per_class=per, **figures), stage(per_class={"cat": {"iou": 0.75}}, **figures), t)
    got = S.TASK.stage_checks(task_gate("segmentation", max_output_diff=0.25), None, cmp, "handled", "baseline", (), "")
    by = {c.name: c for c in got}
    assert [c.name for c in got][-2:] == ["pixel class agreement", "no improvement beyond noise"] and len(got) == 8
    assert by["pixel class agreement"] == Check("pixel class agreement", "handled", 0.9875, 1.0,
                                                "every pixel, every row", False,
                                                "worst row: 1.2500% of its pixels of another class")
    assert by["max abs output difference"].limit == "<= 0.25 (top-class probabilities)"
    assert by["per-class figures drop"].detail == "iou of cat: 0.7500 -> 0.5"
    same = comparison(stage(**figures), stage(**figures))
    ok = {c.name: c for c in S.TASK.stage_checks(task_gate("segmentation"), None, same, "handled", "baseline", (), "")}
    assert ok["pixel class agreement"].passed and ok["pixel class agreement"].value == 1.0
    got = S.TASK.stage_checks(task_gate("segmentation"), None, None, "handled", "baseline", (), "not run")
    assert [c.detail for c in got] == ["not evaluated: not run"] * 7


@pytest.mark.parametrize("task, metric", [("detection", "map"), ("segmentation", "miou")])
def test_a_structured_candidate_better_than_the_baseline_beyond_noise_fails(task, metric):
    from pipeline.tasks.registry import task_for

    figures = (dict(map=0.5, map_50=0.5, precision_macro=0.5, recall_macro=0.5, f1_macro=0.5) if task == "detection"
               else dict(miou=0.5, pixel_accuracy=0.5))

    def check(lo, hi, **gate_kw):
        t = paired(deltas={metric: 0.02, "other": 1.0}, delta_cis={metric: (lo, hi), "other": (0.5, 1.5)},
                   resamples=400)
        got = task_for(task).stage_checks(task_gate(task, **gate_kw), None, comparison(stage(**figures),
                                          stage(**figures), t), "handled", "baseline", (), "")
        return {c.name: c for c in got}.get("no improvement beyond noise")

    better = check(0.01, 0.03)
    assert better.stage == "handled" and better.value == 0.02 and not better.passed
    assert better.limit == f"95% CI of the {metric} change includes 0 or worse"
    assert better.detail == ("metrics improved after packaging beyond noise: suspect the wrong data or model; "
                             f"delta {metric} +0.02, 95% CI [+0.01, +0.03], 400 resamples")
    assert check(0.0, 0.03).passed and check(-0.03, -0.01).passed  # within noise, or worse (the drops gate that)
    assert check(0.01, 0.03, flag_improvement=False) is None
    t = paired(resamples=3)  # no interval of the primary figure: shown, not evaluated
    got = task_for(task).stage_checks(task_gate(task), None, comparison(stage(**figures), stage(**figures), t),
                                      "handled", "baseline", (), "")
    none = {c.name: c for c in got}["no improvement beyond noise"]
    assert none.passed and not none.evaluated and none.detail == "no interval (3 resamples)"


# --- a structured comparison assembled --------------------------------------------------------------------


def _stage(name, answers, lat=1.0):
    preds = np.array([0 if a is not None else -1 for a in answers], np.int64)
    return T.TaskOutputs(name, preds, None, None, np.full(len(answers), lat), answers=tuple(answers))


def _compare(stages, ids=("r0", "r1", "r2"), validate=None):
    from pipeline.evaluate.compare import StageOutputs  # noqa: F401 (a plain stage has no answers)

    def row_compare(a, b, i):
        d = abs(a - b)
        return T.RowCompare(d == 0, {"d": d, "e": 2 * d}, f"differs by {d}", (a,), (b,), {"row": i})

    def value(a):
        return 0.0 if a is None else a

    return T.compare_structured(
        ids, stages, ("cat", "dog"), None, row_compare=row_compare,
        score=lambda answers, rows: {"f1_macro": float(np.mean([value(answers[i]) for i in rows])), "none": None},
        row_stats=lambda answers: [value(a) for a in answers],
        stats_of=lambda st, idx: {"f1_macro": float(np.mean([st[i] for i in idx])), "x": 1.0},
        per_class=lambda answers: {"cat": {"n": sum(a is not None for a in answers)}},
        output_quantity="the numbers", output_key="d", what="numbers", tolerance=0.0, validate=validate)


def test_a_structured_comparison_exactly():
    base = _stage("baseline", [1.0, 2.0, 3.0])
    exported = _stage("exported", [1.0, 2.5, None])
    handled = _stage("handled", [1.0, 2.0, 4.0])
    cmp = _compare([base, exported, handled], validate=lambda a, i: [f"big {a}"] if a > 2.9 else [])
    m = cmp.stages["exported"]
    assert (m.stage, m.rows, m.answered, m.figures) == ("exported", 3, 2, {"f1_macro": 3.5 / 3, "none": None})
    assert m.undefined["accuracy"] == "not a classification figure: this task answers numbers per row"
    assert cmp.steps["handled"].differences == {"d": 0.5, "e": 1.0}  # exported's unanswered row is not compared
    assert cmp.tests["exported"].delta_accuracy_ci[0] != cmp.tests["exported"].delta_accuracy_ci[0]
    assert m.per_class_figures == {"cat": {"n": 2}} and m.latency.count == 3
    assert cmp.stages["baseline"].invalid_answers == {"r2": ["big 3.0"]}
    assert cmp.stages["exported"].invalid_answers == {}
    t = cmp.tests["exported"]
    assert (t.candidate, t.reference, t.agreement, t.disagreeing) == ("exported", "baseline", pytest.approx(1 / 3), 2)
    assert t.differences == {"d": 0.5, "e": 1.0} and t.output == OutputDiff("the numbers", 0.5, 2, "")
    assert t.deltas == {"f1_macro": pytest.approx(3.5 / 3 - 2.0)} and t.delta_f1_macro == pytest.approx(3.5 / 3 - 2.0)
    rng = np.random.default_rng(0)
    ra, ca = np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.5, 0.0])
    changes = []
    for _ in range(400):
        idx = rng.integers(0, 3, size=3)
        changes.append(ca[idx].mean() - ra[idx].mean())
    expected = (float(np.percentile(changes, 2.5)), float(np.percentile(changes, 97.5)))
    assert t.delta_cis["f1_macro"] == pytest.approx(expected) and t.delta_cis["x"] == (0.0, 0.0)
    assert t.delta_f1_macro_ci == pytest.approx(expected) and t.resamples == 400
    assert math.isnan(t.mcnemar_p) and math.isnan(t.delta_accuracy) and t.reference_only_correct == 0
    h = cmp.tests["handled"]
    assert (h.agreement, h.disagreeing, h.differences) == (pytest.approx(2 / 3), 1, {"d": 1.0, "e": 2.0})
    s = cmp.steps["handled"]
    assert (s.reference, s.disagreeing, s.resamples, s.delta_cis) == ("exported", 2, 0, {})
    assert math.isnan(s.delta_f1_macro_ci[0])
    assert cmp.flipped_total == 2 and [f.id for f in cmp.flipped] == ["r1", "r2"]
    assert cmp.flipped[0].label == -1 and cmp.flipped[0].predictions == {n: (None, None) for n in
                                                                         ("baseline", "exported", "handled")}
    assert [(d.id, d.stage, d.reference, d.quantity, d.max_abs_diff) for d in cmp.diverging] == [
        ("r2", "handled", "baseline", "differs by 1.0", 2.0), ("r1", "exported", "baseline", "differs by 0.5", 1.0)]
    assert cmp.diverging[0].reference_values == (3.0,) and cmp.diverging[0].candidate_values == (4.0,)
    assert cmp.diverging[0].picture == {"row": 2}
    assert cmp.labels == ("cat", "dog") and cmp.served_server_latency is None
    assert list(cmp.tests) == ["exported", "handled"] and list(cmp.steps) == ["exported", "handled"]


def test_only_the_worst_rows_keep_their_pictures_and_unanswered_stages():
    n = 7
    ids = tuple(f"r{i}" for i in range(n))
    base = _stage("baseline", [0.0] * n)
    cand = _stage("handled", [float(n - i) for i in range(n)])
    cmp = _compare([base, cand], ids)
    assert [d.id for d in cmp.diverging] == ["r0", "r1", "r2", "r3", "r4", "r5", "r6"]
    assert cmp.tests["handled"].differences == {"d": 7.0, "e": 14.0}
    assert [d.picture is not None for d in cmp.diverging] == [True] * 4 + [False] * 3
    silent = _stage("handled", [None] * n)
    cmp = _compare([base, silent], ids)
    t = cmp.tests["handled"]
    assert t.output == OutputDiff(None, None, 0, "no row answered by both baseline and handled")
    assert (t.agreement, t.disagreeing, t.differences, cmp.diverging) == (0.0, 7, {}, ())
    assert cmp.flipped_total == 7 and len(cmp.flipped) == 7
    two = _compare([_stage("baseline", [1.0, 2.0]), _stage("handled", [1.0, 3.0])], ("r0", "r1"))
    assert two.tests["handled"].resamples == 400
    # the baseline's unanswered row, unanswered by the last candidate too: flipped by the first one only
    gone = _compare([_stage("baseline", [None, 1.0]), _stage("exported", [1.0, 1.0]), _stage("handled", [None, 1.0])],
                    ("r0", "r1"))
    assert gone.flipped_total == 1 and [f.id for f in gone.flipped] == ["r0"]
    both_none = _compare([_stage("baseline", [None, 1.0]), _stage("handled", [None, 1.0])], ("r0", "r1"))
    assert both_none.flipped_total == 0
    many = _compare([_stage("baseline", [0.0] * 102), _stage("handled", [1.0] * 102)], tuple(f"r{i}" for i in
                                                                                         range(102)))
    assert len(many.diverging) == 100 and many.flipped_total == 102 and len(many.flipped) == 50
    served = _stage("served", [1.0, 2.0, 4.0], lat=5.0)
    cmp = T.compare_structured(("r0", "r1", "r2"), [_stage("baseline", [1.0, 2.0, 3.0]), served], ("cat",),
                               np.array([1.0, 2.0, np.nan]), row_compare=lambda a, b, i: T.RowCompare(a == b, {}, ""),
                               score=lambda a, r: {}, row_stats=lambda a: a, stats_of=lambda st, idx: {},
                               per_class=lambda a: {}, output_quantity="q", output_key="d", what="w", tolerance=0.0)
    assert cmp.served_server_latency.count == 2 and cmp.served_overhead_latency.count == 2
    assert cmp.served_overhead_latency.p50 == pytest.approx(3.5)
    one = _compare([_stage("baseline", [1.0]), _stage("handled", [1.0])], ("r0",))
    assert one.tests["handled"].resamples == 0 and one.tests["handled"].agreement == 1.0
    assert one.flipped_total == 0 and one.tests["handled"].output.max_abs == 0.0
    from pipeline.evaluate.compare import StageOutputs

    plain = StageOutputs("handled", np.array([0, 0, 0]), None, None, None)
    cmp = _compare([_stage("baseline", [1.0, 2.0, 3.0]), plain])
    assert cmp.tests["handled"].disagreeing == 3 and cmp.stages["handled"].latency is None
