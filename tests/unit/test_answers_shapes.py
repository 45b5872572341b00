"""Answers of any shape: bare index and label, top-1 objects, {label, score} lists, a custom decode function,
what auto sniffs, the notes of the first answer, and the classes-only output check. No torch."""

import math

import numpy as np
import pytest

from pipeline.answers import bare, custom, label_scores, naming, top1
from pipeline.answers.base import AnswerError, Carries, ClassMap, NotJSON, Prediction, parse_json
from pipeline.answers.classes import class_map_for
from pipeline.answers.registry import codec_for, sniff_format
from pipeline.errors import ConfigError, UserCodeError
from pipeline.evaluate.gate import GateInputs, GatePlan, evaluate_gate
from pipeline.spec import GateSpec, parse_spec
from tests.unit._support import LABELS, all_answered, check, codec, comparison, outputs, spec_for, truth_and_baseline

ABC = ClassMap(("a", "b", "c"), "model.class_names")
INDICES = ClassMap(("0", "1", "2"), "class indices")
NUMBERED = ClassMap(("7", "8", "9"), "index_to_name.json")  # digit labels that are not the indices


# --- naming a class ------------------------------------------------------------------------------------------------

def test_a_number_is_a_class_index_in_range():
    assert naming.index_of_number(2, 3) == 2
    assert naming.index_of_number(np.int64(1), 3) == 1
    assert naming.index_of_number(0, 3) == 0


@pytest.mark.parametrize("value, why", [
    (3, r"the answer is 3, not a class index of the model \(0..2\)"),
    (-1, "is -1, not a class index"),
    (5.0, r"5.0, a decimal number; a class index is a whole number \(5, not 5.0\)"),
    (1.5, "must be a class index"),
    (True, "must be a class index"),
    ("1", "must be a class index"),
    (None, "must be a class index"),
])
def test_what_is_not_a_class_index(value, why):
    with pytest.raises(AnswerError, match=why):
        naming.index_of_number(value, 3)


def test_a_label_is_looked_up_by_name_and_a_number_only_among_digit_labels():
    assert naming.index_of_label("b", ABC) == 1
    assert naming.index_of_label(2, INDICES) == 2, "'2' sent by TorchServe as the number 2"
    assert naming.index_of_label(8, NUMBERED) == 1, "looked up as the label '8', not as index 8"
    assert naming.index_of_label("0", INDICES) == 0
    with pytest.raises(AnswerError, match="a number is a class index: set answers.format: index"):
        naming.index_of_label(1, ABC)
    with pytest.raises(AnswerError, match=r"label 'z' is not a class of the model \(model.class_names"):
        naming.index_of_label("z", ABC)
    with pytest.raises(AnswerError, match="a class index as a string: set answers.format: index"):
        naming.index_of_label("1", ABC)
    with pytest.raises(AnswerError) as e:
        naming.index_of_label("z", INDICES)
    assert "answers.format: index" not in str(e.value)
    with pytest.raises(AnswerError, match="must be a class label"):
        naming.index_of_label(True, INDICES)
    with pytest.raises(AnswerError, match="must be a class label"):
        naming.index_of_label({"x": 1}, ABC)


def test_a_class_named_either_way():
    assert naming.index_of_class(2, 3, ABC) == 2
    assert naming.index_of_class("a", 3, ABC) == 0


def test_digit_label_sets_are_flagged_and_others_are_not():
    assert naming.digit_label_note(ABC, "label") is None
    fallback = naming.digit_label_note(INDICES, "label")
    assert "class indices as strings" in fallback and "read as class 3" in fallback
    numbered = naming.digit_label_note(NUMBERED, "top1")
    assert numbered.startswith("answers (top1): every class label is a digit string (index_to_name.json")
    assert "read as the label '7' (class 0), not as class index 7" in numbered
    assert not ClassMap((), "none").digit_labels


# --- index and label ----------------------------------------------------------------------------------------------

def test_a_bare_index_and_a_list_of_one():
    d = bare.IndexDecoder(3)
    assert d.decode(2) == Prediction(2)
    assert d.decode([1]).index == 1
    assert d.decode(0).probabilities is None and d.decode(0).logits is None
    assert d.carries == Carries("none", False) and not d.accepts_text


