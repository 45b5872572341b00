"""The probe figures, tested where they are computed: what each kind's probes are (``handler_probes``)
and how an answer to one is judged (``stages.probing``).

A probe that is not what its name says proves nothing (a "CMYK" probe that is RGB, an EXIF probe
rotated the wrong way), and a judgement that reads a crash as a refusal passes a broken handler.
"""

import io
import json

import numpy as np
import pytest
from PIL import Image, ImageOps

from pipeline.inputs import image, records, tensor, text
from pipeline.inputs.base import MemoryBodies, Rows, encode_json
from pipeline.inputs.probes import ANSWER, REFUSE, SAME, HandlerProbe
from pipeline.stages.outcomes import failed, interpret
from pipeline.stages.probing import judge, outcome_of
from tests.unit._support import codec, pv_answer, spec_for, tensor_rows

LIMIT = 4096  # serving.max_request_size of these tests: a small "too large" probe


def _colour_image(w: int = 24, h: int = 16) -> Image.Image:
    """Not gray, not symmetric: a rotation or a flip changes its pixels."""
    x, y = np.meshgrid(np.arange(w), np.arange(h))
    px = np.stack([x * 10, y * 15, np.full_like(x, 128)], axis=-1).astype(np.uint8)
    return Image.fromarray(px, "RGB")


def _image_rows(im: Image.Image, before: int = 0) -> Rows:
    """One row of ``im``, after ``before`` rows of another image."""
    buf = io.BytesIO()
    im.save(buf, "PNG")
    other = io.BytesIO()
    Image.new("RGB", (3, 3), (255, 0, 0)).save(other, "PNG")
    bodies = (other.getvalue(),) * before + (buf.getvalue(),)
    return Rows(kind="image", source=None, ids=tuple(f"r{i}" for i in range(len(bodies))),
                labels=np.zeros(len(bodies), np.int64), content_type=image.CONTENT_TYPE, bodies=MemoryBodies(bodies))


@pytest.fixture  # per test, not per module: mutmut runs only the tests it saw reach handler_probes
def colour_probes():
    im = _colour_image()
    return im, {p.name: p for p in image.handler_probes(_image_rows(im), spec_for(2, serving={"max_request_size": LIMIT}))}


def _open(probe: HandlerProbe) -> Image.Image:
    return Image.open(io.BytesIO(probe.body))


def _mean_abs(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).mean())


def test_exif_probe_stores_rotated_pixels_that_exif_transpose_turns_back_into_the_original(colour_probes):
    original, probes = colour_probes
    p = probes["EXIF-rotated JPEG (orientation 6)"]
    stored = _open(p)
    assert stored.format == "JPEG" and stored.getexif()[0x0112] == 6
    assert stored.size == (original.height, original.width), "the pixels are stored rotated"
    upright = ImageOps.exif_transpose(stored).convert("RGB")
    assert upright.size == original.size
    # JPEG is lossy: close to the original, far from the original turned upside down (the other rotation).
    assert _mean_abs(upright, original) < 6
    assert _mean_abs(upright, original.transpose(Image.Transpose.ROTATE_180)) > 30
    assert p.expect == SAME


@pytest.mark.parametrize("name, mode, fmt", [
    ("grayscale (mode L) PNG", "L", "PNG"), ("RGBA PNG", "RGBA", "PNG"), ("palette (mode P) PNG", "P", "PNG"),
    ("CMYK JPEG", "CMYK", "JPEG"), ("re-encoded JPEG (quality 90)", "RGB", "JPEG"),
])
def test_each_mode_probe_is_an_image_of_that_mode_of_the_original(colour_probes, name, mode, fmt):
    original, probes = colour_probes
    im = _open(probes[name])
    assert (im.mode, im.format, im.size) == (mode, fmt, original.size)
    if mode in ("RGBA", "P", "RGB"):  # the same picture (RGBA and the palette exactly, JPEG nearly)
        assert _mean_abs(im.convert("RGB"), original) < (6 if fmt == "JPEG" else 3)


def test_the_expectations_follow_what_each_variant_keeps(colour_probes):
    _, probes = colour_probes
    expect = {name: p.expect for name, p in probes.items()}
    # A colour original: grayscale changes the content, so any answer is fine.
    assert expect["grayscale (mode L) PNG"] == ANSWER and expect["RGBA PNG"] == SAME
    assert expect["CMYK JPEG"] == SAME and expect["re-encoded JPEG (quality 90)"] == SAME
    assert expect["very small image (4x4)"] == ANSWER and expect["very large image (4000x4000)"] == ANSWER
    gray = _colour_image().convert("L").convert("RGB")
    gray_probes = {p.name: p for p in image.handler_probes(_image_rows(gray), spec_for(2, serving={"max_request_size": LIMIT}))}
    assert gray_probes["grayscale (mode L) PNG"].expect == SAME, "grayscale of a gray image is the same image"


