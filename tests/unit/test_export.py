"""Export proves sameness: trace misses data-dependent branches, a perturbed weight is caught."""

import numpy as np
import pytest
import torch

from pipeline.errors import ExportError
from pipeline.stages.export import PROBE_BATCH_SIZES, export_model, verify_export
from tests.helpers import in_process, make_project


def _setup(tmp_path, **kw):
    p = in_process(make_project(tmp_path, **kw))
    return p.spec, p.rows, p.model, p.base


def test_script_export_is_consistent_and_probes_several_batch_sizes(tmp_path):
    spec, data, model, base = _setup(tmp_path)
    res = export_model(spec, model, data, base, tmp_path / "out")
    c = res.consistency
    assert c.is_consistent and c.max_abs_diff <= 1e-5 and c.agreement == 1.0 and not c.diverging_ids
    batch_sizes = {p.batch_size for p in c.probes if p.name.startswith("dataset rows")}
    assert batch_sizes == set(PROBE_BATCH_SIZES)
    assert {"zeros", "domain minimum", "domain maximum"} <= {p.name for p in c.probes}
    assert res.size_bytes == res.path.stat().st_size > 0
    assert {t.batch_size for t in res.timings} == {1, 32} and all(t.ratio > 0 for t in res.timings)
    assert any("deprecated" in w.message for w in res.warnings), "torch's deprecation warnings are captured"


def test_data_dependent_model_caught_under_trace_and_passes_under_script(tmp_path):
    spec, data, model, base = _setup(tmp_path, factory="build_branchy")
    scripted = export_model(spec, model, data, base, tmp_path / "s")
    assert scripted.consistency.is_consistent
    spec_t = spec.model_copy(update={"export": spec.export.model_copy(update={"mode": "trace"})})
    traced = export_model(spec_t, model, data, base, tmp_path / "t")
    x = data.features.reshape(len(data), -1)
    took_other_branch = (x.sum(axis=1) > 0) != (x[0].sum() > 0)
    expected = sorted(np.asarray(data.ids)[took_other_branch])
    assert expected, "fixture must have rows on both branches"
    assert sorted(traced.consistency.diverging_ids) == expected
    assert not traced.consistency.is_consistent
    assert any("Tracer" in w.category or "trace" in w.message.lower() for w in traced.warnings)


def test_perturbed_export_is_caught_with_rows_named(tmp_path):
    spec, data, model, base = _setup(tmp_path)
    res = export_model(spec, model, data, base, tmp_path / "out")
    m = torch.jit.load(str(res.path))
    with torch.no_grad():
        m.fc1.weight[0, 0] += 1e-3
    bad = tmp_path / "perturbed.pt"
    torch.jit.save(m, str(bad))
    scores, c, _ = verify_export(spec, model, bad, data, base)
    assert not c.is_consistent
    assert 1e-6 < c.max_abs_diff < 1e-2
    diffs = np.abs(scores.logits - base.scores.logits).max(axis=1)
    assert sorted(c.diverging_ids) == sorted(np.asarray(data.ids)[diffs > spec.gate.max_output_diff])
    assert any(not p.is_ok for p in c.probes)


UNSCRIPTABLE = '''
import numpy as np
import torch
from torch import nn


class Unscriptable(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        scale = np.asarray([1.0, 2.0, 3.0]).sum()
        return self.fc(x) * float(scale)


def build():
    torch.manual_seed(0)
    return Unscriptable()
'''


def test_unscriptable_op_gives_export_error_with_hint(tmp_path):
    spec, data, _, base = _setup(tmp_path)
    (tmp_path / "unscriptable.py").write_text(UNSCRIPTABLE)
    ns = {}
    exec(UNSCRIPTABLE, ns)
    model = ns["build"]().eval()
    with pytest.raises(ExportError) as e:
        export_model(spec, model, data, base, tmp_path / "out")
    assert e.value.exit_code == 2
    assert "torch.jit.script could not export" in str(e.value) and "export.mode: trace" in str(e.value)


def test_optimize_is_measured_and_used_only_when_consistent_and_faster(tmp_path):
    spec, data, model, base = _setup(tmp_path)
    spec = spec.model_copy(update={"export": spec.export.model_copy(update={"optimize": True})})
    res = export_model(spec, model, data, base, tmp_path / "out")
    assert len(res.notes) == 1 and res.notes[0].startswith("optimize: ")
    assert res.optimized == res.notes[0].startswith("optimize: used")
    assert res.path.name.endswith(".optimized.pt") == res.optimized
    assert res.consistency.is_consistent
