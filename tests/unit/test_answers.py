"""The answer decoders: one test per accept/reject rule of every format, envelope, the codec and the class map."""

import base64
import json
import math

import numpy as np
import pytest

from pipeline.answers import envelopes, logits, mapping, package_validate, topk
from pipeline.answers.base import (AnswerError, Carries, ClassMap, Prediction, argmax_carried, check_probabilities,
                                   numbers, parse_json, softmax)
from pipeline.answers.classes import class_map_for, read_label_map
from pipeline.answers.registry import _requirement, codec_for, decoder_for, sniff_format
from pipeline.errors import ConfigError
from tests.unit._support import codec, pv_answer, spec_for

ABC = ClassMap(("a", "b", "c"), "model.class_names")


# --- base: JSON, numbers, probabilities ---------------------------------------------------------------------------

def test_parse_json_reads_bytes_and_text_and_passes_documents_through():
    assert parse_json(b'{"a": 1}') == {"a": 1}
    assert parse_json(bytearray(b"[1, 2]")) == [1, 2]
    assert parse_json("[3]") == [3]
    doc = {"already": "parsed"}
    assert parse_json(doc) is doc


@pytest.mark.parametrize("body, why", [
    (b"\xff\xfe{", "the answer is not UTF-8 text"),
    (b"not json", "the answer is not JSON"),
    ("{'single': 'quotes'}", "the answer is not JSON"),
    (b"", "the answer is not JSON"),
])
def test_parse_json_rejects_what_is_not_json(body, why):
    with pytest.raises(AnswerError, match=why):
        parse_json(body)


def test_numbers_accepts_finite_numbers_of_the_right_length():
    arr = numbers([1, 2.5, -3], "x", 3)
    assert arr.dtype == np.float64 and arr.tolist() == [1.0, 2.5, -3.0]
    assert numbers((0, 1), "x").tolist() == [0.0, 1.0]
    assert numbers([], "x").tolist() == []


@pytest.mark.parametrize("values, length, why", [
    ({"a": 1}, None, "x must be a list of numbers, got dict"),
    ("0.5", None, "x must be a list of numbers, got str"),
    ([1, 2], 3, "x must hold 3 numbers, got 2"),
    ([1, 2, 3, 4], 3, "x must hold 3 numbers, got 4"),
    ([1, True], None, r"x must hold only numbers, got \[1, True\]"),
    ([1, "2"], None, "x must hold only numbers"),
    ([1, None], None, "x must hold only numbers"),
    ([1, [2]], None, "x must hold only numbers"),
    ([1, float("nan")], None, "x holds NaN or infinity"),
    ([float("inf"), 0], None, "x holds NaN or infinity"),
    ([-float("inf")], None, "x holds NaN or infinity"),
])
def test_numbers_rejects(values, length, why):
    with pytest.raises(AnswerError, match=why):
        numbers(values, "x", length)


@pytest.mark.parametrize("p", [[0.0, 1.0], [0.5, 0.5 + 1e-5], [-1e-7, 1.0], [1 + 1e-7, np.nan], [np.nan, np.nan],
                               [0.2, 0.3]])
def test_check_probabilities_accepts(p):
    check_probabilities(np.array(p, dtype=float), "p")


@pytest.mark.parametrize("p, why", [
    ([-1e-5, 0.5], r"p holds values outside \[0, 1\]"),
    ([1 + 1e-5, np.nan], r"p holds values outside \[0, 1\]"),
    ([2.0, np.nan], r"outside \[0, 1\]: \[2.0\]"),
    ([0.6, 0.6], "p sum to 1.200000, more than 1: not probabilities"),
    ([0.5, 0.5 + 2e-4], "more than 1"),
])
def test_check_probabilities_rejects(p, why):
    with pytest.raises(AnswerError, match=why):
        check_probabilities(np.array(p, dtype=float), "p")


def test_softmax_is_stable_and_normalised():
    p = softmax(np.array([1000.0, 1000.0, 998.0], dtype=np.float32))
    assert p.dtype == np.float64 and p.sum() == pytest.approx(1.0)
    assert p[0] == pytest.approx(p[1]) and p[2] == pytest.approx(math.exp(-2) / (2 + math.exp(-2)))
    assert softmax(np.array([0.0, math.log(3)])) == pytest.approx([0.25, 0.75])


def test_argmax_carried_ignores_classes_not_carried_and_takes_the_first_tie():
    assert argmax_carried(np.array([np.nan, 0.2, 0.7])) == 2
    assert argmax_carried(np.array([0.1, np.nan, 0.05])) == 0
    assert argmax_carried(np.array([0.3, 0.4, 0.4])) == 1


def test_class_map_finds_labels_and_names_the_source_of_an_unknown_one():
    assert [ABC.index_of(x) for x in "abc"] == [0, 1, 2]
    with pytest.raises(AnswerError, match=r"label 'd' is not a class of the model \(model.class_names: \['a', 'b', 'c'\]\)"):
        ABC.index_of("d")


def test_classes_carried_counts_logits_then_finite_probabilities():
    assert Prediction(0).classes_carried == 0
    assert Prediction(0, np.array([0.5, np.nan, 0.2])).classes_carried == 2
    assert Prediction(0, np.array([np.nan, np.nan, 0.2]), np.zeros(3)).classes_carried == 3
    assert Prediction(0, None, np.zeros(4)).classes_carried == 4


@pytest.mark.parametrize("carries, words", [
    (Carries("all", True), "logits and probabilities of every class"),
    (Carries("all", False), "probabilities of every class"),
    (Carries("top_k", False), "probabilities of the top-k classes"),
    (Carries("some", False), "probabilities of the classes each answer names"),
    (Carries("none", True), "logits"),
    (Carries("none", False), "only the predicted class"),
])
def test_carries_describe(carries, words):
    assert carries.describe() == words