@pytest.mark.parametrize("doc, why", [
    ([1, 2], "got a list of 2 elements"),
    ([], "got a list of 0 elements"),
    (3, "not a class index"),
    ("1", "must be a class index"),
    ({"a": 1}, "must be a class index"),
])
def test_what_the_index_format_refuses(doc, why):
    with pytest.raises(AnswerError, match=why):
        bare.IndexDecoder(3).decode(doc)


def test_a_bare_label_and_a_list_of_one():
    d = bare.LabelDecoder(ABC)
    assert d.decode("c") == Prediction(2)
    assert d.decode(["a"]).index == 0
    assert d.accepts_text
    with pytest.raises(AnswerError, match="a list of 2 elements"):
        d.decode(["a", "b"])
    with pytest.raises(AnswerError, match="label 'd' is not a class"):
        d.decode("d")


def test_the_codec_reads_a_raw_text_label_and_a_quoted_one():
    c = codec(3, "label", model={"class_names": ["world", "sports", "business"]})
    assert c.decode(b"business").index == 2, "TorchServe sends a str answer unquoted"
    assert c.decode(b'"sports"').index == 1
    assert c.decode(b'["world"]').index == 0
    with pytest.raises(AnswerError, match="the answer is not JSON"):
        codec(3, "index").decode(b"business")
    with pytest.raises(AnswerError, match="not UTF-8"):
        c.decode(b"\xff\xfe")


def test_raw_text_is_only_read_without_an_envelope():
    v1 = codec(3, "label", model={"class_names": ["x", "y", "z"]}, answers={"envelope": "kserve_v1"})
    assert v1.decode(b'{"predictions": ["y"]}').index == 1
    with pytest.raises(AnswerError, match="not JSON"):
        v1.decode(b"y")


def test_not_json_keeps_the_text():
    with pytest.raises(NotJSON) as e:
        parse_json(b"business")
    assert e.value.text == "business" and isinstance(e.value, AnswerError)


# --- top1 -----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("doc", [
    {"label": "b", "confidence": 0.75}, {"class": "b", "score": 0.75}, {"prediction": 1, "probability": 0.75},
    {"name": "b", "score": 0.75, "id": "row-9"}, [{"label": "b", "score": 0.75}],
])
def test_a_top1_object_carries_its_confidence_at_its_class_only(doc):
    p = top1.Decoder(3, ABC).decode(doc)
    assert p.index == 1 and p.logits is None and p.probabilities[1] == 0.75
    assert np.isnan(p.probabilities[[0, 2]]).all() and p.classes_carried == 1


@pytest.mark.parametrize("doc, why", [
    ({"score": 0.5}, r"exactly one class key of \['label', 'class', 'prediction', 'name'\], got none"),
    ({"label": "a", "class": 1, "score": 0.5}, r"got 2 \(label, class\), which would be a guess"),
    ({"label": "a"}, "exactly one confidence key"),
    ({"label": "a", "score": 0.5, "confidence": 0.5}, "exactly one confidence key"),
    ({"label": "a", "score": 1.5}, r"'score' is 1.5, outside \[0, 1\]"),
    ({"label": "a", "score": -0.1}, "outside"),
    ({"label": "a", "score": True}, "'score' must be a number"),
    ({"label": "a", "score": "0.5"}, "'score' must be a number"),
    ({"label": "a", "score": math.nan}, "NaN or infinity"),
    ({"label": "q", "score": 0.5}, "label 'q' is not a class"),
    ({"prediction": 3, "score": 0.5}, "'prediction' is 3, not a class index"),
    ("a", "expected a JSON object"),
    ([{"label": "a", "score": 0.1}, {"label": "b", "score": 0.2}], "expected a JSON object"),
])
def test_what_the_top1_format_refuses(doc, why):
    with pytest.raises(AnswerError, match=why):
        top1.Decoder(3, ABC).decode(doc)


def test_a_top1_confidence_at_the_edges_of_zero_and_one():
    assert top1.Decoder(3, ABC).decode({"label": "a", "score": 1}).probabilities[0] == 1.0
    assert top1.Decoder(3, ABC).decode({"label": "a", "score": 0}).probabilities[0] == 0.0