def test_size_probes_are_those_sizes_and_the_too_large_one_is_above_the_limit(colour_probes):
    _, probes = colour_probes
    assert _open(probes["very small image (4x4)"]).size == (4, 4)
    assert _open(probes["very large image (4000x4000)"]).size == (4000, 4000)
    big = probes[f"above max_request_size ({LIMIT} bytes)"]
    assert len(big.body) > LIMIT and big.expect == REFUSE and big.stages == ("served",)
    assert _open(big).format == "PNG"


def test_record_probes_drop_one_field_or_add_one_and_keep_the_rest():
    body = encode_json({"b": 2.5, "a": 1.0, "c": "x"})
    rows = Rows(kind="json", source=None, ids=("r0", "r1"), labels=np.zeros(2, np.int64),
                content_type=records.CONTENT_TYPE, bodies=MemoryBodies((b"{}", body)))
    assert records.handler_probes(rows, spec_for(2)) == [], "row 0 by default: an empty record has no field to drop"
    missing, extra = records.handler_probes(rows, spec_for(2), index=1)
    assert [(p.name, p.content_type, p.source_index) for p in (missing, extra)] == [
        ("field 'a' missing", records.CONTENT_TYPE, 1), ("an extra field", records.CONTENT_TYPE, 1)]
    original = json.loads(body)
    first = next(iter(original))
    assert missing.expect == REFUSE and json.loads(missing.body) == {k: v for k, v in original.items() if k != first}
    assert first in missing.name
    assert extra.expect == SAME and json.loads(extra.body) == {**original, "client_extra_field": 1}


def test_tensor_probes_drop_one_feature_or_add_a_key():
    rows = tensor_rows(3, width=4)
    short, extra = tensor.handler_probes(rows, spec_for(2), index=2)
    assert [(p.name, p.content_type, p.source_index) for p in (short, extra)] == [
        ("one feature missing", tensor.CONTENT_TYPE, 2), ("an extra key beside 'features'", tensor.CONTENT_TYPE, 2)]
    assert json.loads(extra.body) == {"features": [2.0] * 4, "client": "probe"}
    assert json.loads(tensor.handler_probes(rows, spec_for(2))[0].body) == {"features": [0.0] * 3}, "row 0 by default"
    square = tensor_rows(2, width=4)
    square = Rows(kind="tensor", source=square.source, ids=square.ids, labels=square.labels,
                  content_type=square.content_type, bodies=square.bodies, features=square.features.reshape(2, 2, 2))
    assert json.loads(tensor.handler_probes(square, spec_for(2), index=1)[1].body)["features"] == [1.0] * 4, "flattened"
    assert short.expect == REFUSE and json.loads(short.body) == {"features": [2.0, 2.0, 2.0]}
    assert extra.expect == SAME and json.loads(extra.body)["features"] == [2.0] * 4 and len(json.loads(extra.body)) == 2


def test_text_probes_are_empty_long_and_non_ascii():
    rows = Rows(kind="text", source=None, ids=("r0", "r1"), labels=np.zeros(2, np.int64),
                content_type=text.CONTENT_TYPE, bodies=MemoryBodies((b"other", "hello world".encode())))
    empty, long, other = text.handler_probes(rows, spec_for(2), index=1)
    assert [(p.name, p.content_type, p.source_index) for p in (empty, long, other)] == [
        ("empty text", text.CONTENT_TYPE, 1), ("very long text (100,000 characters)", text.CONTENT_TYPE, 1),
        ("non-ASCII text", text.CONTENT_TYPE, 1)]
    assert long.body == ("hello world " * 8334)[:100_000].encode()
    assert other.body == "Grüße aus Köln, 東京, naïve café 🙂 hello world".encode()
    # A text whose repeats do not fill 100,000 characters exactly still makes 100,000.
    odd = Rows(kind="text", source=None, ids=("r0",), labels=np.zeros(1, np.int64), content_type=text.CONTENT_TYPE,
               bodies=MemoryBodies((("x" * 6).encode(),)))
    assert text.handler_probes(odd, spec_for(2))[1].body == ("xxxxxx " * 14286)[:100_000].encode()
    assert empty.body == b"" and len(long.body.decode()) == 100_000 and long.body.startswith(b"hello world ")
    assert not other.body.decode().isascii() and other.body.decode().endswith("hello world")
    assert {empty.expect, long.expect, other.expect} == {ANSWER}


# --- judgement ---------------------------------------------------------------------------------------

C = codec(2)


def _answer(pred: int):
    return interpret(0, "p", 200, pv_answer(pred, [0.5, 0.5]), C)


