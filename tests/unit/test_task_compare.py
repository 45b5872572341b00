"""Detection and segmentation on the seam, without a server: stage outputs, comparison, checks, pictures."""

from __future__ import annotations

import numpy as np

from pipeline.evaluate.attribution import attribute
from pipeline.report import html
from pipeline.tasks import detection as D
from pipeline.tasks import segmentation as S
from pipeline.tasks.base import CompareContext
from pipeline.tasks.structured import TaskOutputs

NAMES = ("background", "red_box", "green_disc")


def _det_stage(name, answers):
    return TaskOutputs(name, np.array([0 if a is not None else -1 for a in answers]), None, None,
                       np.ones(len(answers)), answers=tuple(answers))


def _det_rows():
    truths = [D.Truth(D.Boxes.of([[0, 0, 10, 10]], [1]), (32, 32)),
              D.Truth(D.Boxes.of([[10, 10, 30, 30]], [2]), (32, 32))]
    labels = np.empty(2, object)
    labels[:] = truths
    good = [D.Boxes.of([[0, 0, 10, 10], [20, 0, 25, 4]], [1, 2], [0.9, 0.2]),
            D.Boxes.of([[10, 10, 30, 30]], [2], [0.8])]
    return labels, good


def test_detection_comparison_blames_the_first_stage_that_moves():
    labels, good = _det_rows()
    shifted = [D.Boxes.of(b.boxes + 3, b.labels, b.scores) for b in good]
    stages = [_det_stage("baseline", good), _det_stage("exported", good), _det_stage("handled", shifted)]
    cmp = D.TASK.compare(("a", "b"), labels, stages, None, CompareContext(NAMES, 1e-5))
    assert cmp.stages["exported"].get("map") == cmp.stages["baseline"].get("map") == 1.0
    assert cmp.stages["handled"].get("map") < 1.0
    assert cmp.tests["exported"].disagreeing == 0 and cmp.tests["handled"].disagreeing == 2
    assert cmp.steps["handled"].reference == "exported"
    a = attribute(cmp, 1e-5)
    assert [s.stage for s in a.steps if s.differs] == ["handled"]
    assert cmp.diverging[0].picture["kind"] == "boxes" and cmp.diverging[0].picture["candidate"]
    # the low-score box is under the threshold: never drawn, never compared
    assert all(b[5] >= 0.5 for d in cmp.diverging for b in d.picture["reference"])


def test_detection_answers_checked_alone_in_the_comparison():
    labels, good = _det_rows()
    outside = [D.Boxes.of([[0, 0, 40, 10]], [1], [0.9]), good[1]]
    stages = [_det_stage("baseline", good), _det_stage("handled", outside)]
    cmp = D.TASK.compare(("a", "b"), labels, stages, None, CompareContext(NAMES, 1e-5))
    assert list(cmp.stages["handled"].invalid_answers) == ["a"]
    assert "outside its 32x32 image" in cmp.stages["handled"].invalid_answers["a"][0]
    assert cmp.stages["baseline"].invalid_answers == {}


def test_unanswered_rows_differ():
    labels, good = _det_rows()
    stages = [_det_stage("baseline", good), _det_stage("served", [good[0], None])]
    cmp = D.TASK.compare(("a", "b"), labels, stages, None, CompareContext(NAMES, 1e-5))
    assert cmp.tests["served"].disagreeing == 1 and cmp.stages["served"].answered == 1


def test_encoded_detections_round_trip():
    import torch

    out = [{"boxes": torch.tensor([[1.0, 2.0, 3.0, 4.0]]), "labels": torch.tensor([2]), "scores": torch.tensor([0.7])},
           {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0)}]
    rows = D.encode_outputs(out, 2)
    a, b = D.decode_encoded(rows[0]), D.decode_encoded(rows[1])
    assert a.boxes.tolist() == [[1, 2, 3, 4]] and a.labels.tolist() == [2]
    assert abs(a.scores[0] - 0.7) < 1e-6 and len(b) == 0


def test_segmentation_comparison_and_mask_pictures():
    t = np.zeros((8, 8), np.int16)
    t[2:6, 2:6] = 1
    labels = np.empty(1, object)
    labels[:] = [S.Truth(t, (8, 8))]
    good = S.Mask(t.copy(), np.full((8, 8), 0.9, np.float32))
    bad_cls = t.copy()
    bad_cls[2, 2] = 0
    bad = S.Mask(bad_cls, good.probabilities)
    stages = [_det_stage("baseline", [good]), _det_stage("handled", [bad])]
    cmp = S.TASK.compare(("a",), labels, stages, None, CompareContext(NAMES, 1e-5))
    assert cmp.stages["baseline"].get("miou") == 1.0 and cmp.stages["handled"].get("miou") < 1.0
    assert cmp.tests["handled"].differences["pixels_differing"] == 1.0
    pic = cmp.diverging[0].picture
    assert pic["kind"] == "mask" and np.asarray(pic["candidate"]).shape == (8, 8)
    report = {"diverging_rows": [{"id": "a", "stage": "handled", "reference": "baseline", "picture": pic}]}
    assert html._row_pictures(report).startswith("data:image/png;base64,")
    assert html._row_pictures({"diverging_rows": []}) is None


def test_a_task_report_keeps_its_latency_plots():
    import pandas as pd

    # a task's sections come first, with their tables: the per-row frame must survive them
    rep = {"spec": {"model": {"task": "detection"}}, "diverging_rows": [],
           "metrics": {"baseline": {"figures": {"map": 1.0}, "answered": 2, "rows": 2}}}
    rows = pd.DataFrame({"id": ["a", "b"], "baseline_latency_ms": [1.0, 2.0], "handled_latency_ms": [3.0, 4.0]})
    page = html.render_html(rep, rows)
    assert "Metrics, stage by stage" in page and "<img alt='Latency distributions'" in page
