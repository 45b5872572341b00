"""Model inputs of any structure: the helpers, the stream, scoring, export examples, probes and timing."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from pipeline import modelinput as mi
from pipeline.evaluate.gate import GateInputs, export_ratio_checks
from pipeline.inputs.base import Reference
from pipeline.inputs.stream import StreamFacts, reference_chunks
from pipeline.model.forward import run_batched, score_chunks
from pipeline.spec import GateSpec
from pipeline.stages import export
from tests.model_inputs import make_bag_project


def test_as_input_keeps_tensors_and_dtypes_and_reads_tuples_lists_dicts_and_arrays():
    ids = torch.tensor([3, 1, 4])
    assert mi.as_input(ids) is ids
    pair = mi.as_input([ids, np.array([0])])
    assert isinstance(pair, tuple) and pair[1].dtype == torch.int64 and pair[0] is ids
    named = mi.as_input({"input_ids": ids, "attention_mask": torch.ones(3, dtype=torch.bool)})
    assert list(named) == ["input_ids", "attention_mask"]
    assert mi.describe(named) == "{input_ids: int64 [3], attention_mask: bool [3]}"
    assert mi.describe(pair) == "(int64 [3], int64 [1])"


@pytest.mark.parametrize("value, words", [
    ("text", "a str; expected a torch.Tensor, a tuple of tensors"),
    ((torch.zeros(2), [1, 2]), "item 1 is a list, not a tensor"),
    ({"ids": torch.zeros(2), 3: torch.zeros(2)}, "needs str keys"),
    ((), "an empty tuple"),
])
def test_as_input_refuses_what_is_not_a_structure_of_tensors_saying_what_it_got(value, words):
    with pytest.raises(TypeError, match=words):
        mi.as_input(value)


def test_rows_of_one_shape_stack_and_rows_that_vary_need_a_collate():
    rows = [(torch.tensor([1, 2]), torch.tensor([0])), (torch.tensor([3, 4]), torch.tensor([0]))]
    batch = mi.stack(rows)
    assert batch[0].tolist() == [[1, 2], [3, 4]] and batch[1].shape == (2, 1)
    assert mi.take(batch, 1)[0].tolist() == [[3, 4]]
    ragged = [(torch.tensor([1, 2, 3]), torch.tensor([0])), (torch.tensor([4]), torch.tensor([0]))]
    with pytest.raises(ValueError, match="model.collate"):
        mi.stack(ragged)

    def cat(rs):
        return torch.cat([r[0] for r in rs]), torch.tensor([0, len(rs[0][0])])

    ids, offsets = mi.batch_of(ragged, cat)
    assert ids.tolist() == [1, 2, 3, 4] and offsets.tolist() == [0, 3]


def test_call_model_spreads_a_tuple_and_a_dict_as_forward_does():
    seen = []

    def fwd(*args, **kwargs):
        seen.append((len(args), sorted(kwargs)))

    mi.call_model(fwd, torch.zeros(1))
    mi.call_model(fwd, (torch.zeros(1), torch.zeros(1)))
    mi.call_model(fwd, {"input_ids": torch.zeros(1), "attention_mask": torch.zeros(1)})
    assert seen == [(1, []), (2, []), (0, ["attention_mask", "input_ids"])]


def test_a_range_is_elementwise_while_the_shape_holds_and_a_scalar_once_it_varies():
    r = mi.RangeTracker()
    r.add([torch.tensor([1, 5]), torch.tensor([2, 0])])
    assert r.lows[0].tolist() == [1, 0] and r.highs[0].tolist() == [2, 5]
    r.add([torch.tensor([9, 9, -1])])
    assert r.lows[0].shape == () and float(r.lows[0]) == -1 and float(r.highs[0]) == 9


def _sample(rows, **kw):
    r = mi.RangeTracker()
    r.add(rows)
    return mi.InputSample(rows=tuple(rows), lows=tuple(r.lows), highs=tuple(r.highs), **kw)


def test_integer_inputs_probe_whole_numbers_within_the_data_range_and_keep_their_dtype():
    rows = [{"ids": torch.tensor([5, 9, 7]), "mask": torch.tensor([True, True, False])},
            {"ids": torch.tensor([6, 8]), "mask": torch.tensor([True, False])}]
    families = dict(mi.probe_rows(_sample(rows, is_fixed=False), n=8))
    assert "negated rows (floating inputs)" not in families, "an id outside the data is not an input"
    for name, probe in families.items():
        for row, like in zip(probe, rows * 4):
            assert row["ids"].dtype == torch.int64 and row["mask"].dtype == torch.bool, name
            assert row["ids"].shape == like["ids"].shape, name
            assert 5 <= int(row["ids"].min()) and int(row["ids"].max()) <= 9, (name, row)
    assert {int(v) for row in families["uniform in the domain"] for v in row["ids"]} > {5, 9}, "spread, not 2 values"
    assert [int(r["ids"].max()) for r in families["domain maximum"]] == [9] * 8
    assert [int(r["ids"].min()) for r in families["zeros (within an integer input's range)"]] == [5] * 8


def test_a_spec_value_range_bounds_integer_probes_to_its_whole_numbers():
    rows = [torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5])]
    families = dict(mi.probe_rows(_sample(rows), n=4, value_range=(0.5, 3.7)))
    assert {int(v) for r in families["uniform in the domain"] for v in r} <= {1, 2, 3}
    assert int(families["domain maximum"][0].max()) == 3 and int(families["domain minimum"][0].min()) == 1


def test_float_leaves_of_a_structure_probe_floats_and_get_the_negated_and_scaled_families():
    rows = [(torch.tensor([0.5, -1.0]), torch.tensor([2]))]
    families = dict(mi.probe_rows(_sample(rows), n=2))
    assert families["negated rows (floating inputs)"][0][0].tolist() == [-0.5, 1.0]
    assert families["negated rows (floating inputs)"][0][1].tolist() == [2], "the integer input is kept"
    assert families["uniform in the domain"][0][0].dtype == torch.float32


def test_dims_whose_sizes_differ_between_examples_are_dynamic_for_torch_export():
    a = {"ids": torch.zeros(2, 5, dtype=torch.int64), "mask": torch.zeros(2, 5)}
    b = {"ids": torch.zeros(3, 7, dtype=torch.int64), "mask": torch.zeros(3, 7)}
    dims = mi.dynamic_dims([a, b])
    assert dims == {"ids": {0: torch.export.Dim.AUTO, 1: torch.export.Dim.AUTO},
                    "mask": {0: torch.export.Dim.AUTO, 1: torch.export.Dim.AUTO}}
    assert mi.dynamic_dims([torch.zeros(2, 4), torch.zeros(3, 4)]) == {0: torch.export.Dim.AUTO}


class _Rows:
    """Just enough of inputs.base.Rows for the stream: bodies are the row's token count."""

    content_type = "application/octet-stream"

    def __init__(self, lengths):
        self.lengths = lengths
        self.ids = [f"r{i}" for i in range(len(lengths))]
        self.paths = None

    def __len__(self):
        return len(self.lengths)

    def chunks(self, n):
        return [range(i, min(i + n, len(self))) for i in range(0, len(self), n)]

    def body(self, i):
        return self.lengths[i]