# --- label_scores ---------------------------------------------------------------------------------------------------

def test_label_scores_carry_the_named_classes():
    p = label_scores.Decoder(3, ABC).decode([{"label": "c", "score": 0.6}, {"label": "a", "score": 0.3}])
    assert p.index == 2 and p.probabilities[2] == 0.6 and p.probabilities[0] == 0.3 and np.isnan(p.probabilities[1])
    nested = label_scores.Decoder(3, ABC).decode([[{"label": "b", "score": 0.9}]])
    assert nested.index == 1 and nested.classes_carried == 1


@pytest.mark.parametrize("doc, why", [
    ([], "expected a non-empty JSON list"),
    ({"label": "a", "score": 0.5}, "expected a non-empty JSON list"),
    ([{"label": "a", "score": 0.5}, {"label": "a", "score": 0.1}], r"class 'a' appears twice in the answer \(item 1\)"),
    ([{"label": "a", "score": 0.7}, {"label": "b", "score": 0.7}], "sum to 1.400000, more than 1"),
    ([{"label": "a", "score": 0.5}, "b"], "expected a JSON object"),
])
def test_what_the_label_scores_format_refuses(doc, why):
    with pytest.raises(AnswerError, match=why):
        label_scores.Decoder(3, ABC).decode(doc)


# --- what auto sniffs -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("doc, labels, fmt", [
    (2, ABC, "index"), ([0], ABC, "index"), (1, INDICES, "index"),
    (1, NUMBERED, None),  # index 1, or the label '1'? neither is guessed
    (3, ABC, None), (True, ABC, None), (1.0, ABC, None),
    ("b", ABC, "label"), (["c"], ABC, "label"), ("zebra", ABC, None), (["a", "b"], ABC, None),
    ({"label": "a", "score": 0.9}, ABC, "top1"), ({"class": 2, "confidence": 0.9}, ABC, "top1"),
    ({"label": "a", "class": 0, "score": 0.9}, ABC, None), ({"label": "z", "score": 0.9}, ABC, None),
    ({"label": "a", "score": "high"}, ABC, None), ({"label": "a", "score": False}, ABC, None),
    ({"label": 5, "score": 0.9}, ABC, None),
    ([{"label": "a", "score": 0.9}], ABC, "label_scores"), ([[{"label": "a", "score": 0.9}]], ABC, "label_scores"),
    ([{"label": "a", "score": 0.9}, {"label": "b", "score": 0.1}], ABC, "label_scores"),
    ([{"label": "a", "score": 0.9}, {"label": "q", "score": 0.1}], ABC, None),
    ([{"label": "a", "score": 0.9}, 3], ABC, None), ([], ABC, None),
    ([0.1, 0.2, 0.3], ABC, "logits"), ({"a": 0.5}, ABC, "topk"), ({"prediction": 0, "probabilities": []}, ABC,
                                                                   "package_validate"),
])
def test_auto_sniffs_only_the_unambiguous_shapes(doc, labels, fmt):
    assert sniff_format(doc, 3, labels) == fmt


def test_auto_settles_on_a_raw_text_label_and_says_so():
    c = codec(3, "auto", model={"class_names": ["world", "sports", "business"]})
    settled = c.settle(b"business")
    assert settled.format == "label" and settled.chosen_by == "the first answer's shape (answers.format: auto)"
    assert settled.settled and settled.settle(b"world") is settled
    assert settled.decode(b"world").index == 0
    assert c.settle(b"not a label") is c, "text that names no class settles nothing"
    assert c.settle(b"\xff") is c


def test_auto_settles_on_a_bare_index():
    settled = codec(3, "auto").settle(b"2")
    assert settled.format == "index" and settled.required_classes == 0 and settled.decode(b"[1]").index == 1


def test_an_unsettled_auto_codec_says_an_envelope_fault_first():
    with pytest.raises(AnswerError, match="KServe v1 answer needs"):
        codec(3, "auto", answers={"envelope": "kserve_v1"}).decode(b'{"x": 1}')
    with pytest.raises(AnswerError, match="format is not recognised"):
        codec(3, "auto").decode(b"zebra")


# --- the first answer's notes ---------------------------------------------------------------------------------------