# --- package_validate ---------------------------------------------------------------------------------------------

PV = package_validate.Decoder(3)


def test_package_validate_decodes_prediction_probabilities_and_logits():
    pred = PV.decode({"prediction": 2, "probabilities": [0.1, 0.2, 0.7], "logits": [0, 1, 2]})
    assert pred.index == 2 and pred.probabilities.tolist() == [0.1, 0.2, 0.7] and pred.logits.tolist() == [0, 1, 2]
    assert PV.decode({"prediction": 0, "probabilities": [1, 0, 0]}).logits is None
    assert PV.decode({"prediction": 0, "probabilities": [1, 0, 0], "logits": None}).logits is None
    assert PV.carries == Carries("all", True) and PV.name == "package_validate"


@pytest.mark.parametrize("doc, why", [
    ([0.1, 0.9], "expected a JSON object with 'prediction' and 'probabilities', got list"),
    ({"probabilities": [0.2, 0.3, 0.5]}, r"'prediction' must be a class index in 0..2, got None"),
    ({"prediction": 3, "probabilities": [0.2, 0.3, 0.5]}, "got 3"),
    ({"prediction": -1, "probabilities": [0.2, 0.3, 0.5]}, "got -1"),
    ({"prediction": True, "probabilities": [0.2, 0.3, 0.5]}, "got True"),
    ({"prediction": 1.0, "probabilities": [0.2, 0.3, 0.5]}, "got 1.0"),
    ({"prediction": "1", "probabilities": [0.2, 0.3, 0.5]}, "got '1'"),
    ({"prediction": 1}, "'probabilities' must be a list of numbers, got NoneType"),
    ({"prediction": 1, "probabilities": [0.5, 0.5]}, "'probabilities' must hold 3 numbers, got 2"),
    ({"prediction": 1, "probabilities": [0.5, 0.5, float("nan")]}, "'probabilities' holds NaN or infinity"),
    ({"prediction": 1, "probabilities": [0.5, 0.6, 0.1]}, "'probabilities' sum to 1.200000"),
    ({"prediction": 1, "probabilities": [-0.5, 0.6, 0.1]}, r"outside \[0, 1\]"),
    ({"prediction": 1, "probabilities": [0.2, 0.3, 0.5], "logits": [1, 2]}, "'logits' must hold 3 numbers, got 2"),
    ({"prediction": 1, "probabilities": [0.2, 0.3, 0.5], "logits": [1, 2, "x"]}, "'logits' must hold only numbers"),
])
def test_package_validate_rejects(doc, why):
    with pytest.raises(AnswerError, match=why):
        PV.decode(doc)


def test_package_validate_looks_like():
    assert package_validate.looks_like({"prediction": 0, "probabilities": []})
    assert not package_validate.looks_like({"prediction": 0})
    assert not package_validate.looks_like({"probabilities": []})
    assert not package_validate.looks_like([{"prediction": 0, "probabilities": []}])


# --- topk ---------------------------------------------------------------------------------------------------------

TOPK = topk.Decoder(3, ABC)


def test_topk_decodes_carried_classes_and_predicts_the_most_probable():
    pred = TOPK.decode({"c": 0.6, "a": 0.3})
    assert pred.index == 2 and pred.logits is None
    assert pred.probabilities[0] == 0.3 and pred.probabilities[2] == 0.6 and math.isnan(pred.probabilities[1])
    assert TOPK.decode([{"b": 1}]).index == 1, "a one-element list of the object (a batch of one) is unwrapped"
    assert TOPK.carries == Carries("top_k", False)


@pytest.mark.parametrize("doc, why", [
    ({}, r"expected a JSON object \{label: probability\}, got '\{\}'"),
    ([0.1, 0.9], r"expected a JSON object \{label: probability\}"),
    ([{"a": 0.1}, {"b": 0.2}], "expected a JSON object"),
    ("a", "expected a JSON object"),
    ({"a": "0.5"}, "probability of 'a' must be a number, got '0.5'"),
    ({"a": True}, "probability of 'a' must be a number, got True"),
    ({"a": None}, "probability of 'a' must be a number"),
    ({"a": float("nan"), "b": 0.2}, "the answer holds NaN or infinity"),
    ({"a": float("inf"), "b": 0.2}, "the answer holds NaN or infinity"),
    ({"d": 0.5}, "label 'd' is not a class of the model"),
    ({"a": 0.7, "b": 0.7}, "sum to 1.400000"),
    ({"a": 1.5}, r"outside \[0, 1\]"),
])
def test_topk_rejects(doc, why):
    with pytest.raises(AnswerError, match=why):
        TOPK.decode(doc)


def test_topk_rejects_a_class_named_twice():
    by_index = topk.Decoder(3, ClassMap(("0", "1", "2"), "class indices"))
    with pytest.raises(AnswerError, match="class 1 appears twice in the answer"):
        by_index.decode({1: 0.2, "1": 0.3})  # two keys, one label: a parsed document, not JSON text


def test_topk_looks_like_needs_known_labels_and_numbers():
    assert topk.looks_like({"a": 0.5}, ABC) and topk.looks_like([{"a": 1}], ABC)
    assert not topk.looks_like({"a": 0.5, "z": 0.1}, ABC)
    assert not topk.looks_like({"a": True}, ABC) and not topk.looks_like({"a": "0.5"}, ABC)
    assert not topk.looks_like({}, ABC) and not topk.looks_like([0.5], ABC) and not topk.looks_like([], ABC)


# --- logits -------------------------------------------------------------------------------------------------------

LOGITS = logits.Decoder(3)


