"""The verdict code the task seam and the lint added, tested exactly (these tests are in `make mutation`'s
selection): the gate's config-lint check and the codec of a task that reads its own answers."""

from types import SimpleNamespace

from pipeline.answers.classes import class_map_for
from pipeline.answers.registry import ENVELOPES, codec_for
from pipeline.evaluate.gate import LINT_CHECK, GateInputs, lint_check
from pipeline.spec import GateSpec
from tests.unit._support import spec_for


def _finding(sev, rule=None, value=None):
    return SimpleNamespace(id=rule or f"rule-{sev}", severity=sev, key="k", value=value, reference="ref", fix="fix")


def test_lint_check_counts_every_severity_and_names_each_failing_finding():
    found = (_finding("high", value="0.0.0.0"), _finding("high", "other"), _finding("medium"), _finding("info"))
    c = lint_check(GateSpec(), GateInputs(lint_findings=found))
    assert (c.name, c.stage, c.passed, c.is_gating, c.evaluated) == (LINT_CHECK, "config", False, True, True)
    assert c.value == "2 high, 1 medium, 1 info"
    assert c.baseline is None
    assert c.limit == "no high findings"
    assert c.detail == ("high rule-high: k=0.0.0.0 (ref); high other: k (ref); each fix is in the report's "
                        "TorchServe config section (package-validate lint prints them)")


def test_lint_check_passes_without_a_failing_severity_and_says_when_not_gated():
    clean = lint_check(GateSpec(), GateInputs(lint_findings=(_finding("low"), _finding("info"))))
    assert (clean.passed, clean.is_gating, clean.value, clean.detail) == (True, True, "1 low, 1 info", "")
    none = lint_check(GateSpec(), GateInputs(lint_findings=()))
    assert (none.passed, none.value) == (True, "no findings")
    two = lint_check(GateSpec(lint=["high", "medium"]), GateInputs(lint_findings=(_finding("medium"),)))
    assert (two.passed, two.limit) == (False, "no high/medium findings")
    assert two.detail.startswith("medium rule-medium: k (ref); each fix")
    off = lint_check(GateSpec(lint=[]), GateInputs(lint_findings=(_finding("high"),)))
    assert (off.passed, off.is_gating, off.limit, off.value) == (True, False, "reported, not gated", "1 high")


def test_lint_check_that_could_not_run_fails_as_not_evaluated():
    c = lint_check(GateSpec(), GateInputs())
    assert (c.name, c.stage, c.passed, c.evaluated, c.is_gating) == (LINT_CHECK, "config", False, False, True)
    assert (c.value, c.baseline, c.limit) == (None, None, "no high findings")
    assert c.detail == "not evaluated: the run stopped before the lint"
    assert lint_check(GateSpec(lint=[]), GateInputs()).is_gating is False


def test_a_task_reads_its_own_answers_through_its_decoder():
    spec = spec_for(1, model={"task": "regression"}, answers={"envelope": "kserve_v1"})
    cmap = class_map_for(spec)
    c = codec_for(spec, cmap, "auto", "the test")
    assert c.envelope is ENVELOPES["kserve_v1"]
    assert (c.format, c.chosen_by) == ("regression", "model.task: regression")
    assert c.spec is spec and c.class_map is cmap
    assert (c.required_classes, c.required_words, c.settled) == (0, "nothing (a task's own answers)", True)
    assert c.decoder is not None and c.decoder.name == "regression"
    assert c.decoder.decode([2.5]) is not None
