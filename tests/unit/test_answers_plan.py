"""The plan lets answers of only a class compare classes, unless the spec demands probabilities (imports torch:
kept out of the mutation tester's torch-free selection)."""

from tests.unit._support import spec_for


def test_the_plan_allows_classes_only_unless_the_spec_demands_probabilities(tmp_path):
    from pipeline.run.plan import plan_run

    (tmp_path / "h.py").write_text("class H:\n    pass\n")
    plan = plan_run(spec_for(3, handler=str(tmp_path / "h.py"), answers={"format": "index"}))
    assert plan.gate.classes_only == ("handled", "served")
    demanded = plan_run(spec_for(3, handler=str(tmp_path / "h.py"), answers={"format": "index", "top_k": 1}))
    assert demanded.gate.classes_only == ()
