from pipeline.bench import parse_ab

AB_STDOUT = """
Concurrency Level:      16
Time taken for tests:   2.001 seconds
Complete requests:      2000
Failed requests:        3
Non-2xx responses:      2
Keep-Alive requests:    2000
Requests per second:    999.53 [#/sec] (mean)
Time per request:       16.008 [ms] (mean)
"""
AB_CSV = "Percentage served,Time in ms\n0,0.412\n50,14.979\n90,19.001\n99,25.500\n100,40.000\n"


def test_parse_ab_reads_throughput_failures_and_float_percentiles():
    r = parse_ab(AB_STDOUT, AB_CSV)
    assert r == {"rps": 999.53, "failed": 3, "non_2xx": 2, "p50": 14.979, "p90": 19.001, "p99": 25.5}


def test_parse_ab_rejects_unexpected_output():
    import pytest

    with pytest.raises(ValueError, match="unexpected ab output"):
        parse_ab("ab: invalid URL", "")


def test_scale_dataset_cycles_the_example_images_into_a_manifest_and_spec(tmp_path):
    import csv
    import shutil

    import yaml

    from pipeline.bench_scale import EXAMPLE, make_dataset
    from pipeline.spec import load_spec

    example = tmp_path / "example"
    for cls in ("0_zero", "1_one"):
        (example / "images" / "test" / cls).mkdir(parents=True)
        for k in range(2):
            (example / "images" / "test" / cls / f"{cls}-{k}.png").write_bytes(f"{cls}{k}".encode())
    shutil.copyfile(EXAMPLE / "spec.yaml", example / "spec.yaml")
    spec_path = make_dataset(example, 7, tmp_path / "data", concurrency=4)
    with open(tmp_path / "data" / "manifest.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["label"] for r in rows] == ["0_zero", "1_one"] * 3 + ["0_zero"]  # every class, from the first rows on
    assert len({r["id"] for r in rows}) == 7
    # every row is its own file with the bytes of the image it stands for
    assert [(tmp_path / "data" / r["path"]).read_bytes() for r in rows] == [
        b"0_zero0", b"1_one0", b"0_zero1", b"1_one1", b"0_zero0", b"1_one0", b"0_zero1"]
    raw = yaml.safe_load(spec_path.read_text())
    assert raw["dataset"] == {"kind": "image", "path": str(tmp_path / "data" / "manifest.csv")}
    assert raw["replay"]["concurrency"] == 4
    spec = load_spec(spec_path)  # a valid spec, paths absolute
    assert spec.handler.name == "image_classifier"


def test_scale_dataset_needs_the_trained_example(tmp_path):
    import pytest

    from pipeline.bench_scale import make_dataset

    with pytest.raises(SystemExit, match="make examples"):
        make_dataset(tmp_path, 3, tmp_path / "data")


def test_peak_memory_sees_a_child_process_grow():
    import subprocess
    import sys

    from pipeline.bench_scale import PeakMemory

    code = "import time; b = bytearray(64 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(1.5)"
    parent = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {code!r}])"])
    with PeakMemory(parent.pid) as mem:
        parent.wait(timeout=30)
    assert mem.peak_tree >= 64 * 2**20 > mem.peak_main > 0


def test_bench_prints_phases_fractions_and_the_split(capsys):
    from pipeline.bench import _print_inprocess, _print_split
    from pipeline.evaluate.latency import split_latency
    from pipeline.stages.outcomes import RowOutcome

    rows = [RowOutcome(i, f"r{i}", True, 200, None, 2.0, f"id{i}", 0.5, None, None, 1, None, 1) for i in range(4)]
    split = split_latency(rows, {"queue_ms": [0.1] * 4}).to_dict()
    clients = {"inprocess": {"batch_size": 1, "batches": 10, "model_ms": 0.05, "model_rows_per_s": 20000.0,
                             "handled_ms": 0.25, "handled_rows_per_s": 4000.0, "phases_ms": {"handle": 0.25},
                             "phases_note": "the handler's class Own overrides handle: timed as one phase (handle)"},
               "concurrency": {"1": {"client_rps_median": 1000.0, "client_varied_rps_median": 800.0,
                                     "fractions": {"client_of_handled": 0.25, "client_of_model": 0.05,
                                                   "client_varied_of_handled": 0.2, "client_varied_of_model": 0.04},
                                     "latency_split": split}}}
    _print_inprocess(clients)
    _print_split(clients)
    out = capsys.readouterr().out
    assert "0.050 ms/batch      20000 rows/s" in out and "timed as one phase (handle)" in out
    assert "   1          1000       0.250    0.0500           800       0.200    0.0400" in out
    assert "concurrency 1: 4 rows (4 prediction_only)" in out
    assert "outside the worker           1.500 / 1.500 / 1.500 / 1.500" in out
    assert "note: 4 answered row(s) have a PredictionTime but no HandlerTime" in out