def test_logits_decodes_a_list_and_its_softmax():
    pred = LOGITS.decode([0.0, 2.0, 1.0])
    assert pred.index == 1 and pred.logits.tolist() == [0.0, 2.0, 1.0]
    assert pred.probabilities == pytest.approx(softmax(np.array([0.0, 2.0, 1.0])))
    assert LOGITS.decode([[3, 1, 2]]).index == 0, "a batch of one is unwrapped"
    assert LOGITS.carries == Carries("all", True)


@pytest.mark.parametrize("doc, why", [
    ({"logits": [1, 2, 3]}, "expected a list of 3 numbers, got dict"),
    ([1, 2], "the answer must hold 3 numbers, got 2"),
    ([[1, 2, 3], [1, 2, 3]], "the answer must hold 3 numbers, got 2"),
    ([1, 2, None], "the answer must hold only numbers"),
    ([1, 2, float("nan")], "holds NaN or infinity"),
])
def test_logits_rejects(doc, why):
    with pytest.raises(AnswerError, match=why):
        LOGITS.decode(doc)


def test_logits_looks_like_needs_exactly_the_classes():
    assert logits.looks_like([1, 2, 3], 3) and logits.looks_like([[1, 2.5, 3]], 3)
    assert not logits.looks_like([1, 2], 3) and not logits.looks_like([1, 2, True], 3)
    assert not logits.looks_like([1, 2, "3"], 3) and not logits.looks_like({"a": 1}, 3)
    assert not logits.looks_like([[1, 2, 3], [1, 2, 3], [1, 2, 3]], 3)


# --- mapping ------------------------------------------------------------------------------------------------------

def _mapping(**paths):
    from pipeline.spec import AnswerMapping

    return mapping.Decoder(3, ABC, AnswerMapping(**paths))


DOC = {"result": {"scores": [0.1, 0.7, 0.2], "by_label": {"a": 0.1, "b": 0.7}, "raw": [0, 3, 1],
                  "top": [{"label": "b", "index": 1}, {"label": "c", "index": 2}]}}


def test_get_path_walks_objects_and_list_indices():
    assert mapping.get_path(DOC, "result.top.0.label") == "b"
    assert mapping.get_path(DOC, "result.top.-1.index") == 2
    assert mapping.get_path({"0": "key"}, "0") == "key"


@pytest.mark.parametrize("path, stop", [("result.missing", "missing"), ("result.top.2.label", "2"),
                                        ("result.top.-3", "-3"), ("result.top.x", "x"),
                                        ("result.scores.0.deeper", "deeper"), ("nothing", "nothing")])
def test_get_path_names_where_it_stopped(path, stop):
    with pytest.raises(AnswerError, match=rf"the answer has no '{path}' \(stopped at '{stop}'\)"):
        mapping.get_path(DOC, path)


def test_mapping_carries_what_it_declares():
    from pipeline.spec import AnswerMapping

    assert mapping.carries_of(AnswerMapping(label="x")) == Carries("none", False)
    assert mapping.carries_of(AnswerMapping(probabilities="x")) == Carries("some", False)
    assert mapping.carries_of(AnswerMapping(logits="x")) == Carries("all", True)
    assert mapping.carries_of(AnswerMapping(logits="x", probabilities="y")) == Carries("all", True)
    assert _mapping(prediction="p").carries == Carries("none", False)


def test_mapping_reads_each_declared_path():
    pred = _mapping(probabilities="result.scores").decode(DOC)
    assert pred.index == 1 and pred.probabilities.tolist() == [0.1, 0.7, 0.2] and pred.logits is None
    pred = _mapping(probabilities="result.by_label").decode(DOC)
    assert pred.index == 1 and pred.probabilities[:2].tolist() == [0.1, 0.7] and math.isnan(pred.probabilities[2])
    pred = _mapping(logits="result.raw").decode(DOC)
    assert pred.index == 1 and pred.logits.tolist() == [0, 3, 1]
    assert pred.probabilities == pytest.approx(softmax(np.array([0.0, 3.0, 1.0])))
    pred = _mapping(logits="result.raw", probabilities="result.scores").decode(DOC)
    assert pred.probabilities.tolist() == [0.1, 0.7, 0.2], "declared probabilities win over the logits' softmax"
    pred = _mapping(label="result.top.1.label").decode(DOC)
    assert (pred.index, pred.probabilities, pred.logits) == (2, None, None)
    pred = _mapping(prediction="result.top.0.index").decode(DOC)
    assert pred.index == 1 and pred.probabilities is None


def test_mapping_prediction_or_label_fixes_the_class_over_the_scores():
    assert _mapping(prediction="result.top.1.index", probabilities="result.scores").decode(DOC).index == 2
    assert _mapping(label="result.top.1.label", logits="result.raw").decode(DOC).index == 2
    both = _mapping(prediction="result.top.1.index", label="result.top.1.label").decode(DOC)
    assert both.index == 2


@pytest.mark.parametrize("paths, doc, why", [
    ({"prediction": "p"}, {"p": 3}, r"'p' must be a class index in 0..2, got 3"),
    ({"prediction": "p"}, {"p": -1}, "got -1"),
    ({"prediction": "p"}, {"p": True}, "got True"),
    ({"prediction": "p"}, {"p": "1"}, "got '1'"),
    ({"prediction": "p"}, {"q": 1}, r"the answer has no 'p'"),
    ({"label": "l"}, {"l": "z"}, "label 'z' is not a class of the model"),
    ({"prediction": "p", "label": "l"}, {"p": 0, "l": "b"}, "'p' says class 0 but 'l' names class 1"),
    ({"probabilities": "s"}, {"s": [0.5, 0.5]}, "'s' must hold 3 numbers, got 2"),
    ({"probabilities": "s"}, {"s": [0.5, 0.5, 0.5]}, "sum to 1.500000"),
    ({"probabilities": "s"}, {"s": {"a": "x"}}, "probability of 'a' must be a number, got 'x'"),
    ({"probabilities": "s"}, {"s": {"a": False}}, "probability of 'a' must be a number, got False"),
    ({"probabilities": "s"}, {"s": {"a": float("nan")}}, "probability of 'a' is NaN or infinity"),
    ({"probabilities": "s"}, {"s": {"z": 0.5}}, "label 'z' is not a class"),
    ({"probabilities": "s"}, {"s": {"a": 1.2}}, r"outside \[0, 1\]"),
    ({"logits": "r"}, {"r": [1, 2]}, "'r' must hold 3 numbers, got 2"),
    ({"logits": "r"}, {"r": "123"}, "'r' must be a list of numbers"),
])
def test_mapping_rejects(paths, doc, why):
    with pytest.raises(AnswerError, match=why):
        _mapping(**paths).decode(doc)


