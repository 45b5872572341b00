"""Segmentation's verdict code with exact figures and messages on tiny inputs (the mutation tests' target)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import DatasetError
from pipeline.tasks import segmentation as S


def test_resized_size_exact():
    assert S.resized_size(10, 10, 4) == (4, 4)
    assert S.resized_size(10, 15, 4) == (4, 6)
    assert S.resized_size(15, 10, 4) == (6, 4)
    assert S.resized_size(3, 10, 4) == (4, 13)   # int() truncates 13.33


def test_mask_geometry_on_a_tiny_grid():
    mask = np.arange(8, dtype=np.uint8).reshape(2, 4)      # 4 wide, 2 high
    got = S.mask_in_handler_frame(mask, resize=4, crop=4)  # -> 8x4 NEAREST, crop 4 wide from the middle
    assert got.tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [5, 5, 6, 6], [5, 5, 6, 6]]
    assert got.dtype == np.uint8
    tall = np.arange(8, dtype=np.int16).reshape(4, 2)
    got = S.mask_in_handler_frame(tall, resize=4, crop=4)
    assert got.tolist() == [[2, 2, 3, 3], [2, 2, 3, 3], [4, 4, 5, 5], [4, 4, 5, 5]]
    assert got.dtype == np.int16
    # smaller than the crop: padded with class 0, the odd pixel after (torchvision's CenterCrop)
    small = np.full((2, 2), 7, np.uint8)
    got = S.mask_in_handler_frame(small, resize=2, crop=5)
    assert got.shape == (5, 5)
    assert got.tolist() == [[0] * 5, [0, 7, 7, 0, 0], [0, 7, 7, 0, 0], [0] * 5, [0] * 5]
    got = S.mask_in_handler_frame(np.full((2, 3), 7, np.uint8), resize=2, crop=4)
    assert got.tolist() == [[0, 0, 0, 0], [7, 7, 7, 0], [7, 7, 7, 0], [0, 0, 0, 0]]
    wide = np.full((2, 6), 3, np.uint8)
    got = S.mask_in_handler_frame(wide, resize=2, crop=4)   # 6x2 -> pad rows to 4, crop columns 1..4
    assert got.tolist() == [[0, 0, 0, 0], [3, 3, 3, 3], [3, 3, 3, 3], [0, 0, 0, 0]]
    odd = np.arange(10, dtype=np.uint8).reshape(2, 5)
    assert S.mask_in_handler_frame(odd, resize=2, crop=2).tolist() == [[2, 3], [7, 8]]  # round(1.5) == 2
    odd = np.arange(14, dtype=np.uint8).reshape(7, 2)
    assert S.mask_in_handler_frame(odd, resize=2, crop=2).tolist() == [[4, 5], [6, 7]]  # round(2.5) == 2


def _png(tmp_path, arr, name="m.png", mode=None):
    p = tmp_path / name
    (Image.fromarray(arr, mode=mode) if mode else Image.fromarray(arr)).save(p)
    return p


def test_mask_read_messages_exact(tmp_path):
    arr = np.array([[0, 1, 2], [3, 0, 9]], np.uint8)
    p = _png(tmp_path, arr)
    with pytest.raises(DatasetError) as e:
        S.read_mask(p, "r4", 3, (3, 2))
    assert str(e.value) == (f"row r4: mask {p} has pixel value(s) [3, 9] that are no class of the model (0..2). "
                            "Fix the mask or model.num_classes.")
    assert e.value.exit_code == 2
    got = S.read_mask(p, "r4", 10, (3, 2))
    assert got.tolist() == arr.tolist() and got.dtype == np.int16
    with pytest.raises(DatasetError) as e:
        S.read_mask(p, "r5", 10, (2, 3))
    assert str(e.value) == (f"row r5: mask {p} is 3x2 but its image is 2x3. A mask has its image's size, one class "
                            "per pixel.")
    assert S.read_mask(p, "r5", 10, None).shape == (2, 3)
    rgb = _png(tmp_path, np.zeros((2, 2, 3), np.uint8), "rgb.png")
    with pytest.raises(DatasetError) as e:
        S.read_mask(rgb, "r6", 3, None)
    assert str(e.value) == (f"row r6: mask {rgb} is a RGB image; a mask is one channel whose pixel values are class "
                            "indices (PNG mode L or P). Save it as Image.fromarray(classes.astype('uint8')).")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(DatasetError) as e:
        S.read_mask(broken, "r7", 3, None)
    assert str(e.value).startswith(f"row r7: mask {broken} cannot be read (")
    assert str(e.value).endswith("). Fix the mask column or the file.")
    binary = _png(tmp_path, np.array([[True, False]]), "b.png", None)
    assert S.read_mask(binary, "r8", 2, None).tolist() == [[1, 0]]
    wide = _png(tmp_path, np.array([[300, 2]], np.uint16), "w.png")
    with pytest.raises(DatasetError, match=r"pixel value\(s\) \[300\]"):
        S.read_mask(wide, "r9", 3, None)
    assert S.read_mask(wide, "r9", 301, None).tolist() == [[300, 2]]


def _answer(cls, probs):
    return np.stack([np.asarray(cls, float), np.asarray(probs, float)], axis=2).tolist()


def test_builtin_answer_messages_exact():
    def why(ans, **kw) -> str:
        with pytest.raises(S.SegmentationAnswerError) as e:
            S.decode_builtin(ans, **kw)
        return str(e.value)

    assert why([[1, 2], [3, 4]]) == "expected an H x W x 2 grid of [class, probability], got shape [2, 2]"
    assert why([[[1, 0.5, 2]]]) == "expected an H x W x 2 grid of [class, probability], got shape [1, 1, 3]"
    assert why([[0.5, 1], [0.5]]).startswith("expected an H x W x 2 grid of [class, probability] numbers: ")
    assert why(_answer([[0.5, 1]], [[0.9, 0.9]])) == (
        "classes must be integers (the built-in sends them as floats like 2.0)")
    assert why(_answer([[math.nan, 1]], [[0.9, 0.9]])).startswith("classes must be integers")
    assert why(list(range(8)), crop=3).startswith("expected an H x W x 2 grid")
    flat = S.decode_builtin([1, 0.5, 2, 0.25, 0, 1, 1, 0.75], crop=2)
    assert flat.classes.tolist() == [[1, 2], [0, 1]] and flat.probabilities.tolist() == [[0.5, 0.25], [1, 0.75]]
    assert flat.classes.dtype == np.int16 and flat.probabilities.dtype == np.float32
    assert flat.probabilities.flags["C_CONTIGUOUS"]


def test_mapping_and_custom_answers_exact():
    get = lambda d, k: d[k]  # noqa: E731
    with pytest.raises(S.SegmentationAnswerError) as e:
        S.decode_mapping({"m": [0, 1]}, "m", None, get)
    assert str(e.value) == "m must be an H x W grid, got shape [2]"
    with pytest.raises(S.SegmentationAnswerError) as e:
        S.decode_mapping({"m": [[]]}, "m", None, get)
    assert str(e.value) == "m must be an H x W grid, got shape [1, 0]"
    with pytest.raises(S.SegmentationAnswerError) as e:
        S.decode_mapping({"m": [[0, 1.5]]}, "m", None, get)
    assert str(e.value) == "m: classes must be integers"
    with pytest.raises(S.SegmentationAnswerError) as e:
        S.decode_mapping({"m": [[0, 1]], "p": [[0.5], [0.5]]}, "m", "p", get)
    assert str(e.value) == "p: shape [2, 1] differs from the classes' [1, 2]"
    m = S.decode_mapping({"m": [[0, 2]], "p": [[0.5, 0.25]]}, "m", "p", get)
    assert m.classes.tolist() == [[0, 2]] and m.classes.dtype == np.int16
    assert m.probabilities.tolist() == [[0.5, 0.25]] and m.probabilities.dtype == np.float32
    assert S.decode_mapping({"m": [[1]], "p": [[0.5]]}, "m", "", get).probabilities is None
    c = S.decode_custom({"classes": [[1, 0]], "probabilities": [[0.75, 1]]})
    assert c.classes.tolist() == [[1, 0]] and c.probabilities.tolist() == [[0.75, 1.0]]
    assert S.decode_custom({"classes": [[1, 0]], "probabilities": None}).probabilities is None
    for bad in ([[0, 1]], {"probabilities": [[1]]}):
        with pytest.raises(S.SegmentationAnswerError) as e:
            S.decode_custom(bad)
        assert str(e.value) == ("answers.decode must return {'classes': H x W, 'probabilities': H x W}, got "
                                f"{type(bad).__name__}")


def test_answer_checked_alone_exact():
    m = S.Mask(np.array([[0, -1, 4, 5]], np.int16), np.array([[0.5, 1.0, 1.5, math.nan]], np.float32))
    assert S.check_answer(m, 4, (2, 2)) == [
        "the answer is 4x1 pixels; 2x2 expected", "class(es) [-1, 4, 5] outside 0..3",
        "2 probabilit(ies) outside [0, 1], e.g. [1.5, nan]"]
    assert S.check_answer(S.Mask(np.zeros((1, 2), np.int16)), 1, (1, 2)) == []
    assert S.check_answer(S.Mask(np.zeros((2, 1), np.int16)), 1, (1, 2)) == ["the answer is 1x2 pixels; 2x1 expected"]
    assert S.check_answer(S.Mask(np.zeros((2, 1), np.int16)), 1, None) == []
    assert S.check_answer(S.Mask(np.array([[0, 3]], np.int16)), 4, None) == []
    many = S.Mask(np.arange(-3, 5, dtype=np.int16).reshape(1, 8))
    assert S.check_answer(many, 1, None) == ["class(es) [-3, -2, -1, 1, 2] outside 0..0"]
    # the top class's probability can never be under 1/K
    low = S.Mask(np.zeros((1, 2), np.int16), np.array([[0.25, 0.5]], np.float32))
    assert S.check_answer(low, 4, None) == []
    assert S.check_answer(low, 3, None) == [
        "a top-class probability under 1/3: these are not the argmax class's softmax probabilities (an argmax over "
        "the wrong dimension?)"]
    edge = S.Mask(np.zeros((1, 2), np.int16), np.array([[0.0, 1.0]], np.float32))
    assert S.check_answer(edge, 0, None) == ["class(es) [0] outside 0..-1"]
    assert S.check_answer(S.Mask(np.zeros((1, 1), np.int16), np.array([[0.3333330]], np.float32)), 3, None) == []


def test_row_comparison_exact():
    a = S.Mask(np.array([[0, 1], [2, 3]], np.int16), np.array([[0.5, 0.25], [0.75, 1.0]], np.float32))
    b = S.Mask(np.array([[0, 1], [2, 0]], np.int16), np.array([[0.5, 0.375], [0.5, 0.0]], np.float32))
    assert S.compare_row(a, b) == S.RowDiff(4, 1, 0.25)
    assert S.compare_row(a, b).agreement == 0.75
    assert S.compare_row(a, S.Mask(a.classes)) == S.RowDiff(4, 0, 0.0)
    assert S.compare_row(S.Mask(a.classes), a) == S.RowDiff(4, 0, 0.0)
    none_agree = S.Mask(a.classes + 1, a.probabilities)
    assert S.compare_row(a, none_agree) == S.RowDiff(4, 4, 0.0)
    assert S.compare_row(a, S.Mask(np.zeros((2, 3), np.int16))) == S.RowDiff(4, 4, math.inf)
    assert S.RowDiff(0, 0, 0.0).agreement == 1.0
    assert S.RowDiff(4, 1, 0.0).is_same() is False
    assert S.RowDiff(4, 0, 1e-5).is_same() and not S.RowDiff(4, 0, 1.1e-5).is_same()
    assert S.RowDiff(4, 0, 0.5).is_same(0.5) and not S.RowDiff(4, 0, math.nan).is_same() is False


def test_confusion_and_metrics_exact():
    truth = np.array([[0, 0, 1], [1, 2, 2]])
    pred = np.array([[0, 1, 1], [1, 2, 0]])
    conf = S.confusion(pred, truth, 3)
    assert conf.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # out-of-range values on either side are not counted
    assert S.confusion(np.array([[-1, 3, 0]]), np.array([[0, 0, 3]]), 3).tolist() == [[0] * 3] * 3
    assert S.confusion(np.array([[2]]), np.array([[2]]), 3).tolist() == [[0, 0, 0], [0, 0, 0], [0, 0, 1]]
    m = S.metrics_of(conf)
    # IoU: class 0 1/(2+2-1)=1/3, class 1 2/(2+3-2)=2/3, class 2 1/(2+1-1)=1/2
    assert m["iou_per_class"] == {0: pytest.approx(1 / 3), 1: pytest.approx(2 / 3), 2: pytest.approx(1 / 2)}
    assert m["miou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert m["pixel_accuracy"] == pytest.approx(4 / 6)
    absent = S.metrics_of(np.array([[2, 0, 0], [0, 0, 0], [0, 0, 0]]))
    assert absent == {"miou": 1.0, "pixel_accuracy": 1.0, "iou_per_class": {0: 1.0}}
    zero = S.metrics_of(np.zeros((2, 2)))
    assert math.isnan(zero["miou"]) and math.isnan(zero["pixel_accuracy"]) and zero["iou_per_class"] == {}
    missed = S.metrics_of(np.array([[0, 3], [0, 0]]))
    assert missed["iou_per_class"] == {0: 0.0, 1: 0.0} and missed["pixel_accuracy"] == 0.0
    with pytest.raises(ValueError) as e:
        S.confusion(np.zeros((2, 2)), np.zeros((2, 3)), 2)
    assert str(e.value) == "prediction [2, 2] and truth [2, 3] differ in shape"


def test_encoded_rows_decode_back():
    row = np.array([2, 3, 0, 1, 2, 1, 1, 0, 0.5, 0.25, 1, 0.75, 0.5, 1], np.float32)
    m = S.decode_encoded(row)
    assert m.classes.tolist() == [[0, 1, 2], [1, 1, 0]] and m.classes.dtype == np.int16
    assert m.probabilities.tolist() == [[0.5, 0.25, 1], [0.75, 0.5, 1]]
    assert S.decode_encoded(np.array([np.nan, 1, 0], np.float32)) is None
    assert S.decode_encoded(np.array([1, 1, 0, 0.5, 9], np.float32)).probabilities.tolist() == [[0.5]]


def test_builtin_geometry_from_the_handler_or_the_reference_preprocessing():
    from types import SimpleNamespace as NS

    def spec(handler, pre):
        return NS(handler=NS(name=handler), model=NS(preprocess=pre))

    assert S.uses_builtin_geometry(spec("image_segmenter", None))
    assert S.uses_builtin_geometry(spec("mine.py", "builtin:image_segmenter"))
    assert not S.uses_builtin_geometry(spec("mine.py", "builtin:image_classifier"))


def test_mask_geometry_keeps_class_indices_above_255():
    mask = np.array([[300, 2], [7, 1000]], np.int16)
    got = S.mask_in_handler_frame(mask, resize=4, crop=4)
    assert got.dtype == np.int16
    assert got.tolist() == [[300, 300, 2, 2], [300, 300, 2, 2], [7, 7, 1000, 1000], [7, 7, 1000, 1000]]


def test_figures_of_a_class_whose_union_is_one_pixel_and_many_bad_pixels(tmp_path):
    m = S.metrics_of(np.array([[1, 0], [0, 0]]))
    assert m == {"miou": 1.0, "pixel_accuracy": 1.0, "iou_per_class": {0: 1.0}}
    p = _png(tmp_path, np.arange(20, 30, dtype=np.uint8).reshape(2, 5))
    with pytest.raises(DatasetError, match=r"pixel value\(s\) \[20, 21, 22, 23, 24, 25, 26, 27\] that"):
        S.read_mask(p, "r1", 3, None)


def test_one_class_answers_and_the_first_three_bad_probabilities():
    one = S.Mask(np.zeros((1, 2), np.int16), np.array([[0.5, 1.0]], np.float32))
    assert S.check_answer(one, 1, None) == [
        "a top-class probability under 1/1: these are not the argmax class's softmax probabilities (an argmax over "
        "the wrong dimension?)"]
    bad = S.Mask(np.zeros((1, 4), np.int16), np.array([[2, 3, 4, 5]], np.float32))
    assert S.check_answer(bad, 1, None) == ["4 probabilit(ies) outside [0, 1], e.g. [2.0, 3.0, 4.0]"]