ANSWERED_SAME = _answer(1)  # the original row gets class 1
ANSWERED_DIFFERENT = _answer(0)
REFUSED_400 = interpret(0, "p", 400, b'{"message": "bad input: expected an image"}', C)
REFUSED_413 = interpret(0, "p", 413, b"request entity too large", C)
CRASHED_503 = interpret(0, "p", 503, b'{"code": 503, "message": "Prediction failed"}', C)
CRASHED_500 = interpret(0, "p", 500, b'{"code": 500, "message": "Internal Server Error"}', C)
WORKER_DIED = interpret(0, "p", 500, b'{"message": "Worker died."}', C)
UNREADABLE = interpret(0, "p", 200, b"not json", C)
TIMED_OUT = failed(0, "p", "timeout", "no answer in 20 s")
UNAUTHORIZED = interpret(0, "p", 401, b"Token Authorization failed", C)
NOT_FOUND = interpret(0, "p", 404, b'{"message": "Model not found"}', C)

OUTCOMES = {
    "same": [ANSWERED_SAME], "different": [ANSWERED_DIFFERENT], "refused": [REFUSED_400, REFUSED_413],
    "crashed": [CRASHED_503, CRASHED_500, WORKER_DIED, UNREADABLE, TIMED_OUT, UNAUTHORIZED, NOT_FOUND],
}
PASSES = {SAME: {"same"}, ANSWER: {"same", "different", "refused"}, REFUSE: {"refused"}}


@pytest.mark.parametrize("kind, row", [(k, r) for k, rows in OUTCOMES.items() for r in rows],
                         ids=lambda v: v if isinstance(v, str) else f"{v.status}-{v.error_class}")
def test_each_outcome_is_read_as_its_kind(kind, row):
    assert outcome_of(row, 1) == kind


@pytest.mark.parametrize("expect", [SAME, ANSWER, REFUSE])
@pytest.mark.parametrize("kind, row", [(k, r) for k, rows in OUTCOMES.items() for r in rows],
                         ids=lambda v: v if isinstance(v, str) else f"{v.status}-{v.error_class}")
def test_a_probe_passes_exactly_when_its_outcome_is_one_a_correct_handler_gives(expect, kind, row):
    probe = HandlerProbe("p", b"x", "image/png", expect, 0)
    got = judge(probe, "served", row, 1)
    assert got.outcome == kind and got.passed == (kind in PASSES[expect])
    assert (got.probe, got.expect, got.stage, got.status, got.original) == ("p", expect, "served", row.status, 1)
    assert got.predicted == row.predicted


def test_a_crash_on_a_probe_that_may_be_refused_fails_and_names_the_error():
    got = judge(HandlerProbe("very small image (4x4)", b"x", "image/png", ANSWER, 0), "handled", CRASHED_503, 1)
    assert not got.passed and got.outcome == "crashed"
    assert got.message.startswith("handler_error: ") and "Prediction failed" in got.message
    assert got.line() == f"very small image (4x4): expected answer, got crashed: {got.message}"


def test_a_must_refuse_probe_answered_fails():
    probe = HandlerProbe(f"above max_request_size ({LIMIT} bytes)", b"x", "image/png", REFUSE, 0)
    assert not judge(probe, "served", ANSWERED_SAME, 1).passed
    assert not judge(probe, "served", ANSWERED_DIFFERENT, 1).passed
    assert judge(probe, "served", REFUSED_413, 1).passed


def test_a_different_class_is_named_and_an_unknown_original_is_never_the_same():
    got = judge(HandlerProbe("RGBA PNG", b"x", "image/png", SAME, 0), "served", ANSWERED_DIFFERENT, 1)
    assert not got.passed and got.message == "class 0, the original row gets 1"
    # The original row itself failed in that stage: no class to be the same as.
    assert judge(HandlerProbe("RGBA PNG", b"x", "image/png", SAME, 0), "served", ANSWERED_SAME, None).outcome == "different"


def test_a_probe_the_stage_could_not_send_is_not_run_and_not_failed():
    probe = HandlerProbe("big", b"x", "image/png", REFUSE, 0, stages=("served",), note="TorchServe's frontend refuses it")
    got = judge(probe, "handled", None, 1)
    assert (got.outcome, got.passed, got.message, got.status) == ("not run", True, "TorchServe's frontend refuses it", None)
    assert judge(HandlerProbe("x", b"", "t", ANSWER, 0), "handled", None, 1).message == "not sent in the handled stage"


def test_any_other_4xx_is_a_refusal_whatever_its_class_and_401_404_are_not():
    for status in (400, 422, 499):
        assert outcome_of(failed(0, "p", "http_error", f"HTTP {status}", status=status), 1) == "refused"
    assert outcome_of(interpret(0, "p", 422, b'{"message": "unprocessable"}', C), 1) == "refused"
    assert outcome_of(failed(0, "p", "http_error", "HTTP 500", status=500), 1) == "crashed"