# --- envelopes ----------------------------------------------------------------------------------------------------

PLAIN, V1, V2 = envelopes.ENVELOPES["none"], envelopes.ENVELOPES["kserve_v1"], envelopes.ENVELOPES["kserve_v2"]
JSON = "application/json"


def test_envelope_paths_and_names():
    assert PLAIN.path("m") == "/predictions/m" and PLAIN.service_envelope is None
    assert V1.path("m") == "/v1/models/m:predict" and V1.service_envelope == "kserve"
    assert V2.path("m") == "/v2/models/m/infer" and V2.service_envelope == "kservev2"
    assert set(envelopes.ENVELOPES) == {"none", "kserve_v1", "kserve_v2"}


def test_plain_sends_the_body_as_is():
    assert PLAIN.wrap(b"\x00\x01", "image/png", b"\x00\x01") == (b"\x00\x01", "image/png")
    assert PLAIN.unwrap(b'{"a": 1}') == {"a": 1}
    with pytest.raises(AnswerError, match="not JSON"):
        PLAIN.unwrap(b"<html>")


def test_kserve_v1_wraps_each_kind_of_body():
    body, ct = V1.wrap(b'{"features":[1,2]}', JSON, {"features": [1, 2]})
    assert ct == JSON and json.loads(body) == {"instances": [{"data": {"features": [1, 2]}}]}
    assert json.loads(V1.wrap(b"hi", "text/plain", "hi")[0]) == {"instances": [{"data": "hi"}]}
    raw = b"\x89PNG"
    assert json.loads(V1.wrap(raw, "image/png", raw)[0]) == {"instances": [{"data": base64.b64encode(raw).decode()}]}
    bad = b"{not json"
    assert json.loads(V1.wrap(bad, JSON, bad)[0])["instances"][0]["data"] == base64.b64encode(bad).decode()
    nonutf = b"\xff"
    assert json.loads(V1.wrap(nonutf, "text/plain", nonutf)[0])["instances"][0]["data"] == "/w=="


def test_kserve_v1_unwraps_the_first_prediction():
    assert V1.unwrap(b'{"predictions": [{"a": 0.5}, {"b": 1}]}') == {"a": 0.5}
    assert V1.unwrap(b'{"predictions": ["{\\"prediction\\": 1}"]}') == {"prediction": 1}
    assert V1.unwrap(b'{"predictions": ["plain text"]}') == "plain text"
    assert V1.unwrap(b'{"predictions": [[1, 2]]}') == [1, 2]


@pytest.mark.parametrize("body", [b'{"outputs": [1]}', b'{"predictions": []}', b'{"predictions": {"a": 1}}',
                                  b"[1, 2]", b'{"predictions": null}'])
def test_kserve_v1_rejects_an_answer_without_predictions(body):
    with pytest.raises(AnswerError, match="a KServe v1 answer needs a non-empty 'predictions' list"):
        V1.unwrap(body)


def test_kserve_v2_wraps_features_as_fp32_and_anything_else_as_bytes():
    body, ct = V2.wrap(b"", JSON, {"features": [1, 2.5]})
    assert ct == JSON
    assert json.loads(body) == {"inputs": [{"name": "input-0", "shape": [2], "datatype": "FP32", "data": [1, 2.5]}]}
    doc = {"text": "hi"}
    t = json.loads(V2.wrap(b"", JSON, doc)[0])["inputs"][0]
    assert t["datatype"] == "BYTES" and t["shape"] == [1] and t["data"] == ['{"text":"hi"}']
    two = {"features": [1], "extra": 2}
    assert json.loads(V2.wrap(b"", JSON, two)[0])["inputs"][0]["datatype"] == "BYTES"
    words = {"features": ["a"]}
    assert json.loads(V2.wrap(b"", JSON, words)[0])["inputs"][0]["datatype"] == "BYTES"
    assert json.loads(V2.wrap(b"hi", "text/plain", "hi")[0])["inputs"][0]["data"] == ["hi"]
    raw = b"\x89PNG"
    assert json.loads(V2.wrap(raw, "image/png", raw)[0])["inputs"][0]["data"] == [base64.b64encode(raw).decode()]


def test_kserve_v2_unwraps_the_first_outputs_data():
    assert V2.unwrap(b'{"outputs": [{"data": [0.1, 0.9]}]}') == [0.1, 0.9]
    assert V2.unwrap(b'{"outputs": [{"data": ["{\\"a\\": 1}"]}]}') == {"a": 1}
    assert V2.unwrap(b'{"outputs": [{"data": [{"a": 1}]}]}') == {"a": 1}
    assert V2.unwrap(b'{"outputs": [{"data": ["text"]}]}') == "text"
    assert V2.unwrap(b'{"outputs": [{"data": [5]}]}') == [5]
    assert V2.unwrap(b'{"outputs": [{"data": ["a", "b"]}]}') == ["a", "b"]