def test_fewer_classes_than_the_model_without_top_k_is_noted_with_the_classes_compared():
    idx = codec(4, "auto").settle(b"3")
    assert idx.notes[0] == (
        "answers (index format): the first answer carries 0 of the model's 4 classes and answers.top_k is not set, "
        "so only the predicted class: the agreement and metric checks compare classes; no output difference is "
        "measured at the served stage. Set answers.top_k to require more of every answer")
    t1 = codec(4, "auto", model={"class_names": list("abcd")}).settle(b'{"label": "b", "score": 0.5}')
    assert t1.format == "top1" and t1.required_classes == 1
    assert t1.notes == ("answers (top1 format): the first answer carries 1 of the model's 4 classes and answers.top_k "
                        "is not set, so the output difference compares the probabilities of those 1 class(es) with "
                        "the baseline's. Set answers.top_k to require more of every answer",)
    topk = codec(4, "topk", builtin_top_k=2).settle(b'{"0": 0.5, "1": 0.25}')
    assert len(topk.notes) == 1 and "carries 2 of the model's 4 classes" in topk.notes[0]


def test_no_note_where_top_k_is_declared_all_classes_come_or_a_builtin_handler_chose():
    assert codec(3, "auto", answers={"top_k": 1}).settle(b'{"0": 0.5}').notes == ()
    assert codec(3, "auto").settle(b'{"0": 0.5, "1": 0.25, "2": 0.25}').notes == ()
    builtin = codec_for(spec_for(4), class_map_for(spec_for(4)), "topk", "the handler image_classifier", 2)
    assert builtin.settle(b'{"0": 0.5, "1": 0.25}') is builtin


def test_a_digit_label_set_is_noted_for_formats_that_read_labels():
    lab = codec(3, "label").settle(b"1")
    assert lab.decode(b"1").index == 1 and lab.decode(b'"2"').index == 2
    assert any("class indices as strings" in n for n in lab.notes)
    assert not any("digit" in n or "indices as strings" in n for n in codec(3, "index").settle(b"1").notes)


def test_a_fixed_format_whose_first_answer_does_not_decode_waits_for_the_next():
    c = codec(3, "top1")
    assert c.settle(b'{"label": "q", "score": 0.5}') is c
    assert c.settle(b'{"label": "1", "score": 0.5}').settled


# --- custom: answers.decode -----------------------------------------------------------------------------------------

DECODE = '''
import numpy as np

def as_given(doc):
    return doc

def boom(doc):
    return {"a": 1}[doc]

def arrays(doc):
    return {"probabilities": np.array([0.2, 0.5, 0.3]), "index": np.int64(1)}
'''


@pytest.fixture
def dec(tmp_path):
    path = tmp_path / "dec.py"
    path.write_text(DECODE)
    return lambda fn: custom.decoder_for(f"{path}:{fn}", 3, ABC)


def test_custom_reads_an_index_a_label_and_dicts(dec):
    d = dec("as_given")
    assert d.decode(2) == Prediction(2) and d.decode("b") == Prediction(1)
    p = d.decode({"label": "c", "probabilities": [0.1, 0.2, 0.7], "boxes": [[0, 0, 1, 1]]})
    assert p.index == 2 and p.probabilities.tolist() == [0.1, 0.2, 0.7] and p.extra == {"boxes": [[0, 0, 1, 1]]}
    p = d.decode({"probabilities": {"a": 0.6}})
    assert p.index == 0 and np.isnan(p.probabilities[1:]).all() and p.extra is None
    p = d.decode({"logits": [0.0, 3.0, 1.0]})
    assert p.index == 1 and p.logits.tolist() == [0.0, 3.0, 1.0] and abs(p.probabilities.sum() - 1) < 1e-12
    assert d.decode({"index": 0, "label": "a"}).index == 0
    given = Prediction(1)
    assert d.decode(given) is given
    a = dec("arrays").decode(None)
    assert a.index == 1 and a.probabilities.tolist() == [0.2, 0.5, 0.3]


