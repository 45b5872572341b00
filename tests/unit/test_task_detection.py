"""Detection task, pure functions: labels, the built-in's answers, per-row sameness, metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.errors import DatasetError
from pipeline.tasks import detection as D

NAMES = {"background": 0, "red_box": 1, "green_disc": 2}


def _coco(tmp_path, anns, images=None, cats=None):
    doc = {"images": images or [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}],
           "annotations": anns, "categories": cats or [{"id": 1, "name": "red_box"}, {"id": 2, "name": "green_disc"}]}
    p = tmp_path / "ann.json"
    p.write_text(json.dumps(doc))
    return p


def test_coco_boxes_become_xyxy(tmp_path):
    p = _coco(tmp_path, [{"id": 7, "image_id": 1, "category_id": 2, "bbox": [10, 5, 20, 30]}])
    boxes, cats = D.load_coco(p, 3)
    assert boxes["a.png"].boxes.tolist() == [[10, 5, 30, 35]]
    assert boxes["a.png"].labels.tolist() == [2]
    assert cats == {1: "red_box", 2: "green_disc"}


def test_coco_image_without_annotations_has_no_boxes(tmp_path):
    boxes, _ = D.load_coco(_coco(tmp_path, []), 3)
    assert len(boxes["a.png"]) == 0


@pytest.mark.parametrize("ann, words", [
    ({"id": 7, "image_id": 1, "category_id": 1, "bbox": [50, 5, 20, 10]}, ["'a.png'", "annotation 7", "outside",
                                                                          "64x48"]),
    ({"id": 8, "image_id": 1, "category_id": 5, "bbox": [1, 1, 2, 2]}, ["annotation 8", "category_id 5"]),
    ({"id": 9, "image_id": 1, "category_id": 1, "bbox": [1, 1, 0, 2]}, ["annotation 9", "no area"]),
    ({"id": 10, "image_id": 3, "category_id": 1, "bbox": [1, 1, 2, 2]}, ["annotation 10", "image_id 3"]),
    ({"id": 11, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2]}, ["annotation 11", "[x, y, width, height]"]),
])
def test_bad_coco_annotations_name_the_row(tmp_path, ann, words):
    with pytest.raises(DatasetError) as e:
        D.load_coco(_coco(tmp_path, [ann]), 3)
    assert e.value.exit_code == 2
    for w in words:
        assert w in str(e.value)


def test_coco_size_checked_against_the_image_file(tmp_path):
    p = _coco(tmp_path, [])
    with pytest.raises(DatasetError, match="COCO says 64x48 but the file is 64x64"):
        D.load_coco(p, 3, sizes={"a.png": (64, 64)})
    with pytest.raises(DatasetError, match="no such row"):
        D.load_coco(p, 3, sizes={"b.png": (64, 48)})


def test_coco_box_checked_against_the_real_size(tmp_path):
    p = _coco(tmp_path, [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 40, 10, 20]}],
              images=[{"id": 1, "file_name": "a.png"}])
    assert len(D.load_coco(p, 3)[0]["a.png"]) == 1  # no size known: not checked
    with pytest.raises(DatasetError, match="outside its 64x48 image"):
        D.load_coco(p, 3, sizes={"a.png": (64, 48)})


def test_manifest_cell_names_and_indices():
    b = D.boxes_from_cell('[{"box": [1, 2, 3, 4], "label": "green_disc"}, {"box": [0, 0, 5, 5], "label": 1}]',
                          "r1", NAMES, 3, (10, 10))
    assert b.labels.tolist() == [2, 1]
    assert b.boxes.tolist() == [[1, 2, 3, 4], [0, 0, 5, 5]]


@pytest.mark.parametrize("cell, words", [
    ('[{"box": [1, 2, 3, 4], "label": "cat"}]', ["row r9", "'cat'"]),
    ('[{"box": [1, 2, 30, 4], "label": 1}]', ["row r9", "outside its 10x10 image"]),
    ('{"box": [1, 2, 3, 4]}', ["row r9", "JSON list"]),
    ("not json", ["row r9", "not JSON"]),
])
def test_bad_manifest_cell_names_the_row(cell, words):
    with pytest.raises(DatasetError) as e:
        D.boxes_from_cell(cell, "r9", NAMES, 3, (10, 10))
    for w in words:
        assert w in str(e.value)


def test_duplicate_names_and_a_class_named_score_are_problems():
    idx, problems = D.name_to_index({"0": "bg", "1": "box", "2": "box", "3": ["n3", "score"]})
    assert idx["box"] == 1
    assert any("'box' names classes 1 and 2" in p for p in problems)
    assert any("'score'" in p for p in problems)
    assert D.name_to_index({"0": "bg", "1": "box"})[1] == []


def test_builtin_answer_decoded():
    ans = [{"red_box": [1.0, 2.0, 3.0, 4.0], "score": 0.9}, {"2": [5, 6, 7, 8], "score": 0.6}]
    b = D.decode_builtin(ans, NAMES)
    assert b.labels.tolist() == [1, 2]
    assert b.boxes.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert b.scores.tolist() == [0.9, 0.6]
    assert len(D.decode_builtin([], NAMES)) == 0


@pytest.mark.parametrize("ans, words", [
    ({"red_box": [1, 2, 3, 4]}, "list of"),
    ([{"red_box": [1, 2, 3, 4]}], "box 0"),
    ([{"red_box": [1, 2, 3], "score": 0.9}], "[x1, y1, x2, y2]"),
    ([{"cat": [1, 2, 3, 4], "score": 0.9}], "'cat' is not in index_to_name.json"),
    ([{"red_box": [1, 2, 3, 4], "score": "high"}], "score must be a number"),
])
def test_bad_builtin_answers(ans, words):
    with pytest.raises(D.DetectionAnswerError, match=words.replace("[", r"\[").replace("]", r"\]")):
        D.decode_builtin(ans, NAMES)


def test_tensor_columns_from_kserve_v2_and_a_dict():
    v2 = {"outputs": [{"name": "boxes", "data": [0, 0, 2, 2, 1, 1, 3, 3]}, {"name": "labels", "data": [1, 2]},
                      {"name": "scores", "data": [0.7, 0.8]}]}
    b = D.decode_tensors(v2)
    assert b.boxes.tolist() == [[0, 0, 2, 2], [1, 1, 3, 3]] and b.labels.tolist() == [1, 2]
    assert D.decode_tensors({"boxes": [[0, 0, 1, 1]], "labels": [1], "scores": [0.5]}).scores.tolist() == [0.5]
    with pytest.raises(D.DetectionAnswerError, match="4n, n, n"):
        D.decode_tensors({"boxes": [[0, 0, 1, 1]], "labels": [1, 2], "scores": [0.5]})
    with pytest.raises(D.DetectionAnswerError, match="integers"):
        D.decode_tensors({"boxes": [[0, 0, 1, 1]], "labels": [1.5], "scores": [0.5]})


def test_answer_checked_alone():
    good = D.Boxes.of([[0, 0, 10, 10]], [1], [0.9])
    assert D.check_answer(good, 3, (10, 10)) == []
    bad = D.Boxes.of([[0, 0, 12, 10], [3, 3, 2, 5]], [3, 1], [1.2, 0.6])
    problems = " | ".join(D.check_answer(bad, 3, (10, 10)))
    assert "label(s) [3] outside 0..2" in problems
    assert "outside [0, 1]" in problems
    assert "outside its 10x10 image" in problems
    assert "no area" in problems


def test_iou_and_matching():
    a = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float)
    b = np.array([[21, 20, 31, 30], [0, 0, 10, 5]], float)
    iou = D.iou_matrix(a, b)
    assert iou[0, 1] == pytest.approx(0.5)
    assert iou[1, 0] == pytest.approx(90 / 110)
    assert D.match_one_to_one(a, b, 0.5) == [(0, 1, pytest.approx(0.5)), (1, 0, pytest.approx(90 / 110))]
    assert D.match_one_to_one(a, b, 0.6) == [(1, 0, pytest.approx(90 / 110))]
    assert D.match_one_to_one(a, np.zeros((0, 4)), 0.5) == []


REF = D.Boxes.of([[0, 0, 10, 10], [20, 20, 40, 40], [5, 30, 15, 45]], [1, 2, 1], [0.95, 0.8, 0.3])


def test_identical_rows_are_the_same():
    d = D.compare_row(REF, REF, candidate_raw=True)
    assert d.is_same(D.Tolerances()) and d.matched == 2 and d.flips == 0
    # the low box is under the threshold on both sides: not compared, as the built-in never answers it
    assert d.n_reference == 2


def test_order_does_not_matter():
    cand = D.Boxes.of(REF.boxes[::-1], REF.labels[::-1], REF.scores[::-1])
    assert D.compare_row(REF, cand, candidate_raw=True).is_same(D.Tolerances())


def test_coordinates_scores_and_labels_each_have_their_tolerance():
    tol = D.Tolerances()
    moved = D.Boxes.of(REF.boxes + [[0, 0, 0.01, 0]], REF.labels, REF.scores)
    d = D.compare_row(REF, moved)
    assert d.max_coord_px == pytest.approx(0.01) and not d.is_same(tol)
    assert d.is_same(D.Tolerances(coord_px=0.02))
    scored = D.Boxes.of(REF.boxes, REF.labels, REF.scores + [2e-5, 0, 0])
    d = D.compare_row(REF, scored)
    assert d.max_score == pytest.approx(2e-5) and not d.is_same(tol)
    relabelled = D.Boxes.of(REF.boxes, [2, 2, 1], REF.scores)
    d = D.compare_row(REF, relabelled)
    assert d.label_mismatches == 1 and d.missing == 0 and not d.is_same(tol)
    assert "label 1 -> 2" in d.details[0]


def test_missing_and_extra_boxes():
    only_first = D.Boxes.of(REF.boxes[:1], REF.labels[:1], REF.scores[:1])
    d = D.compare_row(REF, only_first)
    assert (d.missing, d.extra, d.flips) == (1, 0, 0)
    extra = D.Boxes.of(np.vstack([REF.boxes, [[50, 0, 60, 10]]]), [1, 2, 1, 1], [0.95, 0.8, 0.3, 0.9])
    d = D.compare_row(REF, extra)
    assert (d.missing, d.extra) == (0, 1) and not d.is_same(D.Tolerances())


def test_threshold_flip_is_not_a_missing_box():
    near = D.Boxes.of([[0, 0, 10, 10]], [1], [0.5004])
    under = D.Boxes.of([[0, 0, 10, 10]], [1], [0.4998])
    # raw on both sides: kept by the reference, just under it in the candidate
    d = D.compare_row(near, under, candidate_raw=True)
    assert (d.flips, d.missing, d.extra) == (1, 0, 0) and d.is_same(D.Tolerances())
    # the other way round: the candidate keeps a box the reference has just under
    d = D.compare_row(under, near, candidate_raw=True)
    assert (d.flips, d.missing, d.extra) == (1, 0, 0)
    # answered (thresholded) candidate: the box is gone, its reference score was near the threshold
    d = D.compare_row(near, D.Boxes.empty())
    assert (d.flips, d.missing) == (1, 0)
    # far from the threshold it is missing
    d = D.compare_row(D.Boxes.of([[0, 0, 10, 10]], [1], [0.7]), D.Boxes.empty())
    assert (d.flips, d.missing) == (0, 1)
    # outside the band it is missing too
    d = D.compare_row(D.Boxes.of([[0, 0, 10, 10]], [1], [0.52]), D.Boxes.empty())
    assert d.missing == 1


def test_xywh_answered_as_xyxy_is_caught():
    # boxes away from the origin: read as xyxy, x2 < x1 or a shifted box
    ref = D.Boxes.of([[20, 20, 40, 50]], [1], [0.9])
    xywh = D.Boxes.of([[20, 20, 20, 30]], [1], [0.9])
    d = D.compare_row(ref, xywh)
    assert d.missing == 1 and d.extra == 1
    assert any("no area" in p for p in D.check_answer(xywh, 3, (64, 64)))


def test_boxes_of_a_resized_image_not_scaled_back_are_caught():
    ref = D.Boxes.of([[20, 20, 40, 50], [4, 4, 12, 12]], [1, 2], [0.9, 0.8])
    halved = D.Boxes.of(ref.boxes / 2, ref.labels, ref.scores)
    d = D.compare_row(ref, halved)
    assert not d.is_same(D.Tolerances()) and d.missing + d.label_mismatches + int(d.max_coord_px > 1) > 0


def test_per_class_counts_at_iou_half():
    truth = D.Boxes.of([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 2])
    pred = D.Boxes.of([[0, 0, 10, 9], [0, 0, 10, 10], [50, 50, 60, 60]], [1, 1, 2], [0.9, 0.8, 0.7])
    c = D.row_counts(pred, truth, 3)
    assert c.tp.tolist() == [0, 1, 0]
    assert c.fp.tolist() == [0, 1, 1]   # the duplicate of class 1 and the stray class 2
    assert c.fn.tolist() == [0, 0, 1]
    m = D.prf(c.tp, c.fp, c.fn)
    assert m["precision"][1] == pytest.approx(0.5) and m["recall"][1] == pytest.approx(1.0)
    assert m["f1"][1] == pytest.approx(2 / 3) and m["recall"][2] == 0 and np.isnan(m["precision"][0])


def test_map_from_torchmetrics():
    truth = [D.Boxes.of([[0, 0, 10, 10]], [1])]
    perfect = D.mean_average_precision([D.Boxes.of([[0, 0, 10, 10]], [1], [0.9])], truth)
    assert perfect["map"] == pytest.approx(1.0) and perfect["map_50"] == pytest.approx(1.0)
    # IoU 0.6: a hit at IoU thresholds 0.50 and 0.55 only, so 2 of the 10 thresholds
    off = D.mean_average_precision([D.Boxes.of([[0, 0, 10, 6]], [1], [0.9])], truth)
    assert off["map_50"] == pytest.approx(1.0)
    assert off["map"] == pytest.approx(0.2, abs=1e-6)
    assert off["ap_per_class"] == {1: pytest.approx(0.2, abs=1e-6)}