@pytest.mark.parametrize("body, why", [
    (b'{"predictions": [1]}', "a KServe v2 answer needs a non-empty 'outputs' list"),
    (b'{"outputs": []}', "non-empty 'outputs' list"),
    (b'{"outputs": [[1, 2]]}', "non-empty 'outputs' list"),
    (b'{"outputs": {"data": [1]}}', "non-empty 'outputs' list"),
    (b"[1]", "non-empty 'outputs' list"),
    (b'{"outputs": [{"name": "x"}]}', "a KServe v2 output needs a non-empty 'data' list"),
    (b'{"outputs": [{"data": []}]}', "non-empty 'data' list"),
    (b'{"outputs": [{"data": "x"}]}', "non-empty 'data' list"),
])
def test_kserve_v2_rejects_an_answer_without_outputs(body, why):
    with pytest.raises(AnswerError, match=why):
        V2.unwrap(body)


def test_kserve_v2_hands_a_task_every_output_by_name_and_one_outputs_list_as_it_is():
    named = {"outputs": [{"name": "boxes", "shape": [1, 4], "datatype": "FP32", "data": [0, 0, 2, 2]},
                         {"name": "labels", "shape": [1], "datatype": "INT64", "data": [1]},
                         {"name": "scores", "shape": [1], "datatype": "FP32", "data": [0.9]}]}
    assert V2.unwrap_outputs(json.dumps(named).encode()) == {"boxes": [0, 0, 2, 2], "labels": [1], "scores": [0.9]}
    assert V2.unwrap(json.dumps(named).encode()) == [0, 0, 2, 2], "other formats still read the first output"
    # TorchServe's built-in object_detector under kservev2: its boxes as one BYTES output, one box or none
    assert V2.unwrap_outputs(b'{"outputs": [{"name": "input-0", "data": [{"a": [0, 0, 1, 1], "score": 0.9}]}]}') == [
        {"a": [0, 0, 1, 1], "score": 0.9}]
    assert V2.unwrap_outputs(b'{"outputs": [{"name": "input-0", "data": []}]}') == []
    assert V2.unwrap_outputs(b'{"outputs": [{"data": ["{\\"boxes\\": []}"]}]}') == {"boxes": []}
    assert V2.unwrap_outputs(b'{"outputs": [{"data": [0.5]}]}') == [0.5]
    assert envelopes.KServeV1().unwrap_outputs(b'{"predictions": [{"boxes": []}]}') == {"boxes": []}
    assert envelopes.Plain().unwrap_outputs(b'{"boxes": []}') == {"boxes": []}


@pytest.mark.parametrize("body, why", [
    (b'{"outputs": [{"name": "boxes", "data": [1]}, {"name": "boxes", "data": [2]}]}', "two outputs 'boxes'"),
    (b'{"outputs": [{"name": "boxes", "data": [1]}, {"data": [2]}]}', "needs a 'name' and a 'data' list"),
    (b'{"outputs": [{"name": "boxes", "data": [1]}, {"name": "labels", "data": 2}]}', "a 'data' list"),
    (b'{"outputs": [{"name": "boxes", "data": [1]}, {"name": 3, "data": [2]}]}', "needs a 'name'"),
    (b'{"outputs": [{"name": "boxes", "data": "x"}]}', "a KServe v2 output needs a 'data' list"),
    (b'{"outputs": []}', "non-empty 'outputs' list"),
])
def test_kserve_v2_outputs_a_task_cannot_read_by_name_are_refused_naming_why(body, why):
    with pytest.raises(AnswerError, match=why):
        V2.unwrap_outputs(body)


DETECT = {"model": {"task": "detection", "class_names": ["background", "red_box", "green_disc"]}}


@pytest.mark.parametrize("envelope, body, boxes, labels", [
    ("kserve_v2", {"outputs": [{"name": "scores", "data": [0.9, 0.6]}, {"name": "labels", "data": [2, 1]},
                               {"name": "boxes", "shape": [2, 4], "data": [0, 0, 2, 2, 1, 1, 3, 3]}]},
     [[0, 0, 2, 2], [1, 1, 3, 3]], [2, 1]),
    ("kserve_v2", {"outputs": [{"name": "input-0", "datatype": "BYTES",
                                "data": [{"green_disc": [1, 2, 3, 4], "score": 0.8}]}]}, [[1, 2, 3, 4]], [2]),
    ("kserve_v2", {"outputs": [{"name": "input-0", "datatype": "BYTES", "data": []}]}, [], []),
    ("kserve_v1", {"predictions": [{"boxes": [[0, 0, 2, 2]], "labels": [1], "scores": [0.7]}]}, [[0, 0, 2, 2]], [1]),
])
def test_a_detection_codec_reads_named_outputs_and_the_builtins_one_or_no_box_without_user_code(
        envelope, body, boxes, labels):
    c = codec(3, **DETECT, answers={"envelope": envelope})
    assert c.outputs_by_name
    got = c.decode(json.dumps(body).encode()).extra["boxes"]
    assert got.boxes.reshape(-1, 4).tolist() == boxes and got.labels.tolist() == labels


def test_a_classification_codec_reads_the_first_output_as_before():
    assert not codec(3, answers={"envelope": "kserve_v2"}).outputs_by_name


# --- registry: the codec, format auto, the top_k requirement -------------------------------------------------------

def test_decoder_for_every_format_and_none_other():
    spec = spec_for(3, answers={"format": "mapping", "mapping": {"label": "l"}})
    cm = class_map_for(spec)
    for name, cls in (("package_validate", package_validate.Decoder), ("topk", topk.Decoder),
                      ("logits", logits.Decoder), ("mapping", mapping.Decoder)):
        d = decoder_for(name, spec, cm)
        assert isinstance(d, cls) and d.num_classes == 3
    with pytest.raises(ValueError, match="unknown answer format 'xml'"):
        decoder_for("xml", spec, cm)