@pytest.mark.parametrize("value, why", [
    (None, r"returned NoneType 'None'; return a class index \(int\), a label \(str\) or a dict"),
    (True, "returned bool"), (1.0, "returned float"), ([1], "returned list"),
    ({"score": 1}, r"returned a dict without index, label, probabilities or logits \(keys \['score'\]\)"),
    ({"index": 0, "label": "b"}, r"returned index 0 but label 'b' \(class 1\)"),
    ({"index": 7}, "'index' from answers.decode is 7, not a class index"),
    ({"label": "zz"}, "label 'zz' is not a class"),
    ({"probabilities": [0.5, 0.5]}, "must hold 3 numbers"),
    ({"probabilities": [0.9, 0.9, 0.1]}, "sum to"),
    ({"probabilities": {"a": "high"}}, "probability of 'a' must be a finite number"),
    ({"probabilities": {"a": math.inf}}, "must be a finite number"),
    ({"probabilities": {"q": 0.5}}, "label 'q' is not a class"),
    ({"logits": [1, 2]}, "'logits' from answers.decode must hold 3 numbers"),
    (5, "the class index answers.decode returned is 5"),
    ("zz", "label 'zz' is not a class"),
])
def test_what_custom_refuses_from_the_function(dec, value, why):
    with pytest.raises(AnswerError, match=why):
        dec("as_given").decode(value)


def test_a_decode_function_that_raises_is_quoted_with_its_line(dec):
    with pytest.raises(AnswerError) as e:
        dec("boom").decode("b")
    assert str(e.value) == "answers.decode dec.py:boom raised KeyError: 'b' (at dec.py:8 in boom)"


def test_custom_carries_what_its_first_answer_showed(dec):
    d = dec("as_given")
    assert d.carries.describe() == "what answers.decode returns (known after the first answer)"
    assert d.observed(Prediction(1)).carries == Carries("none", False)
    assert d.observed(Prediction(1, np.array([0.1, 0.2, 0.7]))).carries == Carries("all", False)
    assert d.observed(Prediction(1, np.array([np.nan, 0.2, 0.7]))).carries == Carries("some", False)
    assert d.observed(Prediction(1, None, np.zeros(3))).carries == Carries("all", True)


def test_the_custom_codec_passes_raw_text_and_settles_what_it_carries(tmp_path):
    (tmp_path / "dec.py").write_text("def read(doc):\n    return {'label': doc.strip().lower()}\n")
    spec = parse_spec({"name": "m", "model": {"factory": "m.py:build", "weights": "w.pt", "num_classes": 3,
                                              "class_names": ["world", "sports", "business"]},
                       "dataset": {"path": "d.csv", "input_shape": [2]}, "answers": {"decode": "dec.py:read"}},
                      base_dir=tmp_path)
    c = codec_for(spec, class_map_for(spec), spec.answers.format, "answers.format in the spec")
    assert c.format == "custom"
    settled = c.settle(b"Business\n")
    assert settled.format == "custom" and settled.carries == Carries("none", False)
    assert settled.decode(b"World").index == 0
    assert any("0 of the model's 3 classes" in n for n in settled.notes)


def test_a_decode_function_that_cannot_be_imported_is_an_input_error(tmp_path):
    with pytest.raises(UserCodeError, match="answers.decode: file .*missing.py does not exist"):
        custom.decoder_for(f"{tmp_path}/missing.py:read", 3, ABC)


# --- the spec -------------------------------------------------------------------------------------------------------

def _spec(tmp_path, answers):
    data = {"name": "m", "model": {"factory": "m.py:build", "weights": "w.pt", "num_classes": 3},
            "dataset": {"path": "d.csv", "input_shape": [2]}, "answers": answers}
    return parse_spec(data, base_dir=tmp_path)


def test_answers_decode_implies_custom_and_is_resolved_against_the_spec(tmp_path):
    s = _spec(tmp_path, {"decode": "decoders/read.py:read"})
    assert s.answers.format == "custom" and s.answers.decode == f"{tmp_path}/decoders/read.py:read"
    assert _spec(tmp_path, {"format": "custom", "decode": "pkg.mod:read"}).answers.decode == "pkg.mod:read"
    assert _spec(tmp_path, {}).answers.decode is None


