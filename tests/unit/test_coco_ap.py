"""COCO's mAP over row weights (tasks/coco_ap.py): equal to torchmetrics' on the full sample and on any
resample of images, and the paired intervals of mAP@[.5:.95] and mAP@.5 it gives detection."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from pipeline.tasks import coco_ap as C
from pipeline.tasks import detection as D
from pipeline.tasks import structured
from pipeline.tasks.base import CompareContext
from pipeline.tasks.structured import TaskOutputs

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "shapes_detect"
NAMES = ("background", "red_box", "green_disc", "blue_box")


def _random_set(rng, images: int, classes: int, per_image: int = 6, jitter: float = 2.0):
    """Truth boxes, and detections: the truth jittered (some dropped, some relabelled) plus strays.
    Images with no truth or no detections, and classes with detections only, occur."""
    preds, truths = [], []
    for _ in range(images):
        g = int(rng.integers(0, per_image))
        xy, wh = rng.uniform(0, 50, (g, 2)), rng.uniform(4, 20, (g, 2))
        tb, tl = np.column_stack([xy, xy + wh]), rng.integers(1, classes, g)
        truths.append(D.Boxes.of(tb, tl))
        near = tb + rng.normal(0, jitter, tb.shape)
        near[:, 2:] = np.maximum(near[:, 2:], near[:, :2] + 1)
        kept = rng.random(g) < 0.8
        s = int(rng.integers(0, per_image))
        xy2, wh2 = rng.uniform(0, 50, (s, 2)), rng.uniform(4, 20, (s, 2))
        labels = np.where(rng.random(g) < 0.9, tl, rng.integers(1, classes + 1, g))[kept]
        preds.append(D.Boxes.of(np.vstack([near[kept], np.column_stack([xy2, xy2 + wh2])]),
                                np.concatenate([labels, rng.integers(1, classes + 1, s)]), rng.random(kept.sum() + s)))
    scores = np.concatenate([p.scores for p in preds]).astype(np.float32)
    assert len(np.unique(scores)) == len(scores)  # no ties: their order among images is COCO's choice
    return preds, truths


def _torchmetrics(preds, truths) -> tuple[float, float]:
    ref = D.mean_average_precision(preds, truths)
    return tuple(np.nan if ref[k] == -1 else ref[k] for k in ("map", "map_50"))


def _mine(preds, truths, weights=None) -> tuple[np.ndarray, np.ndarray]:
    out = C.average_precision(C.match_stage(preds, truths), weights)
    return out["map"], out["map_50"]


def test_thresholds_are_torchmetrics_own():
    from pipeline import compat

    compat.install_import_hook()
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(backend="faster_coco_eval")
    iou, rec = C.thresholds()
    assert iou.tolist() == metric.iou_thresholds and rec.tolist() == metric.rec_thresholds
    assert metric.max_detection_thresholds[-1] == C.MAX_DETS
    assert rec[15] != 0.15  # float32 linspaces: numpy's own would not be the same thresholds


@pytest.mark.parametrize("seed", range(6))
def test_full_sample_map_equals_torchmetrics(seed):
    rng = np.random.default_rng(seed)
    preds, truths = _random_set(rng, int(rng.integers(3, 12)), int(rng.integers(2, 6)))
    (m,), (m50,) = _mine(preds, truths)
    ref, ref50 = _torchmetrics(preds, truths)
    assert m == pytest.approx(ref, abs=1e-6) and m50 == pytest.approx(ref50, abs=1e-6)
    assert 0 < m < m50 <= 1


def test_tight_boxes_separate_the_iou_thresholds():
    rng = np.random.default_rng(11)
    preds, truths = _random_set(rng, 10, 3, per_image=10, jitter=0.7)  # IoUs across .5 .. .95
    (m,), (m50,) = _mine(preds, truths)
    ref, ref50 = _torchmetrics(preds, truths)
    assert m == pytest.approx(ref, abs=1e-6) and m50 == pytest.approx(ref50, abs=1e-6)
    assert m50 - m > 0.1


def test_a_resample_is_the_images_repeated():
    rng = np.random.default_rng(3)
    preds, truths = _random_set(rng, 8, 4)
    rows = rng.integers(0, 8, size=(4, 8))
    weights = np.stack([np.bincount(r, minlength=8) for r in rows])
    m, m50 = _mine(preds, truths, weights)
    for r, (a, b) in zip(rows, zip(m, m50)):
        ref, ref50 = _torchmetrics([preds[i] for i in r], [truths[i] for i in r])
        assert a == pytest.approx(ref, abs=1e-6) and b == pytest.approx(ref50, abs=1e-6)
    # one at a time and in a batch alike; a row weighted 0 is a row left out
    one = C.average_precision(C.match_stage(preds, truths), weights[2:3])["map"]
    assert one[0] == pytest.approx(m[2], abs=1e-12)
    left = [i for i in range(8) if weights[0, i]]
    assert m[0] == pytest.approx(_mine([preds[i] for i in left], [truths[i] for i in left],
                                       weights[0, left][None])[0][0], abs=1e-12)


def test_a_detection_takes_the_last_truth_box_of_equal_highest_iou_as_coco():
    truth = [D.Boxes.of([[0, 0, 10, 10], [2, 0, 12, 10]], [1, 1])]
    # the first detection overlaps both truth boxes alike (IoU 0.818); which one it takes decides the second's IoU
    pred = [D.Boxes.of([[1, 0, 11, 10], [2, 0, 12, 10]], [1, 1], [0.9, 0.8])]
    (m,), (m50,) = _mine(pred, truth)
    ref, ref50 = _torchmetrics(pred, truth)
    assert m == pytest.approx(ref, abs=1e-6) and m50 == pytest.approx(ref50, abs=1e-6) == 1.0
    assert m < 0.75  # had it taken the first, the second would match the other at IoU 1 and more thresholds


def test_boxes_go_through_float32_as_torchmetrics_hands_them_to_coco():
    x, w = 1000.2997118905374, 7.49998453744424  # IoU 0.7499985 in float64, exactly 0.75 through float32
    truth = [D.Boxes.of([[x, 0, x + 10, 10]], [1])]
    pred = [D.Boxes.of([[x, 0, x + w, 10]], [1], [0.9])]
    (m,), _ = _mine(pred, truth)
    assert m == pytest.approx(_torchmetrics(pred, truth)[0], abs=1e-6) and m == pytest.approx(0.6)  # .50 to .75


def test_edge_cases_as_torchmetrics():
    truth = [D.Boxes.of([[0, 0, 10, 10]], [1]), D.Boxes.of([[5, 5, 20, 20]], [2]), D.Boxes.empty()]
    hit = D.Boxes.of([[0, 0, 10, 10]], [1], [0.9])
    stray = D.Boxes.of([[30, 30, 40, 40]], [3], [0.8])  # class 3 has no truth: left out, as COCO's -1
    for preds in ([hit, D.Boxes.empty(), stray], [D.Boxes.empty()] * 3, [hit, D.Boxes.empty(), D.Boxes.empty()]):
        (m,), (m50,) = _mine(preds, truth)
        ref, ref50 = _torchmetrics(preds, truth)
        assert m == pytest.approx(ref, abs=1e-6) and m50 == pytest.approx(ref50, abs=1e-6)
    assert _mine([hit, D.Boxes.empty(), stray], truth)[0][0] == pytest.approx(0.5)  # class 2 found nothing: 0
    assert _mine([D.Boxes.empty()] * 3, truth)[0][0] == 0.0
    nothing = _mine([stray, D.Boxes.empty()], [D.Boxes.empty(), D.Boxes.empty()])
    assert np.isnan(nothing[0][0]) and np.isnan(nothing[1][0])  # no truth at all: nothing to score
    assert np.isnan(_mine([hit, stray], truth[:2], np.array([[0, 0]]))[0][0])


def test_an_image_without_detections_leaves_the_next_images_counted():
    truth = [D.Boxes.of([[0, 0, 10, 10]], [1]), D.Boxes.of([[0, 0, 10, 10]], [1]), D.Boxes.of([[5, 5, 9, 9]], [2])]
    preds = [D.Boxes.empty(), D.Boxes.of([[0, 0, 10, 10]], [1], [0.9]), D.Boxes.of([[5, 5, 9, 9]], [2], [0.7])]
    (m,), (m50,) = _mine(preds, truth)
    ref, ref50 = _torchmetrics(preds, truth)
    assert m == pytest.approx(ref, abs=1e-6) and m50 == pytest.approx(ref50, abs=1e-6)
    assert m50 == pytest.approx((51 / 101 + 1) / 2)  # class 1: recall 0.5 at precision 1; class 2: found


def test_resamples_split_into_chunks_give_the_figures_of_one_pass(monkeypatch):
    rng = np.random.default_rng(11)
    preds, truths = _random_set(rng, 6, 3)
    weights = rng.integers(0, 3, size=(7, 6))
    matches = C.match_stage(preds, truths)
    whole = C.average_precision(matches, weights)
    monkeypatch.setattr(C, "CHUNK_ELEMENTS", 1)  # one resample a chunk
    split = C.average_precision(matches, weights)
    assert split["map"].shape == (7,) and split["map_50"].shape == (7,)
    np.testing.assert_allclose(split["map"], whole["map"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(split["map_50"], whole["map_50"], rtol=0, atol=1e-12)
    monkeypatch.setattr(C, "CHUNK_ELEMENTS", 10 * 2 * len(matches.image))  # two resamples a chunk
    np.testing.assert_allclose(C.average_precision(matches, weights)["map"], whole["map"], rtol=0, atol=1e-12)
    empty = C.average_precision(matches, np.zeros((0, 6), np.int64))
    assert empty["map"].shape == (0,) and empty["map_50"].shape == (0,)


def test_more_than_max_dets_per_image_and_class_as_torchmetrics():
    rng = np.random.default_rng(5)
    xy = rng.uniform(0, 90, (150, 2))
    many = D.Boxes.of(np.column_stack([xy, xy + 8]), np.ones(150, int), rng.random(150))
    truth = D.Boxes.of(np.column_stack([xy[::3], xy[::3] + 8]), np.ones(50, int))
    with pytest.warns(UserWarning):
        ref, ref50 = _torchmetrics([many], [truth])
    (m,), (m50,) = _mine([many], [truth])
    assert m == pytest.approx(ref, abs=1e-6) and m50 == pytest.approx(ref50, abs=1e-6)


def test_shapes_detect_outputs_as_torchmetrics():
    import sys

    import pandas as pd
    import torch
    from PIL import Image

    if not (EXAMPLE / "weights.pt").exists() or not (EXAMPLE / "annotations_test.json").exists():
        pytest.skip("examples/shapes_detect: run make examples")
    sys.path.insert(0, str(EXAMPLE))
    try:
        from model import build_model
    finally:
        sys.path.remove(str(EXAMPLE))
    model = build_model()
    model.load_state_dict(torch.load(EXAMPLE / "weights.pt", map_location="cpu"))
    model.eval()
    found, _ = D.load_coco(EXAMPLE / "annotations_test.json", len(NAMES))
    preds, truths = [], []
    with torch.no_grad():
        for p in pd.read_csv(EXAMPLE / "test.csv")["path"]:
            x = torch.from_numpy(np.asarray(Image.open(EXAMPLE / p).convert("RGB"), np.float32) / 255)
            preds.append(D.model_output(model(x.permute(2, 0, 1)[None])[0]).above(D.THRESHOLD))
            truths.append(found[Path(p).name])
    (m,), (m50,) = _mine(preds, truths)
    ref, ref50 = _torchmetrics(preds, truths)
    assert m == pytest.approx(ref, abs=1e-6) and m50 == pytest.approx(ref50, abs=1e-6)


def _compare(truths, reference, candidate):
    labels = np.empty(len(truths), object)
    labels[:] = [D.Truth(t, (64, 64)) for t in truths]
    stages = [TaskOutputs(name, np.zeros(len(a), np.int64), None, None, np.ones(len(a)), answers=tuple(a))
              for name, a in (("baseline", reference), ("served", candidate))]
    return D.TASK.compare(tuple(f"r{i}" for i in range(len(truths))), labels, stages, None,
                          CompareContext(NAMES, 1e-5))


def _shapes(rng, n):
    truths, preds = [], []
    for _ in range(n):
        xy = rng.uniform(0, 40, (3, 2))
        b = np.column_stack([xy, xy + rng.uniform(8, 20, (3, 2))])
        truths.append(D.Boxes.of(b, [1, 2, 3]))
        preds.append(D.Boxes.of(b + rng.normal(0, 0.3, b.shape), [1, 2, 3], rng.uniform(0.6, 1.0, 3)))
    return truths, preds


def test_paired_intervals_of_map_hold_0_for_the_same_answers_and_not_for_worse_boxes():
    truths, good = _shapes(np.random.default_rng(0), 40)
    same = _compare(truths, good, good).tests["served"]
    for key in ("map", "map_50"):
        assert same.deltas[key] == 0.0 and same.delta_cis[key] == (0.0, 0.0)
    assert same.resamples >= 20
    worse = [D.Boxes.of(b.boxes + [2.5, 2.5, 0, 0], b.labels, b.scores) for b in good]  # IoU ~.6 to .8
    t = _compare(truths, good, worse).tests["served"]
    lo, hi = t.delta_cis["map"]
    assert lo <= t.deltas["map"] <= hi < -0.1 and t.resamples >= 20
    assert "map_50" in t.delta_cis and "f1_macro" in t.delta_cis


def test_map_resampling_is_bounded_by_the_bootstrap_clock(monkeypatch):
    truths, good = _shapes(np.random.default_rng(1), 10)
    clock = itertools.count(0.0, 0.4)  # every reading of the clock 0.4 s after the one before
    monkeypatch.setattr(structured.time, "monotonic", lambda: next(clock))
    calls = []
    real = C.average_precision
    monkeypatch.setattr(C, "average_precision", lambda *a, **k: calls.append(1) or real(*a, **k))
    t = _compare(truths, good, good).tests["served"]
    assert 0 < t.resamples <= structured.BOOTSTRAP_SECONDS / 0.4 + 1
    assert len(calls) == 2 * t.resamples  # the reference and the candidate on each resample, no more
    assert "map" not in t.delta_cis  # too few resamples for an interval: none given