def test_sniff_format_by_shape():
    cm = ClassMap(("0", "1", "2"), "class indices")
    assert sniff_format({"prediction": 1, "probabilities": [0, 1, 0]}, 3, cm) == "package_validate"
    assert sniff_format([0.1, 2, 3], 3, cm) == "logits"
    assert sniff_format({"0": 0.5, "2": 0.1}, 3, cm) == "topk"
    assert sniff_format({"x": 0.5}, 3, cm) is None
    assert sniff_format([1, 2], 3, cm) is None


@pytest.mark.parametrize("top_k, fmt, builtin, required, words", [
    ("all", "topk", 5, 4, "answers.top_k: all"),
    (2, "package_validate", None, 2, "answers.top_k: 2"),
    (None, "topk", None, 4, "the handler's top-4 (answers.top_k default)"),
    (None, "topk", 3, 3, "the handler's top-3 (answers.top_k default)"),
    (None, "topk", 9, 4, "the handler's top-4 (answers.top_k default)"),
    (None, "package_validate", None, 4, "the package_validate format (every class)"),
    (None, "logits", None, 4, "the logits format (every class)"),
    (None, "mapping", None, 0, "nothing (answers.top_k unset)"),
])
def test_the_top_k_requirement(top_k, fmt, builtin, required, words):
    answers = {"top_k": top_k} if top_k is not None else {}
    spec = spec_for(4, answers=answers)
    assert _requirement(spec, fmt, builtin) == {"required_classes": required, "required_words": words}


def test_a_codec_for_a_chosen_format():
    c = codec(3, "topk", builtin_top_k=2, answers={"envelope": "kserve_v1"})
    assert (c.format, c.required_classes, c.chosen_by) == ("topk", 2, "the test")
    assert c.envelope is envelopes.ENVELOPES["kserve_v1"] and c.carries == Carries("top_k", False)
    assert c.request(b"hi", "text/plain", "hi") == V1.wrap(b"hi", "text/plain", "hi")
    auto = codec(3, "auto")
    assert auto.decoder is None and auto.carries is None
    assert (auto.required_classes, auto.required_words) == (0, "nothing yet")


def test_decode_requires_the_classes_the_codec_promises():
    c = codec(3, "topk", builtin_top_k=2)
    assert c.decode(b'{"0": 0.6, "1": 0.3}').index == 0
    with pytest.raises(AnswerError, match=r"the answer carries 1 class\(es\) but the handler's top-2 \(answers.top_k "
                                          r"default\) requires 2"):
        c.decode(b'{"0": 0.6}')
    pv = codec(3, "package_validate", answers={"top_k": "all"})
    assert pv.decode(pv_answer(1, [0.2, 0.5, 0.3])).index == 1


def test_decode_takes_the_envelope_off_first():
    c = codec(2, "package_validate", answers={"envelope": "kserve_v2"})
    body = json.dumps({"outputs": [{"data": [json.dumps({"prediction": 1, "probabilities": [0.1, 0.9]})]}]})
    assert c.decode(body.encode()).index == 1
    with pytest.raises(AnswerError, match="KServe v2"):
        c.decode(pv_answer(1, [0.1, 0.9]))


def test_auto_settles_on_the_first_answers_format():
    auto = codec(3, "auto")
    with pytest.raises(AnswerError, match=r"the answer's format is not recognised \(answers.format: auto\)"):
        auto.decode(pv_answer(0, [1, 0, 0]))
    pv = auto.settle(pv_answer(0, [1, 0, 0]))
    assert pv.format == "package_validate" and isinstance(pv.decoder, package_validate.Decoder)
    assert pv.required_classes == 3 and pv.required_words == "the package_validate format (every class)"
    assert pv.chosen_by == "the first answer's shape (answers.format: auto)"
    assert pv.settle(b"[1, 2, 3]") is pv, "a settled codec stays settled"
    lg = auto.settle(b"[1, 2, 3]")
    assert lg.format == "logits" and lg.required_classes == 3 and lg.decode(b"[1, 5, 3]").index == 1
    assert auto.format == "auto" and auto.decoder is None, "settle returns a new codec"


@pytest.mark.parametrize("body", [b"not json", b'{"unknown": "shape"}', b"[1, 2]"])
def test_auto_stays_unsettled_on_an_answer_it_cannot_read(body):
    auto = codec(3, "auto")
    assert auto.settle(body) is auto


def test_auto_stays_unsettled_when_the_envelope_does_not_fit():
    auto = codec(3, "auto", answers={"envelope": "kserve_v1"})
    assert auto.settle(b'{"outputs": []}') is auto


def test_auto_topk_without_top_k_requires_what_the_first_answer_carried():
    auto = codec(3, "auto")
    tk = auto.settle(b'{"0": 0.5, "2": 0.25}')
    assert tk.format == "topk" and tk.required_classes == 2
    assert tk.required_words == "the first answer's 2 class(es) (answers.top_k unset)"
    assert tk.decode(b'{"1": 0.5, "2": 0.25}').index == 1
    with pytest.raises(AnswerError, match=r"carries 1 class\(es\) but the first answer's 2 class\(es\)"):
        tk.decode(b'{"1": 0.5}')


def test_a_mapping_without_top_k_requires_what_the_first_answer_carried():
    m = codec(3, "mapping", answers={"format": "mapping", "mapping": {"probabilities": "p"}})
    assert m.required_classes == 0 and m.chosen_by == "the test"
    settled = m.settle(b'{"p": {"0": 0.5, "2": 0.25}}')
    assert settled.format == "mapping" and settled.chosen_by == "the test" and settled.decoder is m.decoder
    assert settled.required_classes == 2
    assert settled.required_words == "the first answer's 2 class(es) (answers.top_k unset)"
    assert settled.settle(b'{"p": {"0": 1.0}}') is settled
    with pytest.raises(AnswerError, match=r"carries 1 class\(es\) but the first answer's 2 class\(es\)"):
        settled.decode(b'{"p": {"1": 0.5}}')
    assert m.settle(b"not json") is m
    bad_first = m.settle(b'{"p": {"0": 2.0}}')
    assert bad_first.required_classes == 0


