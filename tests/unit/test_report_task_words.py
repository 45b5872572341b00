"""The report speaks of each task's own things: "What ran" names the label set in the task's words (classes, box
labels, pixel classes, targets, labels), a task's answers are not said to carry classes, the attribution counts
rows whose answer differs, and the probe table shows a probe that passed with a warning as WARN."""

import pytest

from pipeline.report import html, markdown

PLAN = {"handler": {"display": "h"}, "reference": {"name": "r", "description": "d"},
        "answers": {"format": "f", "chosen_by": "c", "envelope": "none", "carries": "x", "required_classes": 3,
                    "required_words": "w"},
        "class_labels": ["a", "b", "c"], "class_map_source": "model.class_names", "stages": ["baseline"], "notes": []}


def _rep(task: str, **more) -> dict:
    return {"spec": {"model": {"task": task}}, "plan": PLAN, **more}


@pytest.mark.parametrize("task, word", [("classification", "classes"), ("detection", "box labels"),
                                        ("segmentation", "pixel classes"), ("regression", "targets"),
                                        ("multilabel", "labels")])
def test_what_ran_names_the_label_set_in_the_tasks_words(task, word):
    lines = markdown._plan(_rep(task))
    assert f"- {word}: 3 from model.class_names ['a', 'b', 'c']" in lines
    answers = next(x for x in lines if x.startswith("- answers:"))
    assert ("each must carry 3 class(es) (w)" in answers) == (task == "classification"), answers
    page = html.render_html(_rep(task), None)
    assert f"<td>{word}</td><td>3 from model.class_names: a, b, c</td>" in page
    assert ("each must carry" in page) == (task == "classification")


def test_the_attribution_counts_rows_whose_answer_differs_for_a_task_and_another_prediction_for_classes():
    attribution = {"summary": "s", "steps": [{"stage": "served", "reference": "handled", "differs": True,
                                              "disagreeing": 2, "max_output_diff": 0.5, "quantity": "box scores",
                                              "layer": "handler"}]}
    assert "rows whose answer differs" in markdown._attribution(_rep("detection", attribution=attribution))[4]
    assert "rows with another prediction" in markdown._attribution(_rep("classification", attribution=attribution))[4]
    assert "rows whose answer differs" in html.render_html(_rep("segmentation", attribution=attribution), None)


def test_a_probe_passed_with_a_warning_shows_as_warn_with_its_message():
    p = {"probe": "EXIF-rotated JPEG (orientation 6)", "expect": "same", "outcome": "stored frame", "passed": True,
         "message": "ignores EXIF", "warning": "ignores EXIF"}
    ok = {**p, "probe": "RGBA PNG", "outcome": "same", "message": "", "warning": ""}
    rows = markdown._probes(_rep("detection", probes={"handled": [p, ok], "served": []}))
    assert "| EXIF-rotated JPEG (orientation 6) | same | stored frame (WARN): ignores EXIF | - |" in rows
    assert "| RGBA PNG | same | same | - |" in rows
    page = html.render_html(_rep("detection", probes={"handled": [p], "served": []}), None)
    assert "<span class='warn'>stored frame</span> ignores EXIF" in page and "Stored frame = " in page