def test_an_answer_carries_no_message_and_its_line_no_colon():
    got = judge(HandlerProbe("RGBA PNG", b"x", "image/png", SAME, 0), "served", ANSWERED_SAME, 1)
    assert got.message == "" and got.line() == "RGBA PNG: expected same, got same"


def test_a_not_run_probe_keeps_its_name_expectation_and_stage():
    got = judge(HandlerProbe("big", b"x", "image/png", REFUSE, 0, stages=("served",)), "handled", None, 1)
    assert (got.probe, got.expect, got.stage, got.predicted, got.original) == ("big", REFUSE, "handled", None, 1)


def test_every_image_probe_is_named_typed_and_sent_as_described():
    rows = _image_rows(_colour_image(), before=2)
    probes = image.handler_probes(rows, spec_for(2, serving={"max_request_size": LIMIT}), index=2)
    both, served = ("handled", "served"), ("served",)
    assert [(p.name, p.content_type, p.expect, p.source_index, p.stages, p.note) for p in probes] == [
        ("grayscale (mode L) PNG", image.CONTENT_TYPE, ANSWER, 2, both,
         "the original has colour: grayscale changes the content"),
        ("RGBA PNG", image.CONTENT_TYPE, SAME, 2, both, ""),
        ("palette (mode P) PNG", image.CONTENT_TYPE, ANSWER, 2, both, ""),
        ("CMYK JPEG", image.CONTENT_TYPE, SAME, 2, both, ""),
        ("EXIF-rotated JPEG (orientation 6)", image.CONTENT_TYPE, SAME, 2, both,
         "shown upright by any viewer; a handler that ignores EXIF sees it rotated"),
        ("re-encoded JPEG (quality 90)", image.CONTENT_TYPE, SAME, 2, both, ""),
        ("very small image (4x4)", image.CONTENT_TYPE, ANSWER, 2, both, ""),
        ("very large image (4000x4000)", image.CONTENT_TYPE, ANSWER, 2, both, ""),
        (f"above max_request_size ({LIMIT} bytes)", image.CONTENT_TYPE, REFUSE, 2, served,
         "TorchServe's frontend refuses it before the handler"),
    ]
    assert all(_open(p).size in ((24, 16), (16, 24), (4, 4), (4000, 4000)) for p in probes[:-1]), "made from row 2"
    assert [p.source_index for p in image.handler_probes(_image_rows(_colour_image()), spec_for(2))] == [0] * 9


def test_an_image_of_few_colours_keeps_them_in_its_palette_and_a_gray_one_in_grayscale():
    few = Image.new("RGB", (8, 6), (10, 200, 30))
    few.paste((250, 5, 5), (0, 0, 4, 3))
    probes = {p.name: p for p in image.handler_probes(_image_rows(few), spec_for(2))}
    assert probes["palette (mode P) PNG"].expect == SAME, "an exact palette is the same image"
    assert probes["grayscale (mode L) PNG"].expect == ANSWER, "two colours are not gray"
    for fixed in (0, 1, 2):  # one channel differs from the other two: not gray
        px = np.zeros((4, 4, 3), np.uint8) + 90
        px[..., fixed] = 20
        p = {q.name: q for q in image.handler_probes(_image_rows(Image.fromarray(px, "RGB")), spec_for(2))}
        assert p["grayscale (mode L) PNG"].expect == ANSWER and p["grayscale (mode L) PNG"].note
    gray = {p.name: p for p in image.handler_probes(_image_rows(Image.new("RGB", (4, 4), (90, 90, 90))), spec_for(2))}
    assert gray["grayscale (mode L) PNG"].note == ""
    assert _mean_abs(_open(gray["grayscale (mode L) PNG"]).convert("RGB"), Image.new("RGB", (4, 4), (90, 90, 90))) < 1


def test_a_palette_of_a_many_coloured_image_is_not_the_same_image(colour_probes):
    original, probes = colour_probes
    p = probes["palette (mode P) PNG"]
    assert p.expect == ANSWER and _open(p).mode == "P"
    assert 0 < _mean_abs(_open(p).convert("RGB"), original) < 6, "an adaptive palette: close, not exact"


def test_a_gray_original_stored_in_mode_l_is_read_as_rgb_and_its_grayscale_is_the_same_image():
    x, y = np.meshgrid(np.arange(12), np.arange(8))
    gray = Image.fromarray((x * 20 + y).astype(np.uint8), "L")
    probes = {p.name: p for p in image.handler_probes(_image_rows(gray), spec_for(2))}
    assert probes["grayscale (mode L) PNG"].expect == SAME and probes["RGBA PNG"].expect == SAME
    assert _open(probes["CMYK JPEG"]).mode == "CMYK" and _open(probes["RGBA PNG"]).mode == "RGBA"