def test_a_format_with_its_requirement_is_already_settled():
    for c in (codec(3, "topk", builtin_top_k=2), codec(3, "logits"),
              codec(3, "mapping", answers={"format": "mapping", "mapping": {"probabilities": "p"}, "top_k": 2})):
        settled = c.settle(b'{"0": 0.5}')
        assert (settled.format, settled.decoder, settled.required_classes, settled.required_words) == (
            c.format, c.decoder, c.required_classes, c.required_words)
        assert settled.settle(b'{"0": 0.5}') is settled


def test_auto_topk_with_top_k_set_requires_top_k():
    tk = codec(3, "auto", answers={"top_k": 3}).settle(b'{"0": 0.5, "2": 0.25}')
    assert tk.format == "topk" and tk.required_classes == 3 and tk.required_words == "answers.top_k: 3"


def test_auto_topk_whose_first_answer_does_not_decode_requires_nothing():
    tk = codec(3, "auto").settle(b'{"0": 0.9, "2": 0.9}')  # known labels, but probabilities summing to 1.8
    assert tk.format == "topk" and tk.required_classes == 0
    with pytest.raises(AnswerError, match="more than 1"):
        tk.decode(b'{"0": 0.9, "2": 0.9}')


# --- the class map: index_to_name.json and model.class_names --------------------------------------------------------

def _label_map(tmp_path, doc) -> "Path":
    path = tmp_path / "index_to_name.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def test_read_label_map_as_torchserve_reads_it(tmp_path):
    assert read_label_map(_label_map(tmp_path, {"1": "dog", "0": "cat"}), 2) == ("cat", "dog")
    assert read_label_map(_label_map(tmp_path, {"0": ["n01", "cat"], "1": ["n02", "dog"]}), 2) == ("cat", "dog")
    assert read_label_map(_label_map(tmp_path, {"object_type_names": ["cat", "dog"]}), 2) == ("cat", "dog")


@pytest.mark.parametrize("doc, why", [
    ("{not json", "not a readable JSON file"),
    (["cat", "dog"], r"expected a JSON object \{\"0\": \"name\", ...\}, got list"),
    ({"0": "cat", "1": 7}, r"class '1' has name 7; names must be strings"),
    ({"0": "cat", "1": []}, r"class '1' has name \[\]"),
    ({"0": "cat"}, r"no name for class\(es\) \['1'\] of the model's 2"),
    ({"0": "cat", "1": "dog", "2": "eel"}, r"keys \['2'\] are not classes of the model \(0..1\)"),
])
def test_read_label_map_rejects(tmp_path, doc, why):
    with pytest.raises(ConfigError, match=why):
        read_label_map(_label_map(tmp_path, doc), 2)


def test_read_label_map_of_a_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not a readable JSON file"):
        read_label_map(tmp_path / "index_to_name.json", 2)


def test_class_map_without_a_label_map():
    assert class_map_for(spec_for(3)) == ClassMap(("0", "1", "2"), "class indices")
    named = class_map_for(spec_for(2, model={"class_names": ["cat", "dog"]}))
    assert named == ClassMap(("cat", "dog"), "model.class_names")


def test_class_map_from_a_label_map(tmp_path):
    path = _label_map(tmp_path, {"0": "cat", "1": "dog"})
    cm = class_map_for(spec_for(2, handler={"extra_files": [str(path)]}))
    assert cm == ClassMap(("cat", "dog"), "index_to_name.json")
    agreeing = spec_for(2, handler={"extra_files": [str(path)]}, model={"class_names": ["cat", "dog"]})
    assert class_map_for(agreeing).labels == ("cat", "dog")
    other = tmp_path / "vocab.json"
    other.write_text("{}")
    assert class_map_for(spec_for(2, handler={"extra_files": [str(other)]})).source == "class indices"


def test_a_label_map_that_disagrees_with_class_names_is_a_config_error(tmp_path):
    path = _label_map(tmp_path, {"0": "dog", "1": "cat", "2": "eel"})
    spec = spec_for(3, handler={"extra_files": [str(path)]}, model={"class_names": ["cat", "dog", "eel"]})
    with pytest.raises(ConfigError, match=r"and model.class_names disagree on 2 class\(es\)") as e:
        class_map_for(spec)
    assert e.value.details == ["class 0: index_to_name.json 'dog', model.class_names 'cat'",
                               "class 1: index_to_name.json 'cat', model.class_names 'dog'"]


def test_a_label_map_named_but_missing_is_a_config_error(tmp_path):
    spec = spec_for(2, handler={"extra_files": [str(tmp_path / "index_to_name.json")]})
    with pytest.raises(ConfigError, match="handler.extra_files: .*index_to_name.json does not exist"):
        class_map_for(spec)


# --- boundaries and whole messages ----------------------------------------------------------------------------------

def test_numbers_are_always_float64():
    assert numbers([1, 2, 3], "x").dtype == np.float64


def test_probability_bounds_are_inclusive():
    check_probabilities(np.array([-1e-6, 0.5]), "p")
    check_probabilities(np.array([1 + 1e-6, np.nan]), "p")
    check_probabilities(np.array([1.0, 1e-4]), "p")  # sums to exactly 1 + 1e-4


