"""StageName: the text the report carries, read once into a value the code asks by field."""

import copy
import json

import pytest

from pipeline.evaluate.attribution import _layer
from pipeline.names import Stage, StageName, handled_at_batch
from pipeline.report.schema import jsonable


@pytest.mark.parametrize("text", ["baseline", "exported", "handled", "served", "handled@batch4",
                                  "served@w2-b4-d5-c8-t1", "handled@batch16@w1-b16-d5-c1-t1"])
def test_text_round_trips(text):
    name = StageName.of(text)
    assert str(name) == text and f"{name}" == text and StageName.of(str(name)) == name


def test_fields_are_read_once_from_the_text():
    assert StageName.of("handled@batch4") == StageName(Stage.HANDLED, batch=4)
    assert StageName.of("served@w2-b4").setting == "w2-b4" and StageName.of("served@w2-b4").batch is None
    assert handled_at_batch(8).batch == 8 and handled_at_batch(8).stage is Stage.HANDLED


def test_equal_and_hashed_as_its_text_so_a_mapping_keyed_either_way_is_read():
    by_text = {"handled@batch4": 1, "served": 2}
    assert by_text[handled_at_batch(4)] == 1 and by_text[StageName(Stage.SERVED)] == 2
    assert {StageName(Stage.HANDLED): 3}[Stage.HANDLED] == 3
    assert StageName(Stage.SERVED, setting="a") != StageName(Stage.SERVED, setting="b")


def test_ordered_along_the_pipeline_then_by_batch_as_a_number():
    names = [StageName.of(s) for s in ("served", "handled@batch10", "exported", "handled@batch4", "handled",
                                       "baseline", "served@x")]
    assert [str(n) for n in sorted(names)] == ["baseline", "exported", "handled", "handled@batch4",
                                               "handled@batch10", "served", "served@x"]


@pytest.mark.parametrize("bad", ["nope", "handled@batch2@a@b", "served@"])
def test_bad_text_is_refused(bad):
    with pytest.raises(ValueError):
        StageName.of(bad)


def test_immutable_and_kept_by_copies_and_reports():
    name = handled_at_batch(4)
    with pytest.raises(AttributeError):
        name.batch = 5
    assert copy.deepcopy(name) == name
    assert json.dumps(jsonable({"stages": [name], name: {"stage": name}})) == (
        '{"stages": ["handled@batch4"], "handled@batch4": {"stage": "handled@batch4"}}')


def test_attribution_reads_the_variant_from_the_fields():
    assert _layer("handled@batch7")[0] == "handler problem that depends on the batch"
    assert _layer("served@w2-b4")[0] == "serving problem that depends on the setting"
    assert _layer("handled")[0] == "handler problem" and _layer("weird")[0] == "unknown layer"


def test_a_comparison_keyed_by_names_reaches_the_report_as_text():
    from pipeline.report.builder import _metrics_block
    from pipeline.report.markdown import _metrics
    from tests.unit._support import LABELS, ids, outputs, truth_and_baseline
    from pipeline.evaluate.compare import compare_stages

    y, base = truth_and_baseline()
    names = [StageName(Stage.BASELINE), StageName(Stage.HANDLED), handled_at_batch(4)]
    cmp = compare_stages(ids(100), y, LABELS, [outputs(n, base) for n in names])
    block = _metrics_block(cmp)
    assert list(block) == ["baseline", "handled", "handled@batch4"] and all(type(k) is str for k in block)
    assert "handled@batch4" in "\n".join(_metrics({"metrics": block}))
