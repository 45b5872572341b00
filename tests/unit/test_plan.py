"""The plan decides what runs and what is checked, before any stage: stages, formats, and not-evaluable checks."""

import numpy as np

from pipeline.evaluate.compare import StageOutputs, compare_stages
from pipeline.evaluate.gate import GateInputs, StageFacts, evaluate_gate
from pipeline.run.plan import plan_run
from tests.helpers import tiny_spec


def test_answers_without_probabilities_make_the_output_check_not_evaluable_and_failing(tmp_path):
    (tmp_path / "custom.py").write_text("class H:\n    pass\n")
    spec = tiny_spec(3, handler=str(tmp_path / "custom.py"), answers={"format": "mapping",
                                                                      "mapping": {"label": "label"}})
    plan = plan_run(spec)
    assert plan.gate.output_quantity["served"].startswith("not evaluable: the mapping answers carry only")
    y = np.array([0, 1, 2] * 4)
    eye = np.eye(3)
    stages = [StageOutputs("baseline", y, eye[y], eye[y], None), StageOutputs("served", y.copy(), None, None, None)]
    cmp = compare_stages(tuple(f"r{i}" for i in range(12)), y, ("0", "1", "2"), stages)
    only_served = plan.gate.__class__(candidates=("served",), labels=("0", "1", "2"),
                                      output_quantity={"served": plan.gate.output_quantity["served"]})
    facts = GateInputs(answered={"served": StageFacts(0.0, {}, True)})
    res = evaluate_gate(spec.gate, only_served, cmp, facts)
    check = next(c for c in res.checks if c.name == "max abs output difference")
    assert not check.passed and check.is_gating and check.detail.startswith("not evaluable")
    assert not res.passed, "a check the answers cannot support never passes in silence"
    allowed = spec.gate.model_copy(update={"allow_not_evaluable": ("max abs output difference",)})
    res = evaluate_gate(allowed, only_served, cmp, facts)
    check = next(c for c in res.checks if c.name == "max abs output difference")
    assert not check.passed and not check.is_gating and res.passed, "shown as a WARN only where the spec allows"


def test_planned_stages_follow_the_batch_size_and_until(tmp_path):
    spec = tiny_spec(3, serving={"batch_size": 4})
    assert plan_run(spec).stages == ("exported", "handled", "handled@batch4", "served")
    assert plan_run(spec, until="handled").stages == ("exported", "handled", "handled@batch4")
    assert plan_run(spec, until="export").stages == ("exported",)
    assert plan_run(spec).gate.probes == ("exported", "handled", "served")
    assert plan_run(tiny_spec(3, replay={"warmup_requests": 0})).gate.warmup is False
