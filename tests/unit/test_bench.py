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
