"""The EXIF-rotation probe for answers in the image's frame (boxes, masks), tested where each piece is computed:
the geometry (``inputs.orientation``, checked against PIL's own transposes), each task's comparison
(``probe_difference`` of detection and segmentation) and the judgement in both frames (``stages.probing``).

A box mapped the wrong way round, or a judgement that reads an answer in the stored frame as the same,
would pass a handler that hands phone clients boxes turned against their pictures.
"""

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from pipeline.answers.base import Prediction
from pipeline.inputs import image
from pipeline.inputs.orientation import stored_image, turns_of, upright_boxes, upright_grid
from pipeline.inputs.probes import ANSWER, SAME, HandlerProbe
from pipeline.stages.outcomes import RowOutcome
from pipeline.stages.probing import STORED_FRAME, judge
from pipeline.tasks import detection as D
from pipeline.tasks import segmentation as S
from tests.unit._support import spec_for
from tests.unit.test_figures_probes import _image_rows

W, H = 40, 24  # not square: a quarter turn swaps the sides
BOX = (5, 3, 17, 9)  # x1, y1, x2, y2: off-centre, so no turn leaves it in place


def _upright() -> Image.Image:
    im = Image.new("L", (W, H), 0)
    im.paste(255, BOX)
    return im


def _extent(im: Image.Image) -> list[float]:
    ys, xs = np.nonzero(np.asarray(im))
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_a_box_found_in_the_stored_pixels_maps_back_onto_the_upright_box(orientation):
    stored = stored_image(_upright(), orientation)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    stored.save(buf, "PNG", exif=exif.tobytes())
    # What the camera stored is what exif_transpose (a viewer) turns upright.
    assert np.array_equal(np.asarray(ImageOps.exif_transpose(Image.open(buf))), np.asarray(_upright()))
    assert upright_boxes(np.array([_extent(stored)]), orientation, (W, H)).tolist() == [list(map(float, BOX))]
    if orientation != 1:
        assert _extent(stored) != list(map(float, BOX)), "the stored frame differs: the test can fail"


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_a_grid_answered_in_the_stored_frame_turns_back_into_the_upright_one(orientation):
    up = np.asarray(_upright())
    assert np.array_equal(upright_grid(np.asarray(stored_image(_upright(), orientation)), orientation), up)


def test_a_mirrored_orientation_is_refused_by_name():
    with pytest.raises(ValueError, match="orientation 2 is not a rotation"):
        turns_of(2)


def test_the_exif_probe_says_its_orientation_and_upright_size():
    rows = _image_rows(Image.new("RGB", (W, H), (200, 10, 10)))
    p = {q.name: q for q in image.handler_probes(rows, spec_for(2))}["EXIF-rotated JPEG (orientation 6)"]
    assert (p.orientation, p.upright_size, p.expect) == (6, (W, H), SAME)
    stored = Image.open(io.BytesIO(p.body))
    assert stored.size == (H, W) and stored.getexif()[0x0112] == 6
    others = [q for q in image.handler_probes(rows, spec_for(2)) if q.name != p.name]
    assert all(q.orientation == 0 for q in others)


# --- each task's comparison ----------------------------------------------------------------------------------


def _boxes(*rows) -> D.Boxes:
    return D.Boxes.of([r[:4] for r in rows], [r[4] for r in rows], [r[5] for r in rows])


UPRIGHT = _boxes((5, 3, 17, 9, 1, 0.9), (20, 10, 30, 20, 2, 0.8))


def _stored(b: D.Boxes, orientation: int) -> D.Boxes:
    """The boxes a handler that ignores EXIF finds: each upright box drawn, stored turned, measured."""
    out = []
    for box in b.boxes:
        im = Image.new("L", (W, H), 0)
        im.paste(255, tuple(int(v) for v in box))
        out.append(_extent(stored_image(im, orientation)))
    return D.Boxes(np.array(out), b.labels, b.scores)


def test_detection_boxes_in_the_stored_frame_match_only_once_turned_back():
    stored = _stored(UPRIGHT, 6)
    assert D.probe_difference(UPRIGHT, stored, 6, (W, H)) == ""
    assert D.probe_difference(UPRIGHT, UPRIGHT, 1, (W, H)) == ""
    as_is = D.probe_difference(UPRIGHT, stored, 1, (W, H))
    assert "missing box" in as_is and "extra box" in as_is
    # a re-encoding moves boxes a little and changes scores: still the same objects
    nudged = D.Boxes(UPRIGHT.boxes + 0.7, UPRIGHT.labels, UPRIGHT.scores - 0.2)
    assert D.probe_difference(UPRIGHT, nudged) == ""
    relabelled = D.Boxes(UPRIGHT.boxes, np.array([1, 1]), UPRIGHT.scores)
    assert "label 2 -> 1" in D.probe_difference(UPRIGHT, relabelled)
    assert "missing box" in D.probe_difference(UPRIGHT, _boxes((5, 3, 17, 9, 1, 0.9)))


