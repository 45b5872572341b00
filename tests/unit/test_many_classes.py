"""Many-class models: metrics over the classes present, shared label names (TorchServe's ImageNet map) compared
by name, and long class lists summarised in reports."""

import json
import math

import numpy as np
import pytest

from pipeline.answers.base import ClassMap
from pipeline.answers.classes import names_classes, read_label_map, shared_name_note
from pipeline.evaluate.compare import class_keys, compare_stages, name_classes, resolve_shared_names
from pipeline.report.builder import _metrics_block
from pipeline.report.markdown import render_markdown
from pipeline.report.schema import jsonable
from pipeline.report.text import shown_classes
from tests.unit._support import fast_bootstrap  # noqa: F401  (autouse)
from tests.unit._support import ids, outputs, spec_for

C = 1000
SHARED = {134: 517, 638: 639}  # ImageNet's 'crane' and 'maillot' pairs


def imagenet_style_names() -> tuple[str, ...]:
    names = [f"class{k:03d}" for k in range(C)]
    for a, b in SHARED.items():
        names[b] = names[a]
    return tuple(names)


def test_a_label_map_with_a_shared_name_is_read_and_warned_about(tmp_path):
    path = tmp_path / "index_to_name.json"
    names = imagenet_style_names()
    path.write_text(json.dumps({str(k): [f"n{k:08d}", n] for k, n in enumerate(names)}))
    labels = read_label_map(path, C)
    assert labels == names
    cmap = ClassMap(labels, path.name)
    assert cmap.index_of("class134") == 134 and cmap.candidates("class134") == (134, 517)
    assert cmap.candidates("class517") == () and cmap.candidates("class000") == (0,)
    assert cmap.shared_names() == {"class134": (134, 517), "class638": (638, 639)}
    note = shared_name_note(cmap)
    assert note.startswith("warning: index_to_name.json gives 2 name(s) to more than one class "
                           "('class134': classes [134, 517], 'class638': classes [638, 639])")
    assert shared_name_note(ClassMap(("a", "b"), "x")) is None


def test_formats_that_name_the_class_by_index_never_resolve_a_shared_name():
    assert not names_classes("logits") and not names_classes("package_validate") and not names_classes("index")
    assert names_classes("topk") and names_classes("label") and names_classes("mapping")


def test_an_answer_of_a_shared_name_matches_the_baseline_when_its_class_has_that_name():
    shared = {"crane": (1, 3)}
    base = np.array([3, 1, 0, 2])
    # rows 0 and 1 answered 'crane' (decoded as class 1, its first class); row 2 answered 'crane' too, the
    # baseline said class 0 (another name): it stays class 1, a real difference
    cand = outputs("served", [1, 1, 1, 2], c=4)
    decided, mask = resolve_shared_names(cand, base, shared)
    assert decided.predictions.tolist() == [3, 1, 1, 2] and mask.tolist() == [True, True, True, False]
    assert np.isnan(decided.probabilities[:3, [1, 3]]).all()  # one number for two classes: not compared
    assert decided.probabilities[3, 2] == 1.0 and cand.predictions.tolist() == [1, 1, 1, 2]  # input untouched
    same, none = resolve_shared_names(outputs("served", [0, 2, 0, 2], c=4), base, shared)
    assert not none.any() and same.predictions.tolist() == [0, 2, 0, 2]


def test_compare_decides_shared_names_only_for_stages_whose_answers_name_classes():
    y = np.array([3, 1, 0, 2])
    base = outputs("baseline", y, c=4)
    exported = outputs("exported", [1, 1, 0, 2], c=4)  # logits said class 1 where the baseline said 3: a real flip
    served = outputs("served", [1, 1, 0, 2], c=4)  # answered 'crane' for row 0
    cmp = compare_stages(ids(4), y, ("a", "crane", "c", "crane"), [base, exported, served],
                         shared_names={"crane": (1, 3)}, by_name=frozenset({"served"}))
    assert cmp.tests["served"].disagreeing == 0 and cmp.stages["served"].accuracy == 1.0
    assert cmp.tests["exported"].disagreeing == 1
    assert cmp.shared_name_rows == {"served": ("r0", "r1")}
    assert list(cmp.stages["served"].per_class) == ["a", "crane [1]", "c", "crane [3]"]  # no class hides another
    plain = compare_stages(ids(4), y, ("a", "crane", "c", "crane"), [base, served])
    assert plain.tests["served"].disagreeing == 1 and plain.shared_name_rows == {}


def test_class_keys_add_the_index_only_to_shared_names():
    assert class_keys(("a", "b", "a")) == ["a [0]", "b", "a [2]"]
    assert class_keys(("a", "b")) == ["a", "b"]


def test_name_classes_shows_ten_and_counts_the_rest():
    assert name_classes(["a", "b"]) == "['a', 'b']"
    long = name_classes([f"c{k}" for k in range(995)])
    assert long.startswith("['c0', 'c1',") and long.endswith("'c9', ... 985 more]") and "'c10'" not in long


def _report_of_1000_classes():
    labels = imagenet_style_names()
    y = np.repeat([3, 17, 134, 517, 999], 2)
    pred = y.copy()
    pred[0] = 5  # a prediction of a class without rows: shown in the per-class table
    cmp = compare_stages(ids(len(y)), y, labels, [outputs("baseline", y, c=C), outputs("served", pred, c=C)])
    return {"verdict": "FAIL", "model": "m", "complete": True, "metrics": _metrics_block(cmp)}