@pytest.mark.parametrize("answers, why", [
    ({"format": "custom"}, "answers.format custom needs answers.decode: file.py:function"),
    ({"format": "index", "decode": "d.py:read"}, "answers.decode is read only by answers.format custom, but the "
                                                 "format is 'index'"),
    ({"decode": "d.py"}, "expected 'package.module:function' or 'path/to/file.py:function' for answers.decode"),
])
def test_the_answers_decode_rules(tmp_path, answers, why):
    with pytest.raises(ConfigError) as e:
        _spec(tmp_path, answers)
    assert why in " ".join(e.value.details)


@pytest.mark.parametrize("fmt", ["index", "label", "top1", "label_scores"])
def test_each_new_format_is_a_spec_value(tmp_path, fmt):
    assert _spec(tmp_path, {"format": fmt}).answers.format == fmt


# --- the gate: classes only -----------------------------------------------------------------------------------------

def _classes_only_cmp():
    y, base = truth_and_baseline()
    return comparison(y, [outputs("baseline", base), outputs("handled", base, probabilities=None),
                          outputs("served", base, probabilities=None)])


def test_answers_of_only_a_class_make_the_output_check_a_warning_where_the_plan_allows():
    plan = GatePlan(candidates=("handled", "served"), labels=LABELS,
                    output_quantity={"handled": "from the first answer",
                                     "served": "not evaluable: the index answers carry only the predicted class"},
                    classes_only=("handled", "served"))
    res = evaluate_gate(GateSpec(), plan, _classes_only_cmp(), GateInputs(answered=all_answered("handled", "served")))
    for stage in ("handled", "served"):
        c = check(res, "max abs output difference", stage)
        assert not c.is_gating and not c.passed and not c.evaluated and c.value == "compares classes only"
        assert c.detail.startswith(f"compares classes only: the {stage} answers carry no logits or probabilities; "
                                   "the predicted classes are compared by the agreement and metric checks")
    assert res.passed, "a correct bare-answer handler passes with the defaults"
    strict = evaluate_gate(GateSpec(), GatePlan(candidates=("served",), labels=LABELS,
                                                output_quantity={"served": "from the first answer"}),
                           _classes_only_cmp(), GateInputs(answered=all_answered("served")))
    assert check(strict, "max abs output difference").is_gating and not strict.passed


def test_classes_only_still_fails_a_stage_without_results_and_compares_outputs_it_has():
    plan = GatePlan(candidates=("served",), labels=LABELS,
                    output_quantity={"served": "not evaluable: only the class"}, classes_only=("served",))
    missing = check(evaluate_gate(GateSpec(), plan, None, GateInputs()), "max abs output difference")
    assert missing.is_gating and not missing.passed and missing.detail == "not evaluated: the served stage has no results"
    y, base = truth_and_baseline()
    logits = np.zeros((len(y), 3))
    drift = logits.copy()
    drift[5, 0] = 0.5
    cmp = comparison(y, [outputs("baseline", base, logits=logits), outputs("served", base, logits=drift)])
    real = check(evaluate_gate(GateSpec(), plan, cmp, GateInputs(answered=all_answered("served"))),
                 "max abs output difference")
    assert real.is_gating and not real.passed and real.value == 0.5, "outputs it can see are compared as usual"



def test_top_k_set_demands_probabilities_of_a_bare_answer():
    with pytest.raises(AnswerError, match=r"carries 0 class\(es\) but answers.top_k: 1 requires 1"):
        codec(3, "index", answers={"top_k": 1}).decode(b"1")


# --- whole messages and edges (each wording is what a reader of bad_response sees) ----------------------------------

def _message(fn, *args):
    with pytest.raises(AnswerError) as e:
        fn(*args)
    return str(e.value)


def test_whole_messages_of_naming_a_class():
    long = "x" * 100
    assert _message(naming.index_of_number, long, 3) == (
        f"the answer must be a class index (a whole number), got {'x' * 80!r}")
    assert _message(naming.index_of_label, 1, ABC) == (
        "the answer must be a class label (a string), got '1'; a number is a class index: set answers.format: index")
    assert _message(naming.index_of_label, [long], ABC) == f"the answer must be a class label (a string), got {str([long])[:80]!r}"
    assert _message(naming.index_of_label, "1", ABC) == (
        "label '1' is not a class of the model (model.class_names: ['a', 'b', 'c']) (a class index as a string: set "
        "answers.format: index, or give the class names in index_to_name.json / model.class_names)")
    assert _message(naming.index_of_label, "z", ABC) == (
        "label 'z' is not a class of the model (model.class_names: ['a', 'b', 'c'])")
    assert _message(naming.index_of_label, "5", INDICES) == (
        "label '5' is not a class of the model (class indices: ['0', '1', '2'])")
    assert _message(naming.index_of_class, "z", 3, ABC, "'label'") == (
        "label 'z' is not a class of the model (model.class_names: ['a', 'b', 'c'])")
    assert _message(naming.index_of_class, [1], 3, ABC, "'label'") == "'label' must be a class label (a string), got '[1]'"