def test_segmentation_masks_compare_by_the_share_of_pixels_of_the_same_class():
    truth = S.Mask(np.asarray(_upright()).astype(np.int16) // 255)
    stored = S.Mask(np.rot90(truth.classes, 1).copy())  # what a handler ignoring orientation 6 answers
    assert S.probe_difference(truth, stored, 6) == ""
    assert S.probe_difference(truth, truth) == ""
    assert "the original row's is 40x24" in S.probe_difference(truth, stored, 1)
    one_off = truth.classes.copy()
    one_off.flat[:int(0.03 * one_off.size)] = 1  # 3% of the pixels moved: beyond 98% agreement
    assert S.probe_difference(truth, S.Mask(one_off)).startswith("97.")
    close = truth.classes.copy()
    close.flat[:int(0.01 * close.size)] = 1
    assert S.probe_difference(truth, S.Mask(close)) == ""


# --- the judgement in both frames ----------------------------------------------------------------------------


def _row(boxes: D.Boxes) -> RowOutcome:
    return RowOutcome(-1, "p", True, 200, Prediction(0, extra={"boxes": boxes}), 1.0, None, None, None, None, 1)


EXIF = HandlerProbe("EXIF-rotated JPEG (orientation 6)", b"x", "image/jpeg", SAME, 0, orientation=6,
                    upright_size=(W, H))
REF = Prediction(0, extra={"boxes": UPRIGHT})


def _judge(answer: D.Boxes, probe: HandlerProbe = EXIF, reference=REF):
    return judge(probe, "served", _row(answer), 0, reference, D.TASK.probe_difference)


def test_an_answer_in_the_upright_frame_honours_exif_and_passes_silently():
    got = _judge(UPRIGHT)
    assert (got.outcome, got.passed, got.warning) == ("same", True, "")
    assert "honours the EXIF orientation" in got.message


def test_an_answer_in_the_stored_frame_passes_with_a_warning_naming_the_fix():
    got = _judge(_stored(UPRIGHT, 6))
    assert (got.outcome, got.passed) == (STORED_FRAME, True)
    assert got.warning == got.message and "ignores the EXIF orientation" in got.warning
    assert "phone photos" in got.warning and "ImageOps.exif_transpose" in got.warning and "missing box" in got.warning


def test_an_answer_that_matches_in_neither_frame_fails_and_one_alike_in_both_cannot_tell():
    got = _judge(_boxes((1, 1, 3, 3, 1, 0.9)))
    assert (got.outcome, got.passed, got.warning) == ("different", False, "")
    assert got.message.startswith("upright frame: ") and "; stored frame: " in got.message
    centred = _boxes((10, 2, 30, 22, 1, 0.9))  # a 20x20 box at the centre of a 40x24 picture: a turn keeps it
    square = HandlerProbe("x", b"x", "image/jpeg", SAME, 0, orientation=3, upright_size=(W, H))
    alike = judge(square, "served", _row(centred), 0, Prediction(0, extra={"boxes": centred}), D.TASK.probe_difference)
    assert alike.outcome == "same" and alike.passed and "cannot be told" in alike.message


def test_other_probes_of_a_task_compare_answers_not_the_placeholder_class():
    plain = HandlerProbe("RGBA PNG", b"x", "image/png", SAME, 0)
    moved = _judge(_boxes((1, 1, 3, 3, 1, 0.9)), probe=plain)
    assert (moved.outcome, moved.passed) == ("different", False) and "missing box" in moved.message
    assert _judge(UPRIGHT, probe=plain).outcome == "same"
    assert _judge(UPRIGHT, probe=HandlerProbe("4x4", b"x", "image/png", ANSWER, 0)).passed
    lost = _judge(UPRIGHT, reference=None)
    assert (lost.outcome, lost.passed) == ("different", False) and "got no answer" in lost.message


# --- tasks of values (regression, multi-label): the numbers, within the task's tolerance ----------------------


def test_a_values_task_compares_a_probes_values_within_its_tolerance():
    from pipeline.stages.probing import probe_difference, values_difference
    from tests.unit._support import codec

    diff = probe_difference(codec(1, model={"task": "regression"}, gate={"max_output_diff": 0.01}))
    same, near, far = (Prediction(0, logits=np.array([v])) for v in (3.0, 3.009, 3.5))
    assert diff(same, near, 1, None) == ""
    assert diff(same, far, 1, None) == "values [3.5], the original row gets [3.0] (max difference 0.5, tolerance 0.01)"
    assert "the original row gets [3.0]" in values_difference(same, Prediction(0), 0.1, 0.0)
    assert values_difference(Prediction(0), Prediction(0), 0.1, 0.0) == ""
    assert values_difference(same, Prediction(0, logits=np.array([3.0, 1.0])), 0.1, 0.0).startswith("values [3.0, 1.0]")
    got = judge(HandlerProbe("an extra field", b"{}", "application/json", SAME, 0), "handled",
                RowOutcome(-1, "p", True, 200, far, 1.0, None, None, None, None, 1), 0, same, diff)
    assert (got.outcome, got.passed) == ("different", False) and got.message.startswith("values [3.5]")
    assert probe_difference(codec(2)) is None, "classification compares classes"
    rotated = judge(EXIF, "handled", RowOutcome(-1, "p", True, 200, far, 1.0, None, None, None, None, 1), 0, same, diff)
    assert rotated.outcome == "different" and rotated.message.startswith("values [3.5]"), "a value has no frame"


def test_an_answer_the_task_cannot_line_up_fails_saying_why_instead_of_stopping_the_stage():
    got = judge(EXIF, "served", RowOutcome(-1, "p", True, 200, Prediction(0), 1.0, None, None, None, None, 1), 0, REF,
                D.TASK.probe_difference)
    assert (got.outcome, got.passed) == ("different", False)
    assert got.message.startswith("cannot be compared with the original row's answer: TypeError")