def _stream(lengths, fn, collate=None, chunk_rows=3):
    facts = StreamFacts()
    ref = Reference("test", "test", fn)
    import pipeline.inputs.stream as stream
    original = stream.worker_view
    stream.worker_view = lambda body, ct: body
    try:
        return facts, list(reference_chunks(_Rows(lengths), ref, chunk_rows, facts, collate=collate))
    finally:
        stream.worker_view = original


def test_rows_whose_length_varies_are_kept_and_fed_one_by_one_with_their_dtype():
    facts, chunks = _stream([3, 1, 4, 1, 5], lambda n: (torch.arange(n), torch.tensor([0])))
    assert facts.failed_count == 0 and not facts.is_fixed
    (_, first), _ = chunks
    assert first.stacked is None and first.one(2)[0].tolist() == [[0, 1, 2, 3]]
    assert facts.sample_inputs[4][0].dtype == torch.int64
    assert "shapes vary by row" in facts.description()


def test_a_row_whose_structure_or_dtype_differs_from_the_first_fails_with_both_named():
    facts, _ = _stream([2, 3, 2], lambda n: torch.zeros(n) if n == 3 else torch.arange(n))
    assert facts.failed_count == 1
    assert "gave float32 [3], the first row gave int64 [2]" in facts.failures[0][1]


def test_rows_of_one_shape_stack_into_chunks_as_before():
    facts, chunks = _stream([1, 2, 3, 4], lambda n: torch.tensor([n, -n, 0], dtype=torch.int64))
    assert facts.is_fixed and chunks[0][1].stacked.shape == (3, 3)
    assert facts.low.tolist() == [1.0, -4.0, 0.0] and len(facts.sample) == 4
    assert facts.ranges.lows[0].tolist() == [1, -4, 0] and facts.ranges.highs[0].tolist() == [4, -1, 0]
    assert [r.tolist() for r in facts.sample_inputs] == [[n, -n, 0] for n in (1, 2, 3, 4)]
    assert facts.sample_inputs[3].dtype == torch.int64