def test_whole_digit_label_notes():
    assert naming.digit_label_note(INDICES, "label") == (
        "answers (label): the class labels are the class indices as strings (class indices, TorchServe's fallback "
        "without index_to_name.json), so an answer '3' is read as class 3; give the class names (index_to_name.json "
        "or model.class_names) if the handler answers names")
    many = ClassMap(tuple(str(i) for i in range(9, 0, -1)), "index_to_name.json")
    assert naming.digit_label_note(many, "label") == (
        "answers (label): every class label is a digit string (index_to_name.json: ['9', '8', '7', '6', '5', '4']), "
        "so an answer like '9' is read as the label '9' (class 0), not as class index 9; set answers.format: index "
        "if the handler answers indices")
    assert "answers (label): the class labels are the class indices" in codec(3, "label").settle(b"1").notes[-1]


def test_whole_messages_of_the_bare_formats():
    long = list(range(40))
    assert _message(bare.IndexDecoder(50).decode, long) == (
        f"expected a class index (or a list of one), got a list of 40 elements {str(long)[:80]}: one request "
        "carries one row, so its answer names one class")
    assert _message(bare.LabelDecoder(ABC).decode, ["a", "b"]) == (
        "expected a class label (or a list of one), got a list of 2 elements ['a', 'b']: one request carries one "
        "row, so its answer names one class")


def test_whole_messages_of_top1_and_label_scores():
    long = {"label": "a", "name": "b", "score": 0.5, "pad": "y" * 90}
    assert _message(top1.Decoder(3, ABC).decode, long) == (
        "a top-1 answer needs exactly one class key of ['label', 'class', 'prediction', 'name'], got 2 (label, name), "
        f"which would be a guess: {str(long)[:80]}")
    assert _message(top1.Decoder(3, ABC).decode, "y" * 100) == (
        f"expected a JSON object {{label, confidence}}, got {'y' * 80!r}")
    assert _message(top1.Decoder(3, ABC).decode, {"label": "a", "score": ["z" * 90]}) == (
        f"'score' must be a number, got {str(['z' * 90])[:80]!r}")
    assert _message(label_scores.Decoder(3, ABC).decode, "q" * 100) == (
        f"expected a non-empty JSON list of {{label, score}} objects, got {'q' * 80!r}")
    assert _message(label_scores.Decoder(3, ABC).decode, [{"label": "a", "score": 0.8}, {"label": "b", "score": 0.8}]
                    ) == "the answer's scores sum to 1.600000, more than 1: not probabilities"


def test_top1_confidence_bounds_are_inclusive_to_rounding():
    d = top1.Decoder(3, ABC)
    assert d.decode({"label": "a", "score": -1e-6}).probabilities[0] == -1e-6
    assert d.decode({"label": "a", "score": 1 + 1e-6}).probabilities[0] == 1 + 1e-6
    assert d.decode({"label": "a", "score": 0.5}).logits is None


def test_class_indices_at_the_edges_are_sniffed_and_read_in_every_format():
    assert top1.looks_like({"class": 0, "score": 0.5}, 3, ABC) and top1.looks_like({"class": 2, "score": 0.5}, 3, ABC)
    assert not top1.looks_like({"class": 3, "score": 0.5}, 3, ABC)
    assert top1.looks_like([{"class": 1, "score": 0.5}], 3, ABC)
    assert sniff_format([{"class": 1, "score": 0.5}, {"class": 0, "score": 0.25}], 3, ABC) == "label_scores"
    ls = codec(3, "label_scores").decode(b'[{"class": 2, "score": 0.5}]')
    assert ls.index == 2 and ls.logits is None
    assert label_scores.Decoder(3, ABC).decode([{"prediction": 1, "score": 0.5}]).index == 1