def test_report_json_keeps_the_confusion_of_the_classes_in_use_not_a_million_zeros():
    metrics = _report_of_1000_classes()["metrics"]
    served = metrics["served"]
    assert served["confusion_classes"] == [3, 5, 17, 134, 517, 999]
    assert served["confusion"][0] == [1, 1, 0, 0, 0, 0]  # row of class 3: one right, one called 5
    assert metrics["baseline"]["confusion"][1] == [0] * 6 and len(served["per_class"]) == C
    small = compare_stages(ids(3), np.array([0, 1, 2]), ("a", "b", "c"),
                           [outputs("baseline", [0, 1, 2]), outputs("served", [0, 1, 2])])
    assert "confusion_classes" not in _metrics_block(small)["served"]


def test_per_class_table_of_a_1000_class_model_shows_the_classes_with_rows_and_counts_the_rest():
    rep = _report_of_1000_classes()
    shown, hidden = shown_classes(rep["metrics"])
    assert shown == [3, 5, 17, 134, 517, 999] and hidden == 994
    md = render_markdown(rep)
    table = md[md.index("### Per class"):md.index("### Latency")]
    assert "| class134 [134] | 2 |" in table and "| class005 | 0 |" in table and "class006" not in table
    assert "... 994 more class(es) without rows and never predicted (all 1000 are in report.json)." in table
    assert ("Macro and weighted figures average over the 5 class(es) present among the eval labels, of the model's "
            "1000 (gate.metric_classes: present; predictions of other classes count as errors).") in md
    assert len(rep["metrics"]["served"]["per_class"]) == C  # the json keeps every class


def test_html_plots_of_a_1000_class_model_show_the_classes_with_rows(monkeypatch):
    from pipeline.report import html

    seen = []
    monkeypatch.setattr(html, "_png", lambda fig: seen.append([len(ax.get_xticks()) for ax in fig.axes]) or "data:,")
    page = html.render_html(_report_of_1000_classes())
    assert seen[:2] == [[6, 6], [6]]  # confusion matrices (two stages) and the F1 bars: 6 classes, not 1000
    assert "average over the 5 class(es) present" in page


def test_a_short_class_list_is_shown_whole():
    y = np.array([0, 0, 1])
    cmp = compare_stages(ids(3), y, ("a", "b", "c"), [outputs("baseline", y), outputs("served", y)])
    shown, hidden = shown_classes({n: jsonable(m) for n, m in cmp.stages.items()})
    assert shown == [0, 1, 2] and hidden == 0


def test_gate_metric_classes_is_present_or_all():
    assert spec_for(2).gate.metric_classes == "present"
    assert spec_for(2, gate={"metric_classes": "all"}).gate.metric_classes == "all"
    from pipeline.errors import ConfigError
    with pytest.raises((ConfigError, ValueError), match="metric_classes"):
        spec_for(2, gate={"metric_classes": "some"})


def test_dataset_notes_and_errors_of_1000_named_classes_name_ten():
    import pandas as pd

    from pipeline.errors import DatasetError
    from pipeline.inputs.base import labels_of

    spec = spec_for(C, model={"class_names": [f"c{k}" for k in range(C)]})
    labels, notes = labels_of(pd.Series(["c5", "c7"]), spec, spec.dataset.path, ("a", "b"))
    assert labels.tolist() == [5, 7]
    assert notes[-1].endswith("model.class_names ['c0', 'c1', 'c2', 'c3', 'c4', 'c5', 'c6', 'c7', 'c8', 'c9', "
                              "... 990 more]")
    with pytest.raises(DatasetError) as e:
        labels_of(pd.Series(["c5", "nope"]), spec, spec.dataset.path, ("a", "b"))
    assert "... 990 more]" in str(e.value) and "'c11'" not in str(e.value)


def test_a_positive_class_whose_name_another_class_shares_is_gated_not_a_crash():
    from pipeline.evaluate.gate import GateInputs, evaluate_gate
    from pipeline.spec import GateSpec, MetricThreshold
    from tests.unit._support import all_answered, gate_plan

    labels = ("a", "crane", "crane")
    y = np.array([0, 1, 2, 2])
    pred = np.array([0, 1, 2, 1])  # one row of class 2 called class 1
    cmp = compare_stages(ids(4), y, labels, [outputs("baseline", y), outputs("served", pred)])
    gate = GateSpec(positive_class=2, min_positive_recall=0.9, metrics={"accuracy": MetricThreshold(min=0.5)})
    res = evaluate_gate(gate, gate_plan(labels=labels), cmp, GateInputs(answered=all_answered("served")))
    recall = next(c for c in res.checks if c.name == "recall of positive class 'crane'" and c.stage == "served")
    assert recall.value == 0.5 and not recall.passed  # class 2's recall, not class 1's (1.0)


def test_console_states_the_classes_averaged_and_the_rows_compared_by_name():
    from pipeline.report.console import render_console

    rep = {**_report_of_1000_classes(), "exit_code": 1, "plan": {"shared_name_rows": {"served": ["r1", "r2"]}},
           "run_dir": None}
    text = render_console(rep)
    assert "macro over the 5 classes present among the 1000 (gate.metric_classes: present)" in text
    assert "served: 2 row(s) answered a name two classes share, compared by name" in text
    assert len(text) < 3000
