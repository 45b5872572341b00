"""Detection's verdict code with exact figures and messages on tiny inputs (the mutation tests' target)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pipeline.errors import DatasetError
from pipeline.tasks import detection as D

NAMES = {"background": 0, "red_box": 1, "green_disc": 2}


# ---------------------------------------------------------------------------------------- boxes alone


@pytest.mark.parametrize("box, size, why", [
    ([0, 0, 1, 1], (None, None), None),
    ([1, 2, 1, 5], (None, None), "box [1.0, 2.0, 1.0, 5.0] (xyxy) has no area: x2 must exceed x1 and y2 exceed y1"),
    ([1, 5, 3, 5], (None, None), "box [1.0, 5.0, 3.0, 5.0] (xyxy) has no area: x2 must exceed x1 and y2 exceed y1"),
    ([math.nan, 0, 1, 1], (None, None), "box [nan, 0.0, 1.0, 1.0] has a NaN or infinite coordinate"),
    ([0, 0, 1, math.inf], (None, None), "box [0.0, 0.0, 1.0, inf] has a NaN or infinite coordinate"),
    ([-0.0009, -0.0009, 10.0009, 8.0009], (10, 8), None),
    ([-0.002, 0, 5, 5], (10, 8), "box [-0.002, 0.0, 5.0, 5.0] (xyxy) lies outside its 10x8 image"),
    ([0, -0.002, 5, 5], (10, 8), "box [0.0, -0.002, 5.0, 5.0] (xyxy) lies outside its 10x8 image"),
    ([0, 0, 10.002, 5], (10, 8), "box [0.0, 0.0, 10.002, 5.0] (xyxy) lies outside its 10x8 image"),
    ([0, 0, 5, 8.002], (10, 8), "box [0.0, 0.0, 5.0, 8.002] (xyxy) lies outside its 10x8 image"),
    ([0, 0, 50, 50], (10, None), None),
    ([0, 0, 50, 50], (None, 8), None),
])
def test_box_problem_of_each_kind(box, size, why):
    assert D._box_problem(np.asarray(box, float), *size) == why


def test_answer_problems_listed_exactly_and_capped():
    b = D.Boxes.of([[0, 0, 5, 5]] * 3, [-1, 0, 3], [math.nan, 0.0, 1.0])
    assert D.check_answer(b, 3, (10, 10)) == ["label(s) [-1, 3] outside 0..2", "score(s) [nan] outside [0, 1]"]
    b = D.Boxes.of([[0, 0, 5, 5]] * 7, [0, 1, 2, 3, 4, 5, 6], [-0.5, 1.5, 0.0, 1.0, 0.5, 0.5, 0.5])
    assert D.check_answer(b, 1, None) == ["label(s) [1, 2, 3, 4, 5] outside 0..0",
                                          "score(s) [-0.5, 1.5] outside [0, 1]"]
    # at most 8 problems: the box problems stop there
    many = D.Boxes.of([[0, 0, 20, 5]] * 12, [0] * 12, [0.9] * 12)
    p = D.check_answer(many, 1, (10, 10))
    assert p == [f"box {n}: box [0.0, 0.0, 20.0, 5.0] (xyxy) lies outside its 10x10 image" for n in range(8)]
    assert D.check_answer(many, 1, None) == []
    assert D.check_answer(D.Boxes.of([[0, 0, 5, 5]] * 2, [0, 0], [0.9, 0.9]), 1, (5, 5)) == []
    two = D.Boxes.of([[0, 0, 20, 5]] * 7, [9] * 7, [0.9] * 7)
    assert len(D.check_answer(two, 1, (10, 10))) == 8  # the label problem and 7 boxes


def test_boxes_of_counts_and_empty():
    e = D.Boxes.empty()
    assert e.boxes.shape == (0, 4) and e.labels.dtype == np.int64 and e.scores.shape == (0,) and len(e) == 0
    b = D.Boxes.of([0, 0, 1, 1, 2, 2, 3, 3], [1, 2])
    assert b.boxes.tolist() == [[0, 0, 1, 1], [2, 2, 3, 3]] and b.scores.tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="^2 boxes, 1 labels and 2 scores: one each per box$"):
        D.Boxes.of([[0, 0, 1, 1]] * 2, [1], [0.5, 0.5])
    with pytest.raises(ValueError, match="^1 boxes, 1 labels and 2 scores"):
        D.Boxes.of([[0, 0, 1, 1]], [1], [0.5, 0.5])
    kept = D.Boxes.of([[0, 0, 1, 1]] * 3, [0, 1, 2], [0.49, 0.5, 0.9]).above(0.5)
    assert kept.labels.tolist() == [1, 2] and kept.scores.tolist() == [0.5, 0.9] and len(kept.boxes) == 2
    assert D.Boxes.of([[0.123456, 1, 2, 3]], [2], [0.25]).to_json() == [
        {"box": [0.1235, 1.0, 2.0, 3.0], "label": 2, "score": 0.25}]


# ---------------------------------------------------------------------------------------- labels


def _coco(tmp_path, doc) -> "object":
    p = tmp_path / "ann.json"
    p.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return p


def _problems(tmp_path, doc, num_classes=3, sizes=None) -> tuple[str, list[str]]:
    with pytest.raises(DatasetError) as e:
        D.load_coco(_coco(tmp_path, doc), num_classes, sizes=sizes)
    assert e.value.exit_code == 2
    return str(e.value).splitlines()[0], list(e.value.details)


IMG = {"id": 1, "file_name": "a.png", "width": 64, "height": 48}
CATS = [{"id": 1, "name": "red_box"}, {"id": 2, "name": "green_disc"}]


def test_coco_every_problem_listed_with_its_image_and_annotation(tmp_path):
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]},
            {"id": 2, "image_id": 5, "category_id": 1, "bbox": [1, 2, 3, 4]},
            "junk",
            {"id": 4, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3]},
            {"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, "4"]},
            {"id": 6, "image_id": 1, "category_id": True, "bbox": [1, 2, 3, 4]},
            {"id": 7, "image_id": 1, "category_id": 0, "bbox": [1, 2, 3, 4]},
            {"id": 8, "image_id": 1, "category_id": 3, "bbox": [1, 2, 3, 4]},
            {"id": 9, "image_id": 1, "category_id": -1, "bbox": [1, 2, 3, 4]},
            {"id": 10, "image_id": 1, "category_id": 2, "bbox": [60, 2, 5, 4]},
            {"id": 11, "image_id": 1, "category_id": "1", "bbox": [1, 2, 3, 4]}]
    head, details = _problems(tmp_path, {"images": [IMG, {"id": 2}, "x"], "annotations": anns, "categories": CATS})
    assert head.endswith("ann.json: 12 bad annotation(s). Fix the annotations file.")
    assert details == [
        "image entry \"{'id': 2}\": needs 'id' and 'file_name'",
        "image entry 'x': needs 'id' and 'file_name'",
        "annotation 2: image_id 5 is not among 'images'",
        "annotation None: image_id 'junk' is not among 'images'",
        "image 'a.png', annotation 4: bbox must be [x, y, width, height], got [1, 2, 3]",
        "image 'a.png', annotation 5: bbox must be [x, y, width, height], got [1, 2, 3, '4']",
        "image 'a.png', annotation 6: category_id True is not a class of the model (0..2, categories [1, 2])",
        "image 'a.png', annotation 7: category_id 0 is not a class of the model (0..2, categories [1, 2])",
        "image 'a.png', annotation 8: category_id 3 is not a class of the model (0..2, categories [1, 2])",
        "image 'a.png', annotation 9: category_id -1 is not a class of the model (0..2, categories [1, 2])",
        "image 'a.png', annotation 10: box [60.0, 2.0, 65.0, 6.0] (xyxy) lies outside its 64x48 image",
        "image 'a.png', annotation 11: category_id '1' is not a class of the model (0..2, categories [1, 2])"]


def test_coco_without_categories_any_class_of_the_model_and_boxes_kept(tmp_path):
    anns = [{"id": 1, "image_id": 1, "category_id": 0, "bbox": [1, 2, 3, 4]},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [0.5, 0, 63.5, 48]},
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1]}]
    images = [IMG, {"id": 2, "file_name": "b.png"}, {"id": 3, "file_name": "c.png", "width": 8, "height": 8}]
    boxes, cats = D.load_coco(_coco(tmp_path, {"images": images, "annotations": anns}), 3)
    assert cats == {}
    assert sorted(boxes) == ["a.png", "b.png", "c.png"]
    assert boxes["a.png"].boxes.tolist() == [[1, 2, 4, 6], [0.5, 0, 64, 48]]
    assert boxes["a.png"].labels.tolist() == [0, 2] and boxes["a.png"].scores.tolist() == [1.0, 1.0]
    assert boxes["b.png"].labels.tolist() == [1] and len(boxes["c.png"]) == 0
    head, details = _problems(tmp_path, {"images": [IMG], "annotations": [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 2, 3, 4]}]})
    assert details == ["image 'a.png', annotation 1: category_id 3 is not a class of the model (0..2)"]
    assert head.endswith(": 1 bad annotation(s). Fix the annotations file.")


def test_coco_category_names_default_to_their_id(tmp_path):
    doc = {"images": [IMG], "annotations": [], "categories": [{"id": 2}, {"name": "x"}, "y", {"id": "1", "name": 5}]}
    assert D.load_coco(_coco(tmp_path, doc), 3)[1] == {2: "2", 1: "5"}


def test_coco_unreadable_or_without_lists(tmp_path):
    with pytest.raises(DatasetError) as e:
        D.load_coco(_coco(tmp_path, "{not json"), 3)
    assert "ann.json: not a readable COCO annotations JSON (" in str(e.value)
    assert str(e.value).endswith("). Fix dataset.annotations.") and e.value.exit_code == 2
    with pytest.raises(DatasetError) as e:
        D.load_coco(tmp_path / "absent.json", 3)
    assert "absent.json: not a readable COCO annotations JSON" in str(e.value)
    for doc in ([], {"images": []}, {"annotations": []}, {"images": {}, "annotations": []},
                {"images": [], "annotations": {}}):
        with pytest.raises(DatasetError) as e:
            D.load_coco(_coco(tmp_path, doc), 3)
        assert str(e.value).endswith("ann.json: a COCO annotations document needs 'images' and 'annotations' lists.")


def test_coco_sizes_from_the_files(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}, {"id": 2, "file_name": "b.png"},
              {"id": 3, "file_name": "c.png", "width": 10, "height": 10}, {"id": 4, "file_name": "d.png"}]
    anns = [{"id": 1, "image_id": 2, "category_id": 1, "bbox": [0, 0, 30, 5]}]
    _, details = _problems(tmp_path, {"images": images, "annotations": anns},
                           sizes={"a.png": (64, 48), "b.png": (20, 20), "c.png": (10, 12)})
    assert details == ["image 'c.png': COCO says 10x10 but the file is 10x12",
                       "image 'd.png' (COCO id 4): no such row among the dataset's images",
                       "image 'b.png', annotation 1: box [0.0, 0.0, 30.0, 5.0] (xyxy) lies outside its 20x20 image"]
    boxes, _ = D.load_coco(_coco(tmp_path, {"images": images[:2], "annotations": anns}), 3,
                           sizes={"a.png": (64, 48), "b.png": (30, 20)})
    assert boxes["b.png"].boxes.tolist() == [[0, 0, 30, 5]]


def test_manifest_cell_problems_listed_by_box(tmp_path):
    cell = json.dumps([{"box": [1, 2, 3, 4], "label": "green_disc"}, {"box": [1, 2, 3], "label": 1}, 7,
                       {"box": [1, 2, 3, 4], "label": True}, {"box": [1, 2, 3, 4], "label": 3},
                       {"box": [1, 2, 3, 4], "label": -1}, {"box": [1, 2, 3, 4], "label": "cat"},
                       {"box": [3, 2, 1, 4], "label": 0}, {"box": [1, 2, 3, "4"], "label": 0},
                       {"box": [1, 2, 30, 4], "label": 2}])
    with pytest.raises(DatasetError) as e:
        D.boxes_from_cell(cell, "r7", NAMES, 3, (10, 10))
    assert str(e.value).splitlines()[0] == "row r7: 9 bad box(es). Fix the manifest's boxes column."
    known = "(0..2 or ['background', 'green_disc', 'red_box'])"
    assert list(e.value.details) == [
        "box 1: needs 'box': [x1, y1, x2, y2] numbers, got \"{'box': [1, 2, 3], 'label': 1}\"",
        "box 2: needs 'box': [x1, y1, x2, y2] numbers, got '7'",
        f"box 3: label True is not a class of the model {known}",
        f"box 4: label 3 is not a class of the model {known}",
        f"box 5: label -1 is not a class of the model {known}",
        f"box 6: label 'cat' is not a class of the model {known}",
        "box 7: box [3.0, 2.0, 1.0, 4.0] (xyxy) has no area: x2 must exceed x1 and y2 exceed y1",
        "box 8: needs 'box': [x1, y1, x2, y2] numbers, got \"{'box': [1, 2, 3, '4'], 'label': 0}\"",
        "box 9: box [1.0, 2.0, 30.0, 4.0] (xyxy) lies outside its 10x10 image"]
    assert e.value.exit_code == 2


def test_manifest_cell_forms():
    b = D.boxes_from_cell([{"box": [1, 2, 30, 4], "label": 0}, {"box": [0, 0, 1, 1], "label": "red_box"}], "r1",
                          NAMES, 3, None)
    assert b.boxes.tolist() == [[1, 2, 30, 4], [0, 0, 1, 1]] and b.labels.tolist() == [0, 1]
    assert len(D.boxes_from_cell("[]", "r1", NAMES, 3, (4, 4))) == 0
    with pytest.raises(DatasetError) as e:
        D.boxes_from_cell("[1", "r2", NAMES, 3, None)
    assert str(e.value).startswith("row r2: the boxes column is not JSON (") and str(e.value).endswith(").")
    with pytest.raises(DatasetError) as e:
        D.boxes_from_cell('{"box": 1}', "r3", NAMES, 3, None)
    assert str(e.value) == ('row r3: the boxes column must be a JSON list of {"box": [x1, y1, x2, y2], "label": ...}, '
                            "got \"{'box': 1}\"")


# ---------------------------------------------------------------------------------------- answers


def test_name_to_index_exact():
    assert D.name_to_index({"0": "bg", "1": ["n1", "n2", "box"], "2": 7}) == ({"bg": 0, "box": 1, "7": 2}, [])
    assert D.name_to_index({"0": "a", "1": "a", "2": "score"}) == ({"a": 0, "score": 2}, [
        "'a' names classes 0 and 1",
        "'score' names a class, but each box of the built-in's answer also carries its 'score' key: that class's "
        "boxes cannot be read"])


def test_builtin_answer_messages_exact():
    def why(ans) -> str:
        with pytest.raises(D.DetectionAnswerError) as e:
            D.decode_builtin(ans, NAMES)
        return str(e.value)

    assert why({"a": 1}) == "expected a list of {label: [x1, y1, x2, y2], 'score': s}, got dict \"{'a': 1}\""
    assert why([{"red_box": [1, 2, 3, 4], "score": 0.9}, 5]) == (
        "box 1: expected {label: [x1, y1, x2, y2], 'score': s}, got '5'")
    assert why([{"red_box": [1, 2, 3, 4], "x": [1, 2, 3, 4], "score": 0.9}]).startswith("box 0: expected {label")
    assert why([{"red_box": [1, 2, 3, 4], "x": 0.5}]).startswith("box 0: expected {label")
    assert why([{"red_box": [1, 2, 3, True], "score": 0.9}]) == (
        "box 0 ('red_box'): expected [x1, y1, x2, y2], got '[1, 2, 3, True]'")
    assert why([{"red_box": (1, 2, 3, 4), "score": 0.9}]) == (
        "box 0 ('red_box'): expected [x1, y1, x2, y2], got '(1, 2, 3, 4)'")
    assert why([{"red_box": [1, 2, 3, 4], "score": True}]) == "box 0 ('red_box'): score must be a number, got True"
    assert why([{"cat": [1, 2, 3, 4], "score": 0.9}]) == (
        "box 0: label 'cat' is not in index_to_name.json (['background', 'green_disc', 'red_box'])")
    assert why([{"1a": [1, 2, 3, 4], "score": 0.9}]).startswith("box 0: label '1a' is not in")
    b = D.decode_builtin([{"-3": [1, 2, 3, 4], "score": 1}, {"12": [1, 2, 3, 4], "score": 0}], NAMES)
    assert b.labels.tolist() == [-3, 12] and b.scores.tolist() == [1.0, 0.0]


def test_tensor_answer_messages_exact():
    def why(doc, **kw) -> str:
        with pytest.raises(D.DetectionAnswerError) as e:
            D.decode_tensors(doc, **kw)
        return str(e.value)

    # (a missing column is a DetectionAnswerError, a ValueError: it reaches the caller under the numbers' words)
    assert why({"boxes": [[0, 0, 1, 1]], "labels": [1]}).endswith(": the answer has no 'scores'")
    assert why({"outputs": [{"name": "boxes", "data": [0, 0, 1, 1]}], "scores": [1]}).endswith(
        ": the answer has no 'labels'")
    assert why([1, 2]).endswith(": the answer has no 'boxes'")
    assert why({"boxes": [[0, 0, 1, "x"]], "labels": [1], "scores": [0.5]}).startswith(
        "boxes, labels and scores must be numbers: ")
    assert why({"boxes": [0, 0, 1, 1, 2], "labels": [1], "scores": [0.5]}) == (
        "5 box coordinates, 1 labels, 1 scores: expected 4n, n, n")
    assert why({"boxes": [[0, 0, 1, 1]], "labels": [1], "scores": [0.5, 0.6]}) == (
        "4 box coordinates, 1 labels, 2 scores: expected 4n, n, n")
    assert why({"boxes": [[0, 0, 1, 1]] * 3, "labels": [1, 2.5, 0.5], "scores": [1, 1, 1]}) == (
        "labels must be integers, got [2.5, 0.5]")
    got = D.decode_tensors({"b": [[0, 0, 1, 1]], "l": [[2]], "s": [[0.25]], "outputs": "no"}, "b", "l", "s")
    assert (got.boxes.tolist(), got.labels.tolist(), got.scores.tolist()) == ([[0, 0, 1, 1]], [2], [0.25])
    assert got.labels.dtype == np.int64
    v2 = {"outputs": [7, {"name": "x"}, {"name": "boxes", "data": [1, 1, 2, 2]}, {"name": "labels", "data": [3]},
                      {"name": "scores", "data": [0.5]}], "boxes": [[9, 9, 9, 9]]}
    assert D.decode_tensors(v2).boxes.tolist() == [[1, 1, 2, 2]]
    seen = []
    D.decode_tensors({}, get=lambda d, k: seen.append(k) or ([0, 0, 1, 1] if k == "boxes" else [1]))
    assert seen == ["boxes", "labels", "scores"]


def test_model_output_read_from_arrays_and_refused_otherwise():
    b = D.model_output({"boxes": [[0, 0, 2, 2]], "labels": [1.0], "scores": [0.75], "extra": 1})
    assert (b.boxes.tolist(), b.labels.tolist(), b.scores.tolist()) == ([[0, 0, 2, 2]], [1], [0.75])
    for bad in ([1], {"boxes": [], "labels": []}):
        with pytest.raises(D.DetectionAnswerError) as e:
            D.model_output(bad)
        assert str(e.value) == ("the model must return torchvision's detection output: a list with one dict of "
                                f"'boxes', 'labels', 'scores' per image, got {type(bad).__name__}")


def test_encoded_rows_round_trip_best_first_and_unanswered():
    y = [{"boxes": [[0, 0, 1, 1], [1, 1, 3, 3]], "labels": [1, 2], "scores": [0.5, 0.9]},
         {"boxes": np.zeros((0, 4)), "labels": [], "scores": []}]
    enc = D.encode_outputs(y, 2)
    assert enc.shape == (2, 1 + 6 * D.MAX_ENCODED) and enc.dtype == np.float32
    assert enc[0, :13].tolist() == [2, 1, 1, 3, 3, 2, pytest.approx(0.9), 0, 0, 1, 1, 1, 0.5]
    assert not enc[0, 13:].any() and not enc[1].any()
    b = D.decode_encoded(enc[0])
    assert b.boxes.tolist() == [[1, 1, 3, 3], [0, 0, 1, 1]] and b.labels.tolist() == [2, 1]
    assert b.scores.tolist() == [pytest.approx(0.9), 0.5] and b.labels.dtype == np.int64
    assert len(D.decode_encoded(enc[1])) == 0
    assert D.decode_encoded(np.full(7, np.nan)) is None
    row = np.zeros(13)
    row[:7] = [1, 0, 0, 1, 1, 1.9999, 0.5]
    assert D.decode_encoded(row).labels.tolist() == [2]
    for bad, words in ((y[:1], "a list of 2 dict(s)"), ({"boxes": []}, "got dict")):
        with pytest.raises(D.DetectionAnswerError) as e:
            D.encode_outputs(bad, 2)
        assert words in str(e.value)
        assert str(e.value).startswith("the model must return torchvision's detection output (a list of 2 dict(s) "
                                       "of boxes, labels, scores), got ")
    many = [{"boxes": [[0, 0, 1, 1]] * 120, "labels": [1] * 120, "scores": np.linspace(0, 1, 120)}]
    enc = D.encode_outputs(tuple(many), 1)
    assert enc[0, 0] == 100 and enc[0, 6] == pytest.approx(1.0) and enc[0, 6 * 100] == pytest.approx(20 / 119)


# ---------------------------------------------------------------------------------------- sameness


def test_iou_exact_on_overlap_touching_and_degenerate_boxes():
    a = np.array([[0, 0, 2, 2], [0, 0, 1, 1], [5, 5, 5, 5]], float)
    b = np.array([[1, 1, 3, 4], [2, 0, 3, 1], [5, 5, 5, 5]], float)
    iou = D.iou_matrix(a, b)
    assert iou.shape == (3, 3)
    assert iou[0, 0] == pytest.approx(1 / 9)       # inter 1, areas 4 and 6
    assert iou[0, 1] == 0.0 and iou[1, 1] == 0.0   # touching or apart: no overlap
    assert iou[1, 0] == 0.0
    assert iou[2, 2] == 0.0                        # two points: no union
    assert D.iou_matrix(b, a)[0, 0] == pytest.approx(1 / 9)
    assert D.iou_matrix([[0, 0, 4, 1]], [[1, 0, 2, 1]])[0, 0] == pytest.approx(0.25)
    assert D.iou_matrix([[1, 0, 2, 1]], [[0, 0, 4, 1]])[0, 0] == pytest.approx(0.25)
    assert D.iou_matrix([[0, 1, 1, 2]], [[0, 0, 1, 4]])[0, 0] == pytest.approx(0.25)
    assert D.iou_matrix([[0, 0, 1, 4]], [[0, 1, 1, 2]])[0, 0] == pytest.approx(0.25)
    # a box inverted in x overlaps nothing: its area is clipped to 0, not negative
    assert D.iou_matrix([[2, 0, 0, 2]], [[0, 0, 2, 2]]).tolist() == [[0.0]]
    assert D.iou_matrix([[0, 2, 2, 0]], [[0, 0, 2, 2]]).tolist() == [[0.0]]
    assert D.iou_matrix(np.zeros((0, 4)), b).shape == (0, 3)
    assert D.iou_matrix(a, np.zeros((0, 4))).shape == (3, 0)


def test_matching_maximises_total_iou_and_keeps_the_limit_inclusive():
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 5]], float)
    b = np.array([[0, 0, 10, 6], [0, 0, 10, 10]], float)
    # greedy would pair a0 with b1 (1.0) and a1 with b0 (5/6); the assignment does the same here
    assert D.match_one_to_one(a, b, 0.5) == [(0, 1, 1.0), (1, 0, pytest.approx(5 / 6))]
    half = D.match_one_to_one([[0, 0, 2, 1]], [[0, 0, 1, 1]], 0.5)
    assert half == [(0, 0, 0.5)]
    assert D.match_one_to_one([[0, 0, 2, 1]], [[0, 0, 1, 1]], 0.5000001) == []
    assert D.match_one_to_one(np.zeros((0, 4)), b, 0.5) == []
    got = D.match_one_to_one(a, b, 0.9)
    assert got == [(0, 1, 1.0)] and isinstance(got[0][0], int) and isinstance(got[0][2], float)


def row(*boxes) -> D.Boxes:
    """Boxes from (x1, y1, x2, y2, label, score) tuples."""
    v = np.asarray(boxes, float).reshape(-1, 6)
    return D.Boxes.of(v[:, :4], v[:, 4].astype(np.int64), v[:, 5])


def test_compare_row_exact_differences():
    ref = row((0, 0, 10, 10, 1, 0.9), (20, 20, 30, 30, 2, 0.8), (40, 40, 50, 50, 1, 0.7))
    cand = row((0, 0, 10, 10.25, 2, 0.9), (20, 20.5, 30, 30, 2, 0.85), (60, 60, 70, 70, 1, 0.95))
    d = D.compare_row(ref, cand)
    assert d == D.RowDiff(3, 3, 2, 1, 0.5, pytest.approx(0.05), 1, 1, 0, pytest.approx(0.95), (
        "box [0.0, 0.0, 10.0, 10.0]: label 1 -> 2",
        "extra box [60.0, 60.0, 70.0, 70.0] label 1 score 0.9500",
        "missing box [40.0, 40.0, 50.0, 50.0] label 1 score 0.7000"))
    assert not d.is_same(D.Tolerances(coord_px=1, score=1))
    same = D.compare_row(ref, ref)
    assert same == D.RowDiff(3, 3, 3, 0, 0.0, 0.0, 0, 0, 0, 1.0, ())
    assert D.compare_row(D.Boxes.empty(), D.Boxes.empty()) == D.RowDiff(0, 0, 0, 0, 0.0, 0.0, 0, 0, 0, 1.0, ())


def test_compare_row_keeps_the_largest_difference_of_any_pair():
    ref = row((0, 0, 10, 10, 1, 0.9), (20, 20, 30, 30, 1, 0.6))
    first_big = row((0, 0, 10, 10.5, 1, 0.7), (20, 20, 30, 30.25, 1, 0.65))
    d = D.compare_row(ref, first_big)
    assert (d.max_coord_px, d.max_score) == (0.5, pytest.approx(0.2))
    last_big = row((0, 0, 10, 10.25, 1, 0.85), (20, 20, 30, 30.5, 1, 0.9))
    d = D.compare_row(ref, last_big)
    assert (d.max_coord_px, d.max_score) == (0.5, pytest.approx(0.3))
    assert d.min_iou == pytest.approx(100 / 105)


def test_is_same_each_tolerance_inclusive():
    base = dict(n_reference=1, n_candidate=1, matched=1, label_mismatches=0, max_coord_px=0.5, max_score=0.25,
                missing=0, extra=0, flips=3, min_iou=1.0)
    tol = D.Tolerances(score=0.25, coord_px=0.5)
    assert D.RowDiff(**base).is_same(tol)
    for k, v in (("missing", 1), ("extra", 1), ("label_mismatches", 1), ("max_coord_px", 0.51), ("max_score", 0.26)):
        assert not D.RowDiff(**{**base, k: v}).is_same(tol), k
    assert D.Tolerances() == D.Tolerances(1e-5, 1e-3, 0.5, 0.5, 0.01)


def test_threshold_flips_at_the_band_edges():
    tol = D.Tolerances(threshold=0.5, flip_band=0.1)
    kept = row((0, 0, 10, 10, 1, 0.55))
    # the reference has the box at exactly threshold - band: a flip; just below that: an extra box
    d = D.compare_row(row((0, 0, 10, 10, 1, 0.4)), kept, tol)
    assert (d.flips, d.extra) == (1, 0)
    assert d.details == ("box [0.0, 0.0, 10.0, 10.0]: threshold flip (candidate score 0.550000, reference just "
                         "under 0.5)",)
    assert D.compare_row(row((0, 0, 10, 10, 1, 0.39)), kept, tol).extra == 1
    # the candidate's score must lie within the band too
    d = D.compare_row(row((0, 0, 10, 10, 1, 0.45)), row((0, 0, 10, 10, 1, 0.6)), tol)
    assert (d.flips, d.extra) == (0, 1)
    assert D.compare_row(row((0, 0, 10, 10, 1, 0.45)), row((0, 0, 10, 10, 1, 0.5999)), tol).flips == 1
    # the low reference box must overlap: IoU 0.5 is enough, less is an extra box
    assert D.compare_row(row((0, 0, 20, 10, 1, 0.45)), kept, tol).flips == 1
    assert D.compare_row(row((0, 0, 21, 10, 1, 0.45)), kept, tol).extra == 1
    assert D.compare_row(row((0, 0, 10, 10, 1, 0.3)), kept, tol).extra == 1  # under the band


def test_a_reference_box_gone_from_the_candidate():
    tol = D.Tolerances(threshold=0.5, flip_band=0.1)
    ref = row((0, 0, 10, 10, 1, 0.59))
    # answered candidate (thresholded): near the threshold is a flip, at threshold + band it is missing
    d = D.compare_row(ref, D.Boxes.empty(), tol)
    assert (d.flips, d.missing) == (1, 0)
    assert d.details == ("box [0.0, 0.0, 10.0, 10.0]: threshold flip (reference score 0.590000)",)
    d = D.compare_row(row((0, 0, 10, 10, 2, 0.6)), D.Boxes.empty(), tol)
    assert (d.flips, d.missing) == (0, 1)
    assert d.details == ("missing box [0.0, 0.0, 10.0, 10.0] label 2 score 0.6000",)
    # raw candidate: a flip only when it has the box just under the threshold
    assert D.compare_row(ref, D.Boxes.empty(), tol, candidate_raw=True).missing == 1
    assert D.compare_row(ref, row((0, 0, 10, 10, 1, 0.4)), tol, candidate_raw=True).flips == 1
    assert D.compare_row(ref, row((0, 0, 10, 10, 1, 0.39)), tol, candidate_raw=True).missing == 1
    assert D.compare_row(ref, row((0, 0, 20, 10, 1, 0.45)), tol, candidate_raw=True).flips == 1
    assert D.compare_row(ref, row((0, 0, 21, 10, 1, 0.45)), tol, candidate_raw=True).missing == 1
    assert D.compare_row(row((0, 0, 10, 10, 1, 0.6)), row((0, 0, 10, 10, 1, 0.45)), tol,
                         candidate_raw=True).missing == 1
    # the answered candidate's box under the threshold is ignored (the built-in never answers it)
    d = D.compare_row(row((0, 0, 10, 10, 1, 0.9)), row((0, 0, 10, 10, 1, 0.9), (30, 30, 40, 40, 1, 0.45)), tol)
    assert (d.n_candidate, d.extra, d.flips, d.matched) == (1, 0, 0, 1)


def test_details_kept_to_ten():
    ref = row(*[(10 * i, 0, 10 * i + 5, 5, 1, 0.9) for i in range(12)])
    d = D.compare_row(ref, D.Boxes.empty())
    assert d.missing == 12 and len(d.details) == 10 and d.details[9].startswith("missing box [90.0, 0.0, 95.0")


def test_match_iou_tolerance_used():
    ref = row((0, 0, 10, 10, 1, 0.9))
    cand = row((0, 0, 10, 7, 1, 0.9))
    assert D.compare_row(ref, cand).matched == 1
    d = D.compare_row(ref, cand, D.Tolerances(match_iou=0.75))
    assert (d.matched, d.missing, d.extra, d.min_iou) == (0, 1, 1, 1.0)


# ---------------------------------------------------------------------------------------- counts


def test_counts_match_by_score_then_best_free_truth():
    truth = D.Boxes.of([[0, 0, 10, 10], [2, 0, 12, 10]], [1, 1])
    a = [0, 0, 10, 10]
    b = [3, 0, 13, 10]   # IoU 0.538 with truth 0? no: overlaps truth 1 best
    pred = D.Boxes.of([b, a], [1, 1], [0.6, 0.9])
    c = D.row_counts(pred, truth, 2)
    assert (c.tp.tolist(), c.fp.tolist(), c.fn.tolist()) == ([0, 2], [0, 0], [0, 0])
    # the higher score matches first and takes its best truth; the other then finds nothing at IoU 0.5
    truth = D.Boxes.of([[0, 0, 10, 10], [4, 0, 14, 10]], [1, 1])
    pred = D.Boxes.of([[5, 0, 15, 10], [3, 0, 13, 10]], [1, 1], [0.6, 0.9])
    c = D.row_counts(pred, truth, 2)
    assert (c.tp.tolist(), c.fp.tolist(), c.fn.tolist()) == ([0, 1], [0, 1], [0, 1])
    c = D.row_counts(D.Boxes.of([[5, 0, 15, 10], [3, 0, 13, 10]], [1, 1], [0.9, 0.6]), truth, 2)
    assert (c.tp.tolist(), c.fp.tolist(), c.fn.tolist()) == ([0, 2], [0, 0], [0, 0])


def test_counts_per_class_and_iou_limit_inclusive():
    truth = D.Boxes.of([[0, 0, 2, 1], [5, 5, 6, 6]], [0, 2])
    pred = D.Boxes.of([[0, 0, 1, 1], [5, 5, 6, 6], [7, 7, 8, 8]], [0, 1, 1], [0.9, 0.9, 0.8])
    c = D.row_counts(pred, truth, 3)
    assert (c.tp.tolist(), c.fp.tolist(), c.fn.tolist()) == ([1, 0, 0], [0, 2, 0], [0, 0, 1])
    c = D.row_counts(pred, truth, 3, iou=0.51)
    assert (c.tp.tolist(), c.fp.tolist(), c.fn.tolist()) == ([0, 0, 0], [1, 2, 0], [1, 0, 1])
    c = D.row_counts(D.Boxes.empty(), D.Boxes.empty(), 2)
    assert (c.tp.tolist(), c.fp.tolist(), c.fn.tolist()) == ([0, 0], [0, 0], [0, 0])
    assert c.tp.dtype == np.int64
    c = D.row_counts(D.Boxes.of([[0, 0, 1, 1]], [1], [0.9]), D.Boxes.empty(), 2)
    assert (c.tp.tolist(), c.fp.tolist(), c.fn.tolist()) == ([0, 0], [0, 1], [0, 0])


def test_prf_exact_with_undefined_classes():
    m = D.prf(np.array([0, 2, 0, 0]), np.array([0, 1, 0, 2]), np.array([0, 0, 3, 0]))
    p, r, f = m["precision"], m["recall"], m["f1"]
    assert np.isnan(p[0]) and p[1] == pytest.approx(2 / 3) and np.isnan(p[2]) and p[3] == 0.0
    assert np.isnan(r[0]) and r[1] == 1.0 and r[2] == 0.0 and np.isnan(r[3])
    assert np.isnan(f[0]) and f[1] == pytest.approx(0.8) and f[2] == 0.0 and f[3] == 0.0
    assert sorted(m) == ["f1", "precision", "recall"]
    assert D.prf([3], [1], [2])["f1"][0] == pytest.approx(6 / 9)
    assert D.prf([3], [1], [2])["recall"][0] == pytest.approx(3 / 5)
    assert D.prf([3], [1], [2])["precision"][0] == pytest.approx(3 / 4)


# ---------------------------------------------------------------------------------------- serving


def _spec(tmp_path=None, doc=None, handler="object_detector", batch=1, labels=("bg", "box")):
    from types import SimpleNamespace as NS

    files = ()
    if doc is not None:
        f = tmp_path / "sub" / D.LABEL_MAP
        f.parent.mkdir(exist_ok=True)
        f.write_text(doc if isinstance(doc, str) else json.dumps(doc))
        files = (str(tmp_path / "other.json"), str(f))
    return NS(handler=NS(extra_files=files, name=handler), class_labels=labels, serving=NS(batch_size=batch))


def test_label_names_from_the_archives_map_or_the_class_labels(tmp_path):
    assert D.enumerate_names(_spec()) == [("0", "bg"), ("1", "box")]
    assert D.enumerate_names(_spec(tmp_path, {"1": "red", "0": ["x", "bg"]})) == [("1", "red"), ("0", ["x", "bg"])]
    assert D.enumerate_names(_spec(tmp_path, "{broken")) == [("0", "bg"), ("1", "box")]
    assert D.enumerate_names(_spec(tmp_path, ["a", "b"])) == [("0", "bg"), ("1", "box")]
    missing = _spec(labels=("a",))
    missing.handler.extra_files = (str(tmp_path / "nowhere" / D.LABEL_MAP),)
    assert D.enumerate_names(missing) == [("0", "a")]


def test_serving_refused_before_any_stage(tmp_path):
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        D.check_serving(_spec(labels=("box", "box", "score")), ["r0"], [(4, 4)])
    assert str(e.value) == ("index_to_name.json: the answers name each box's class, and 'box' names classes 0 and 1; "
                            "'score' names a class, but each box of the built-in's answer also carries its 'score' "
                            "key: that class's boxes cannot be read. Give every class its own name.")
    assert e.value.exit_code == 2
    sizes = [(4, 4), (8, 6), None, (4, 4), (2, 2), (3, 3), (5, 5)]
    ids = [f"r{i}" for i in range(7)]
    with pytest.raises(ConfigError) as e:
        D.check_serving(_spec(batch=2), ids, sizes)
    assert str(e.value) == (
        "serving.batch_size is 2 but the images have 5 sizes (2x2 (e.g. r4), 3x3 (e.g. r5), 4x4 (e.g. r0), "
        "5x5 (e.g. r6)): the built-in object_detector preprocesses with ToTensor only and stacks a batch's images "
        "(torch.stack in VisionHandler.preprocess), so every batch mixing sizes fails. Serve at batch_size 1, give "
        "every image one size, or use a handler that batches images of several sizes.")
    assert D.check_serving(_spec(batch=1), ids, sizes) is None
    with pytest.raises(ConfigError, match="but the images have 2 sizes"):
        D.check_serving(_spec(batch=2), ids[:2], sizes[:2])
    assert D.check_serving(_spec(batch=2, handler="mine.py"), ids, sizes) is None
    assert D.check_serving(_spec(batch=2), ids[:4], [(4, 4), None, (4, 4), None]) is None


# ---------------------------------------------------------------------------------------- the quoted bits


LONG = "x" * 100


def test_long_values_quoted_to_their_first_80_characters():
    def answer_why(ans) -> str:
        with pytest.raises(D.DetectionAnswerError) as e:
            D.decode_builtin(ans, NAMES)
        return str(e.value)

    assert answer_why(LONG) == f"expected a list of {{label: [x1, y1, x2, y2], 'score': s}}, got str {'x' * 80!r}"
    assert answer_why([LONG]) == f"box 0: expected {{label: [x1, y1, x2, y2], 'score': s}}, got {'x' * 80!r}"
    assert answer_why([{"red_box": LONG, "score": 1}]) == (
        f"box 0 ('red_box'): expected [x1, y1, x2, y2], got {'x' * 80!r}")
    many = {f"n{i:02d}": i for i in range(14)}
    with pytest.raises(D.DetectionAnswerError) as e:
        D.decode_builtin([{"cat": [1, 2, 3, 4], "score": 0.5}], many)
    assert str(e.value) == f"box 0: label 'cat' is not in index_to_name.json ({sorted(many)[:12]})"
    with pytest.raises(D.DetectionAnswerError) as e:
        D.decode_builtin([{"X1": [1, 2, 3, 4], "score": 0.5}], NAMES)
    assert str(e.value).startswith("box 0: label 'X1' is not in")
    with pytest.raises(DatasetError) as e:
        D.boxes_from_cell(f'"{LONG}"', "r1", NAMES, 3, None)
    assert str(e.value).endswith(f"got {'x' * 80!r}")
    with pytest.raises(DatasetError) as e:
        D.boxes_from_cell([LONG] * 21 + [{"box": [1, 2, 3, 4], "label": "cat"}], "r1", many, 3, None)
    assert str(e.value).splitlines()[0] == "row r1: 22 bad box(es). Fix the manifest's boxes column."
    assert list(e.value.details) == [f"box {n}: needs 'box': [x1, y1, x2, y2] numbers, got {'x' * 80!r}"
                                     for n in range(20)]
    with pytest.raises(DatasetError) as e:
        D.boxes_from_cell([{"box": [1, 2, 3, 4], "label": "cat"}], "r1", many, 3, None)
    assert list(e.value.details) == [f"box 0: label 'cat' is not a class of the model (0..2 or {sorted(many)[:12]})"]


def test_first_five_bad_values_named():
    with pytest.raises(D.DetectionAnswerError) as e:
        D.decode_tensors({"boxes": [[0, 0, 1, 1]] * 7, "labels": [0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5],
                          "scores": [1] * 7})
    assert str(e.value) == "labels must be integers, got [0.5, 1.5, 2.5, 3.5, 4.5]"
    b = D.Boxes.of([[0, 0, 1, 1]] * 7, [0] * 7, [2, 3, 4, 5, 6, 7, 0.5])
    assert D.check_answer(b, 1, None) == ["score(s) [2.0, 3.0, 4.0, 5.0, 6.0] outside [0, 1]"]
    assert D.check_answer(D.Boxes.of([[0, 0, 1, 1]] * 2, [0, 0], [0.0, 1.0]), 1, None) == []


def test_model_output_reads_tensors_through_detach():
    class Tensor:  # what torch.Tensor offers: detach().cpu().double().numpy()
        def __init__(self, v):
            self.v = v

        def detach(self):
            return self

        def cpu(self):
            return self

        def double(self):
            return self

        def numpy(self):
            return np.asarray(self.v, np.float64)

    b = D.model_output({"boxes": Tensor([[0, 0, 2, 2]]), "labels": Tensor([1]), "scores": Tensor([0.5])})
    assert (b.boxes.tolist(), b.labels.tolist(), b.scores.tolist()) == ([[0, 0, 2, 2]], [1], [0.5])


def test_counts_with_no_truth_at_iou_zero_and_prf_of_one_hit():
    c = D.row_counts(D.Boxes.of([[0, 0, 1, 1]], [1], [0.9]), D.Boxes.empty(), 2, iou=0.0)
    assert (c.tp.tolist(), c.fp.tolist(), c.fn.tolist()) == ([0, 0], [0, 1], [0, 0])
    m = D.prf([1], [0], [0])
    assert (m["precision"][0], m["recall"][0], m["f1"][0]) == (1.0, 1.0, 1.0)


def test_an_encoded_row_is_answered_by_its_count_alone():
    row = np.zeros(7)
    row[1] = np.nan  # padding after a count of 0 is never read
    assert len(D.decode_encoded(row)) == 0


# ---------------------------------------------------------------------------------------- more edges


def test_box_edges_exactly_at_the_tolerance_are_inside():
    assert D._box_problem(np.array([-0.001, -0.001, 10.001, 8.001]), 10, 8) is None


def test_iou_of_boxes_under_a_pixel():
    tiny = [[0, 0, 0.5, 0.5]]
    assert D.iou_matrix(tiny, tiny).tolist() == [[1.0]]
    assert D.iou_matrix(tiny, [[0, 0, 0.5, 0.25]])[0, 0] == pytest.approx(0.5)
    assert D.iou_matrix([[0, 0, 0.25, 0.5]], tiny)[0, 0] == pytest.approx(0.5)


def test_coco_images_and_problems_each_listed(tmp_path):
    images = [{"file_name": "nameless.png"}, {"id": 4, "file_name": "d.png"},
              {"id": 3, "file_name": "c.png", "width": 10, "height": 10}, {"id": 9, "file_name": "x" * 100}]
    anns = [{"id": i, "image_id": 3, "category_id": 1, "bbox": [0, 0, 20, 1]} for i in range(25)]
    _, details = _problems(tmp_path, {"images": images, "annotations": anns},
                           sizes={"c.png": (10, 12), "x" * 100: (5, 5)})
    assert details[:3] == ["image entry \"{'file_name': 'nameless.png'}\": needs 'id' and 'file_name'",
                           "image 'd.png' (COCO id 4): no such row among the dataset's images",
                           "image 'c.png': COCO says 10x10 but the file is 10x12"]
    assert len(details) == 20
    head, _ = _problems(tmp_path, {"images": images, "annotations": anns}, sizes={"c.png": (10, 12)})
    assert head.endswith(": 29 bad annotation(s). Fix the annotations file.")
    long = {"id": 1, "name": "y" * 100}
    _, details = _problems(tmp_path, {"images": [long], "annotations": []})
    assert details == [f"image entry {str(long)[:80]!r}: needs 'id' and 'file_name'"]


def test_compare_row_counts_every_box_and_quotes_coordinates_to_two_decimals():
    tol = D.Tolerances(threshold=0.5, flip_band=0.1)
    ref = row((0, 0, 10, 10, 1, 0.9), (20, 20, 30, 30, 1, 0.9), (40.125, 40, 50, 50, 1, 0.9),
              (60.125, 60, 70, 70, 1, 0.9), (80, 80, 90, 90, 1, 0.55), (100, 100, 110, 110, 1, 0.55))
    cand = row((0, 0, 10, 10, 2, 0.9), (20, 20, 30, 30, 2, 0.9), (200.125, 0, 210, 10, 1, 0.9),
               (220, 0, 230, 10, 1, 0.9))
    d = D.compare_row(ref, cand, tol)
    assert (d.label_mismatches, d.missing, d.extra, d.flips) == (2, 2, 2, 2)
    assert d.details == ("box [0.0, 0.0, 10.0, 10.0]: label 1 -> 2", "box [20.0, 20.0, 30.0, 30.0]: label 1 -> 2",
                         "extra box [200.12, 0.0, 210.0, 10.0] label 1 score 0.9000",
                         "extra box [220.0, 0.0, 230.0, 10.0] label 1 score 0.9000",
                         "missing box [40.12, 40.0, 50.0, 50.0] label 1 score 0.9000",
                         "missing box [60.12, 60.0, 70.0, 70.0] label 1 score 0.9000",
                         "box [80.0, 80.0, 90.0, 90.0]: threshold flip (reference score 0.550000)",
                         "box [100.0, 100.0, 110.0, 110.0]: threshold flip (reference score 0.550000)")
    low = row((0.125, 0, 10, 10, 1, 0.45), (20, 20, 30, 30, 1, 0.45))
    d = D.compare_row(low, row((0.125, 0, 10, 10, 1, 0.55), (20, 20, 30, 30, 1, 0.55)), tol)
    assert d.flips == 2 and d.details[0].startswith("box [0.12, 0.0, 10.0, 10.0]: threshold flip (candidate")
    d = D.compare_row(row((0.125, 0, 10, 10, 1, 0.9)), D.Boxes.empty(), tol)
    assert d.details == ("missing box [0.12, 0.0, 10.0, 10.0] label 1 score 0.9000",)
    d = D.compare_row(row((0.125, 0, 10, 10, 1, 0.55)), D.Boxes.empty(), tol)
    assert d.details == ("box [0.12, 0.0, 10.0, 10.0]: threshold flip (reference score 0.550000)",)
    d = D.compare_row(row((0.125, 0, 10, 10, 1, 0.9)), row((0.125, 0, 10, 10, 2, 0.9)), tol)
    assert d.details == ("box [0.12, 0.0, 10.0, 10.0]: label 1 -> 2",)


def test_a_box_at_the_threshold_is_kept_not_just_under_it():
    tol = D.Tolerances(threshold=0.5, flip_band=0.1)
    # two candidate boxes on one reference box kept at exactly the threshold: the second is extra, not a flip
    d = D.compare_row(row((0, 0, 10, 10, 1, 0.5)), row((0, 0, 10, 10, 1, 0.5), (0, 0, 10, 9.9, 1, 0.5)), tol)
    assert (d.matched, d.extra, d.flips) == (1, 1, 0)
    d = D.compare_row(row((0, 0, 10, 10, 1, 0.5), (0, 0, 10, 9.9, 1, 0.5)), row((0, 0, 10, 10, 1, 0.5)), tol,
                      candidate_raw=True)
    assert (d.matched, d.missing, d.flips) == (1, 1, 0)


def test_only_the_unmatched_box_is_looked_for_under_the_threshold():
    tol = D.Tolerances(threshold=0.5, flip_band=0.1)
    ref = row((0, 0, 10, 10, 1, 0.9), (0, 0, 10, 10, 1, 0.45))
    d = D.compare_row(ref, row((50, 50, 60, 60, 1, 0.55), (0, 0, 10, 10, 1, 0.9)), tol)
    assert (d.matched, d.extra, d.flips) == (1, 1, 0)
    cand = row((0, 0, 10, 10, 1, 0.9), (0, 0, 10, 10, 1, 0.45))
    d = D.compare_row(row((50, 50, 60, 60, 1, 0.55), (0, 0, 10, 10, 1, 0.9)), cand, tol, candidate_raw=True)
    assert (d.matched, d.missing, d.flips) == (1, 1, 0)


def test_prf_of_nothing_is_nan_without_a_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = D.prf(np.zeros(2, np.int64), np.zeros(2, np.int64), np.zeros(2, np.int64))
    assert all(np.isnan(v).all() for v in m.values())


def test_tensor_columns_of_words_or_nested_rows():
    for doc in ({"boxes": [[0, 0, 1, 1]], "labels": ["a"], "scores": [1]},
                {"boxes": [[0, 0, 1, 1]], "labels": [1], "scores": ["high"]}):
        with pytest.raises(D.DetectionAnswerError, match="^boxes, labels and scores must be numbers: "):
            D.decode_tensors(doc)
    b = D.decode_tensors({"boxes": [[0, 0, 1, 1], [1, 1, 2, 2]], "labels": [[1, 2]], "scores": [[0.5, 0.25]]})
    assert (b.labels.tolist(), b.scores.tolist()) == ([1, 2], [0.5, 0.25])