def test_long_values_are_quoted_in_part():
    with pytest.raises(AnswerError) as e:
        numbers(["x" * 200], "x")
    assert str(e.value) == "x must hold only numbers, got " + str(["x" * 200])[:80]
    with pytest.raises(AnswerError) as e:
        check_probabilities(np.full(8, 2.0), "p")
    assert str(e.value) == "p holds values outside [0, 1]: [2.0, 2.0, 2.0, 2.0, 2.0, 2.0]"
    many = ClassMap(tuple(f"c{i}" for i in range(20)), "index_to_name.json")
    with pytest.raises(AnswerError) as e:
        many.index_of("z")
    assert str(e.value) == f"label 'z' is not a class of the model (index_to_name.json: {[f'c{i}' for i in range(12)]})"
    with pytest.raises(AnswerError) as e:
        TOPK.decode(["y" * 200, 1])
    assert str(e.value) == "expected a JSON object {label: probability}, got " + repr(str(["y" * 200, 1])[:80])
    doc = {"outputs": "z" * 300}
    for env, words in ((V1, "a KServe v1 answer needs a non-empty 'predictions' list"),
                       (V2, "a KServe v2 answer needs a non-empty 'outputs' list")):
        with pytest.raises(AnswerError) as e:
            env.unwrap(json.dumps(doc).encode())
        assert str(e.value) == f"{words}, got {str(doc)[:120]!r}"
    out = {"data": [], "name": "w" * 300}
    with pytest.raises(AnswerError) as e:
        V2.unwrap(json.dumps({"outputs": [out]}).encode())
    assert str(e.value) == f"a KServe v2 output needs a non-empty 'data' list, got {str(out)[:120]!r}"


def test_whole_messages_of_the_decoders():
    with pytest.raises(AnswerError) as e:
        TOPK.decode({"a": 0.7, "b": 0.7})
    assert str(e.value) == "the answer's probabilities sum to 1.400000, more than 1: not probabilities"
    with pytest.raises(AnswerError) as e:
        _mapping(probabilities="s").decode({"s": {"a": 0.6, "b": 0.6}})
    assert str(e.value) == "'s' sum to 1.200000, more than 1: not probabilities"
    with pytest.raises(AnswerError) as e:
        codec(3, "auto").decode(b"[1, 2, 3]")
    assert str(e.value) == (
        "the answer's format is not recognised (answers.format: auto): expected this project's {prediction, "
        "probabilities} JSON, a {label: probability} object, a list of logits, a class index, a class label, a "
        "{label, confidence} object or a list of {label, score} objects. Set answers.format (answers.mapping or "
        "answers.decode: file.py:function for another answer)")


def test_get_path_reaches_the_first_element_from_the_end():
    assert mapping.get_path(DOC, "result.top.-2.label") == "b"


def test_mapping_logits_fix_the_class_over_declared_probabilities():
    doc = {"raw": [5.0, 0.0, 0.0], "p": [0.1, 0.2, 0.7]}
    pred = _mapping(logits="raw", probabilities="p").decode(doc)
    assert pred.index == 0 and pred.probabilities.tolist() == [0.1, 0.2, 0.7]


def test_the_builtin_top_k_default_is_five():
    assert _requirement(spec_for(10), "topk") == {"required_classes": 5,
                                                  "required_words": "the handler's top-5 (answers.top_k default)"}


def test_kserve_requests_are_compact_json():
    assert V1.wrap(b"", JSON, {"features": [1, 2]})[0] == b'{"instances":[{"data":{"features":[1,2]}}]}'
    assert V2.wrap(b"", JSON, {"features": [1]})[0] == (
        b'{"inputs":[{"name":"input-0","shape":[1],"datatype":"FP32","data":[1]}]}')
    assert V2.wrap(b"", JSON, {"a": [1, 2]})[0] == (
        b'{"inputs":[{"name":"input-0","shape":[1],"datatype":"BYTES","data":["{\\"a\\":[1,2]}"]}]}')


def test_whole_messages_of_the_label_map(tmp_path):
    path = _label_map(tmp_path, {str(i): f"n{i}" for i in range(3)})
    with pytest.raises(ConfigError) as e:
        read_label_map(path, 15)
    assert str(e.value) == (f"{path}: no name for class(es) {[str(i) for i in range(3, 13)]} of the model's 15; "
                            "TorchServe's handler raises KeyError when such a class is in its answer. Give every "
                            "class 0..C-1 a name.")
    path = _label_map(tmp_path, {str(i): f"n{i}" for i in range(14)})
    with pytest.raises(ConfigError) as e:
        read_label_map(path, 2)
    assert str(e.value) == (f"{path}: keys {sorted(str(i) for i in range(2, 14))[:10]} are not classes of the model "
                            "(0..1). Fix the label map or model.num_classes.")


def test_a_list_name_is_its_last_element(tmp_path):
    path = _label_map(tmp_path, {"0": ["n01", "feline", "cat"], "1": ["n02", "canine", "dog"]})
    assert read_label_map(path, 2) == ("cat", "dog")


def test_a_disagreeing_label_map_names_at_most_ten_classes(tmp_path):
    n = 12
    path = _label_map(tmp_path, {str(i): f"x{i}" for i in range(n)})
    spec = spec_for(n, handler={"extra_files": [str(path)]}, model={"class_names": [f"y{i}" for i in range(n)]})
    with pytest.raises(ConfigError) as e:
        class_map_for(spec)
    assert e.value.message == (
        f"{path} and model.class_names disagree on 12 class(es); one of them is stale (a shifted label map makes "
        "every served answer name the wrong class). Make them the same.")
    assert len(e.value.details) == 10 and e.value.details[-1] == "class 9: index_to_name.json 'x9', model.class_names 'y9'"


def test_get_path_takes_only_numbers_as_list_indices():
    with pytest.raises(AnswerError, match=r"the answer has no 'result.top.X1' \(stopped at 'X1'\)"):
        mapping.get_path(DOC, "result.top.X1")