class _Bag(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embedding = nn.EmbeddingBag(10, 4, mode="mean")
        self.fc = nn.Linear(4, 2)

    def forward(self, text, offsets):
        return self.fc(self.embedding(text, offsets))


def _concat(rows):
    return (torch.cat([r[0] for r in rows]),
            torch.tensor([0] + [len(r[0]) for r in rows[:-1]]).cumsum(0))


def test_score_chunks_feeds_forward_several_inputs_built_by_the_collate():
    model = _Bag().eval()
    facts, chunks = _stream([3, 1, 4], lambda n: (torch.arange(n) + 1, torch.tensor([0])), collate=_concat)
    scores = score_chunks(model, chunks, 3, warmup=1)
    with torch.no_grad():
        want = model(torch.tensor([1, 2, 3, 1]), torch.tensor([0, 3])).numpy()
    assert np.allclose(scores.logits[:2], want, atol=1e-6)
    assert np.isfinite(scores.latencies_ms).all()
    batched = run_batched(model, list(facts.sample_inputs), 3, _concat)
    assert np.allclose(batched, scores.logits, atol=1e-6)


@pytest.mark.parametrize("mode", ["trace", "script"])
def test_int64_ids_are_exported_with_their_dtype_and_compared_on_the_same_structure(tmp_path, mode):
    from tests.helpers import in_process

    spec_path = make_bag_project(tmp_path / "proj", rows=8, spec_overrides={"export": {"mode": mode}})
    ip = in_process(spec_path)
    assert ip.base.inputs.rows[0][0].dtype == torch.int64
    ex = export.export_model(ip.spec, ip.model, ip.rows, ip.base, tmp_path / "out")
    assert ex.consistency.is_consistent and ex.consistency.max_abs_diff <= 1e-6
    probes = {(p.name, p.batch_size): p for p in ex.consistency.probes}
    assert probes[("dataset rows at batch 7", 7)].is_ok and probes[("uniform in the domain", 64)].error is None


class _MaskedMean(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(10, 4)
        self.fc = nn.Linear(4, 2)

    def forward(self, input_ids, attention_mask):
        m = attention_mask.unsqueeze(-1).float()
        return self.fc((self.embed(input_ids) * m).sum(1) / m.sum(1).clamp(min=1.0))


def _pad(rows):
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.int64)
    mask = torch.zeros(len(rows), width, dtype=torch.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r["input_ids"])] = r["input_ids"]
        mask[i, : len(r["input_ids"])] = r["attention_mask"]
    return {"input_ids": ids, "attention_mask": mask}


def test_torch_export_gets_dynamic_lengths_and_runs_on_other_lengths_and_batches():
    rows = [{"input_ids": torch.arange(n) % 10, "attention_mask": torch.ones(n, dtype=torch.int64)}
            for n in (3, 5, 2, 6, 4, 7)]
    base = SimpleNamespace(inputs=_sample(rows, collate=_pad, is_fixed=False))
    examples = export._export_examples(base)
    assert [e["input_ids"].shape for e in examples] == [(2, 5), (3, 6)]
    model = _MaskedMean().eval()
    args, kwargs = mi.example_inputs(examples[0])
    ep = torch.export.export(model, args, kwargs, dynamic_shapes=mi.dynamic_dims(examples), strict=False)
    other = base.inputs.batch([5, 0, 1, 2, 3])
    with torch.no_grad():
        assert torch.allclose(ep.module()(**other), model(**other), atol=1e-6)


def test_a_file_copy_is_not_timed_and_the_gate_says_why(tmp_path):
    from tests.helpers import in_process

    ip = in_process(make_bag_project(tmp_path / "proj", rows=6, spec_overrides={"export": {"mode": "eager"}}))
    ex = export.export_model(ip.spec, ip.model, ip.rows, ip.base, tmp_path / "out")
    assert ex.timings == () and ex.untimed_reason.startswith("not timed: the archive holds the eager model file")
    assert any(n.startswith("latency: not timed") for n in ex.notes)
    (check,) = [c for c in export_ratio_checks(GateSpec(), GateInputs(export_latency_untimed=ex.untimed_reason))
                if "latency" in c.name]
    assert check.detail == f"not evaluated: {ex.untimed_reason}" and not check.evaluated


def test_latency_timing_stops_at_its_budget_and_at_its_repeat_count(monkeypatch):
    clock = {"ns": 0}

    def fn(x):
        clock["ns"] += 1_000_000  # each call costs 1 ms of the fake clock

    monkeypatch.setattr(export, "time", SimpleNamespace(perf_counter=lambda: clock["ns"] / 1e9,
                                                        perf_counter_ns=lambda: clock["ns"]))
    calls = []
    counted = lambda x: (calls.append(1), fn(x))  # noqa: E731
    median, _ = export._median_iqr(counted, torch.zeros(1), repeats=10_000, budget_s=0.05)
    assert 40 <= len(calls) <= 60 and median == pytest.approx(1000.0), len(calls)
    calls.clear()
    export._median_iqr(counted, torch.zeros(1), repeats=30, budget_s=100.0)
    assert len(calls) == 30 + 5, "5 warm-up calls, then the repeat count"


