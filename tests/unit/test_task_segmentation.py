"""Segmentation task, pure functions: masks, the handler's geometry, answers, sameness, mIoU."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import DatasetError
from pipeline.tasks import segmentation as S


def _torchvision_geometry(mask: np.ndarray) -> np.ndarray:
    from pipeline.compat import import_torchvision

    import_torchvision()
    from torchvision import transforms as T

    t = T.Compose([T.Resize(256, interpolation=T.InterpolationMode.NEAREST), T.CenterCrop(224)])
    return np.asarray(t(Image.fromarray(mask)))


@pytest.mark.parametrize("h, w", [(64, 64), (50, 80), (97, 61), (300, 256), (10, 400)])
def test_mask_geometry_is_torchvisions_resize_and_center_crop(h, w):
    rng = np.random.default_rng(h * w)
    mask = rng.integers(0, 4, size=(h, w)).astype(np.uint8)
    got = S.mask_in_handler_frame(mask)
    assert got.shape == (224, 224)
    np.testing.assert_array_equal(got, _torchvision_geometry(mask))


def test_mask_geometry_never_blends_classes():
    mask = np.zeros((64, 64), np.uint8)
    mask[10:30, 10:30] = 3
    got = S.mask_in_handler_frame(mask)
    assert set(np.unique(got).tolist()) == {0, 3}
    # a bilinear resize would blend the edge into classes 1 and 2: what NEAREST avoids
    blended = np.asarray(Image.fromarray(mask).resize((256, 256), Image.Resampling.BILINEAR))
    assert len(set(np.unique(blended).tolist()) - {0, 3}) > 0


def test_resized_size_follows_the_shorter_side():
    assert S.resized_size(64, 64) == (256, 256)
    assert S.resized_size(80, 50) == (409, 256)
    assert S.resized_size(50, 80) == (256, 409)


def _png(tmp_path, arr, name="m.png", mode=None):
    p = tmp_path / name
    Image.fromarray(arr, mode=mode).save(p) if mode else Image.fromarray(arr).save(p)
    return p


def test_mask_read(tmp_path):
    arr = np.zeros((6, 8), np.uint8)
    arr[1, 2] = 3
    got = S.read_mask(_png(tmp_path, arr), "r1", 4, (8, 6))
    assert got.dtype == np.int16 and got.shape == (6, 8) and got[1, 2] == 3


def test_mask_of_another_size_names_the_row(tmp_path):
    with pytest.raises(DatasetError, match=r"row r7: .* is 8x6 but its image is 64x64") as e:
        S.read_mask(_png(tmp_path, np.zeros((6, 8), np.uint8)), "r7", 4, (64, 64))
    assert e.value.exit_code == 2


def test_mask_with_an_unknown_class_names_the_row(tmp_path):
    arr = np.zeros((6, 8), np.uint8)
    arr[0, 0] = 9
    with pytest.raises(DatasetError, match=r"row r3: .*pixel value\(s\) \[9\].*0\.\.3"):
        S.read_mask(_png(tmp_path, arr), "r3", 4, (8, 6))


def test_rgb_mask_refused(tmp_path):
    with pytest.raises(DatasetError, match="RGB image; a mask is one channel"):
        S.read_mask(_png(tmp_path, np.zeros((6, 8, 3), np.uint8)), "r1", 4, None)


def test_missing_mask_file_named(tmp_path):
    with pytest.raises(DatasetError, match="row r1: mask .* cannot be read"):
        S.read_mask(tmp_path / "nope.png", "r1", 4, None)


def _answer(classes, probs):
    return np.stack([np.asarray(classes, np.float32), np.asarray(probs, np.float32)], axis=2).tolist()


def test_builtin_answer_decoded_nested_and_flat():
    cls = np.arange(6).reshape(2, 3) % 3
    probs = np.full((2, 3), 0.75)
    m = S.decode_builtin(_answer(cls, probs))
    assert m.classes.dtype == np.int16 and m.classes.tolist() == cls.tolist()
    assert m.probabilities.tolist() == probs.tolist()
    flat = np.stack([np.zeros((224, 224)), np.full((224, 224), 0.5)], axis=2).reshape(-1).tolist()
    assert S.decode_builtin(flat).classes.shape == (224, 224)


@pytest.mark.parametrize("ans, words", [
    ([[1, 2], [3, 4]], "H x W x 2"),
    (_answer([[0.5, 1]], [[0.9, 0.9]]), "integers"),
    ("text", "H x W x 2|numbers"),
])
def test_bad_builtin_answers(ans, words):
    with pytest.raises(S.SegmentationAnswerError, match=words):
        S.decode_builtin(ans)


def test_mapping_and_custom_answers():
    doc = {"r": {"mask": [[0, 1], [2, 1]], "p": [[0.9, 0.8], [0.7, 0.6]]}}
    from pipeline.answers.mapping import get_path

    m = S.decode_mapping(doc, "r.mask", "r.p", get_path)
    assert m.classes.tolist() == [[0, 1], [2, 1]] and m.probabilities.shape == (2, 2)
    assert S.decode_custom({"classes": [[1, 1]]}).probabilities is None
    with pytest.raises(S.SegmentationAnswerError, match="differs"):
        S.decode_mapping({"m": [[0, 1]], "p": [[0.5]]}, "m", "p", get_path)
    with pytest.raises(S.SegmentationAnswerError, match="answers.decode must return"):
        S.decode_custom([[0, 1]])


def test_answer_checked_alone():
    good = S.Mask(np.zeros((224, 224), np.int16), np.full((224, 224), 0.9, np.float32))
    assert S.check_answer(good, 4) == []
    small = S.Mask(np.zeros((10, 12), np.int16), None)
    assert "12x10 pixels; 224x224" in S.check_answer(small, 4)[0]
    bad = S.Mask(np.array([[0, 5]], np.int16), np.array([[1.5, 0.9]], np.float32))
    p = " | ".join(S.check_answer(bad, 4, None))
    assert "class(es) [5] outside 0..3" in p and "outside [0, 1]" in p


def test_argmax_over_the_wrong_dim_is_caught_alone():
    import torch

    logits = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 3
    # softmax over the height instead of the classes: "probabilities" that can fall under 1/K
    wrong = torch.softmax(logits, dim=2).max(dim=1)
    m = S.Mask(wrong.indices[0].numpy().astype(np.int16), wrong.values[0].numpy())
    assert any("argmax over the wrong dimension" in p for p in S.check_answer(m, 4, None))
    right = S.model_outputs({"out": logits})[0]
    assert S.check_answer(right, 4, None) == []
    assert not S.compare_row(right, m).is_same()


def test_model_output_is_what_the_builtin_answers():
    import torch

    logits = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(1))
    m = S.model_outputs({"out": logits})[1]
    sm = torch.softmax(logits, 1)[1]
    assert m.classes.tolist() == sm.argmax(0).tolist()
    np.testing.assert_allclose(m.probabilities, sm.max(0).values.numpy(), rtol=0, atol=0)
    with pytest.raises(S.SegmentationAnswerError, match=r"\{'out'"):
        S.model_outputs({"out": logits[0]})


def test_row_comparison():
    a = S.Mask(np.array([[0, 1], [2, 3]], np.int16), np.array([[0.9, 0.8], [0.7, 0.6]], np.float32))
    assert S.compare_row(a, a).is_same() and S.compare_row(a, a).agreement == 1.0
    b = S.Mask(np.array([[0, 1], [2, 0]], np.int16), np.array([[0.9, 0.8], [0.70002, 0.99]], np.float32))
    d = S.compare_row(a, b)
    assert d.differing == 1 and d.agreement == 0.75
    # the differing pixel's probabilities belong to different classes: only agreeing pixels compared
    assert d.max_probability == pytest.approx(2e-5, abs=1e-6)
    assert not d.is_same()
    c = S.Mask(a.classes, a.probabilities + np.float32(2e-5))
    assert not S.compare_row(a, c).is_same() and S.compare_row(a, c).is_same(prob_tol=1e-4)
    other = S.Mask(np.zeros((3, 3), np.int16))
    assert S.compare_row(a, other).agreement == 0.0


def test_a_mask_upsampled_bilinear_instead_of_nearest_differs():
    import torch

    logits = torch.zeros(1, 3, 8, 8)
    logits[0, 1, 2:5, 2:5] = 5.0
    logits[0, 2, 5:8, 5:8] = 5.0
    cls = logits.argmax(1, keepdim=True).float()
    nearest = torch.nn.functional.interpolate(cls, size=(32, 32), mode="nearest")[0, 0].numpy().astype(np.int16)
    bilinear = torch.nn.functional.interpolate(cls, size=(32, 32), mode="bilinear")[0, 0].round().numpy()
    d = S.compare_row(S.Mask(nearest), S.Mask(bilinear.astype(np.int16)))
    assert d.differing > 0


def test_miou_and_pixel_accuracy_agree_with_torchmetrics():
    import torch
    from torchmetrics.classification import MulticlassJaccardIndex

    rng = np.random.default_rng(3)
    truths = [rng.integers(0, 4, size=(16, 16)) for _ in range(3)]
    preds = [np.where(rng.random((16, 16)) < 0.7, t, rng.integers(0, 4, size=(16, 16))) for t in truths]
    conf = sum(S.confusion(p, t, 4) for p, t in zip(preds, truths))
    m = S.metrics_of(conf)
    tm = MulticlassJaccardIndex(num_classes=4, average=None)
    for p, t in zip(preds, truths):
        tm.update(torch.as_tensor(p), torch.as_tensor(t))
    per = tm.compute().numpy()
    assert m["iou_per_class"] == {c: pytest.approx(float(v)) for c, v in enumerate(per)}
    assert m["miou"] == pytest.approx(float(per.mean()))
    acc = np.mean(np.concatenate([(p == t).ravel() for p, t in zip(preds, truths)]))
    assert m["pixel_accuracy"] == pytest.approx(acc)


def test_miou_over_classes_present_only():
    t = np.array([[0, 0], [1, 1]])
    m = S.metrics_of(S.confusion(t, t, 4))
    assert m["miou"] == 1.0 and set(m["iou_per_class"]) == {0, 1}
    with pytest.raises(ValueError, match="differ in shape"):
        S.confusion(t, np.zeros((3, 3)), 4)