def test_whole_messages_of_the_codec():
    with pytest.raises(AnswerError) as e:
        codec(3, "auto", answers={"envelope": "kserve_v1"}).decode(b'{"x": 1}')
    assert str(e.value) == "a KServe v1 answer needs a non-empty 'predictions' list, got \"{'x': 1}\""


def test_whole_messages_of_custom(dec, tmp_path):
    d = dec("as_given")
    assert d.ref == "dec.py:as_given"
    assert _message(d.decode, ["w" * 90]) == (
        f"answers.decode dec.py:as_given returned list {str(['w' * 90])[:60]!r}; return a class index (int), a label "
        "(str) or a dict {index|label, probabilities?, logits?}")
    assert _message(d.decode, "zz") == "label 'zz' is not a class of the model (model.class_names: ['a', 'b', 'c'])"
    assert _message(d.decode, {"probabilities": {"q": 0.5}}) == (
        "label 'q' is not a class of the model (model.class_names: ['a', 'b', 'c'])")
    assert _message(d.decode, {"label": 3}) == (
        "'label' from answers.decode must be a class label (a string), got '3'; a number is a class index: set "
        "answers.format: index")
    assert _message(d.decode, [1]).startswith("answers.decode dec.py:as_given returned list '[1]'")
    assert _message(d.decode, {"probabilities": [0.5, 0.5]}) == (
        "'probabilities' from answers.decode must hold 3 numbers, got 2")
    assert _message(d.decode, {"probabilities": [0.9, 0.9, 0.1]}) == (
        "'probabilities' from answers.decode sum to 1.900000, more than 1: not probabilities")
    assert _message(d.decode, {"probabilities": {"a": 2.0}}) == (
        "'probabilities' from answers.decode holds values outside [0, 1]: [2.0]")
    keys = {f"k{i}": 1 for i in range(10)}
    assert _message(d.decode, keys) == (
        "answers.decode dec.py:as_given returned a dict without index, label, probabilities or logits (keys "
        "['k0', 'k1', 'k2', 'k3', 'k4', 'k5', 'k6', 'k7']); return at least the class")
    assert d.decode({"probabilities": {"b": 0.6}}).probabilities[1] == 0.6
    seen = d.observed(Prediction(1))
    assert seen.ref == d.ref and seen.num_classes == 3
    assert _message(seen.decode, 3) == "the class index answers.decode returned is 3, not a class index of the model (0..2)"
    assert custom.decoder_for("json:loads", 3, ABC).ref == "json:loads"
    assert custom.decoder_for("json:loads", 3, ABC).decode('"b"').index == 1


def test_the_custom_codec_reads_a_returned_index(tmp_path):
    c = codec(3, "index")
    assert c.decode(b"2").index == 2
    (tmp_path / "dec.py").write_text("def read(doc):\n    return int(doc) - 1\n")
    spec = parse_spec({"name": "m", "model": {"factory": "m.py:build", "weights": "w.pt", "num_classes": 3},
                       "dataset": {"path": "d.csv", "input_shape": [2]}, "answers": {"decode": "dec.py:read"}},
                      base_dir=tmp_path)
    cc = codec_for(spec, class_map_for(spec), "custom", "answers.format in the spec")
    assert cc.decode(b"3").index == 2
    with pytest.raises(AnswerError, match=r"is 3, not a class index of the model \(0..2\)"):
        cc.decode(b"4")


def test_the_classes_only_check_in_full():
    plan = GatePlan(candidates=("served",), labels=LABELS, output_quantity={"served": "from the first answer"},
                    classes_only=("served",))
    c = check(evaluate_gate(GateSpec(), plan, _classes_only_cmp(), GateInputs(answered=all_answered("served"))),
              "max abs output difference")
    assert (c.limit, c.passed, c.is_gating, c.evaluated, c.baseline) == ("<= 1e-05", False, False, False, None)
    assert c.detail == (
        "compares classes only: the served answers carry no logits or probabilities; the predicted classes are "
        "compared by the agreement and metric checks (set answers.top_k, with answers that carry probabilities, to "
        "gate the outputs too)")