class _NoClampMean(_MaskedMean):
    def forward(self, input_ids, attention_mask):
        m = attention_mask.unsqueeze(-1).float()
        return self.fc((self.embed(input_ids) * m).sum(1) / m.sum(1))  # NaN for a row with no word


def test_a_probe_where_eager_and_export_both_give_nan_agrees_and_a_real_difference_still_fails():
    from tests.unit._support import spec_for

    rows = [{"input_ids": torch.tensor([1, 2, 0]), "attention_mask": torch.tensor([1, 1, 0])},
            {"input_ids": torch.tensor([3, 4]), "attention_mask": torch.tensor([1, 1])}]
    base = SimpleNamespace(inputs=_sample(rows, collate=_pad, is_fixed=False), sample=np.zeros((0,)))
    spec = spec_for(2)
    model = _NoClampMean().eval()
    probes = export._run_probes(spec, model, model, base)
    assert all(p.is_ok for p in probes), [(p.name, p.error) for p in probes if not p.is_ok]
    assert any(p.name == "domain minimum" for p in probes), "the all-zero mask was probed"
    shifted = lambda **x: model(**x) + 1e-3  # noqa: E731
    assert not any(p.is_ok for p in export._run_probes(spec, model, shifted, base) if p.name == "uniform in the domain")


MEAN_IDS = '''
import torch
from torch import nn


class MeanIds(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(30, 4)
        self.fc = nn.Linear(4, 2)

    def forward(self, ids):
        return self.fc(self.embed(ids).mean(1))


def build():
    torch.manual_seed(0)
    return MeanIds()


def pre(text):
    return torch.tensor([ord(c) % 30 for c in text], dtype=torch.int64)
'''


def test_rows_of_varying_length_without_a_collate_are_scored_exported_and_timed_one_at_a_time(tmp_path):
    import pandas as pd
    import yaml

    from tests.helpers import in_process

    (tmp_path / "m.py").write_text(MEAN_IDS)
    ns: dict = {}
    exec(MEAN_IDS, ns)
    model = ns["build"]().eval()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    texts = ["ab", "hello", "xyz", "a longer text", "mid", "q"]
    with torch.no_grad():
        labels = [int(model(ns["pre"](t)[None]).argmax()) for t in texts]
    pd.DataFrame({"id": [str(i) for i in range(6)], "label": labels, "text": texts}).to_csv(tmp_path / "t.csv",
                                                                                          index=False)
    torch.save({"a": 0}, tmp_path / "source_vocab.pt")  # the plan checks the built-in's vocabulary loads
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({
        "name": "ids", "model": {"factory": "m.py:build", "weights": "w.pt", "num_classes": 2, "preprocess": "m.py:pre"},
        "dataset": {"kind": "text", "path": "t.csv"},
        "handler": {"name": "text_classifier", "extra_files": ["source_vocab.pt"]},
        "export": {"mode": "trace", "latency_repeats": 10, "latency_budget_s": 0.5}}))
    ip = in_process(tmp_path / "spec.yaml")
    assert (ip.base.scores.predictions == labels).all()
    assert ip.base.inputs.description() == "int64 [2] (first row; shapes vary by row)"
    ex = export.export_model(ip.spec, ip.model, ip.rows, ip.base, tmp_path / "out")
    assert ex.consistency.is_consistent, ex.consistency
    skipped = [p for p in ex.consistency.probes if p.batch_size > 1]
    assert skipped and all(p.is_ok and p.error.startswith("skipped: rows vary in shape") for p in skipped)
    assert [t.batch_size for t in ex.timings] == [1]
    assert "latency: timed at batch 1 only: rows vary in shape" in " ".join(ex.notes)


def test_a_single_tensor_of_varying_length_gets_its_dims_as_the_first_arguments_spec(monkeypatch, tmp_path):
    seen = {}

    def fake_export(model, args, kwargs, dynamic_shapes, strict):
        seen.update(args=args, kwargs=kwargs, dynamic=dynamic_shapes)
        raise RuntimeError("stop here")

    monkeypatch.setattr(torch.export, "export", fake_export)
    from tests.unit._support import spec_for

    examples = [torch.zeros(1, 3, dtype=torch.int64), torch.zeros(1, 5, dtype=torch.int64)]
    with pytest.raises(export.ExportError, match="stop here"):
        export._aoti_package(spec_for(2), nn.Identity(), examples, tmp_path / "m.pt2")
    assert seen["dynamic"] == ({1: torch.export.Dim.AUTO},) and seen["kwargs"] is None
