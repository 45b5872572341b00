"""``make bench-scale``: one full run over N images, for the replay's images/s and the run's peak memory.

Rows stream through every stage in bounded chunks, so memory should stay flat however many images
there are; this run is how that is seen. The N images are hard links to the ``digits_images``
example's test PNGs, cycled (a folder of N links costs inodes, not disk), listed in a manifest in a
temporary folder and validated through the example's spec: TorchServe's built-in ``image_classifier``,
the model shipped eager. The run is the real CLI in a child process; its resident memory and that
of every process under it (the handled stage's child, TorchServe's Java and its workers) are sampled
every half second. The tree's figure sums resident sets, so pages those processes share count more
than once: it is an upper bound.

Not part of ``make test``: 100,000 images take about 25 minutes on a 2-core machine. This module is an
entry point like ``cli``: it prints.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits_images"
SAMPLE_S = 0.5


def make_dataset(example: Path, n: int, out: Path, concurrency: int | None = None) -> Path:
    """N image rows (hard links to the example's test images, cycled), a manifest, and a spec; the spec's path."""
    by_class = [sorted(d.glob("*.png")) for d in sorted((example / "images" / "test").glob("*/")) if d.is_dir()]
    # Round-robin over the classes, so that every N from 10 up holds every class (a metric over a
    # class absent from the rows is undefined, and its check fails as not evaluable).
    src = [files[k] for k in range(max(map(len, by_class), default=0)) for files in by_class if k < len(files)]
    if not src:
        raise SystemExit(f"{example}/images/test holds no PNG files: run `make examples` first")
    (out / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        s = src[i % len(src)]
        dst = out / "img" / f"{i:07d}.png"
        try:
            os.link(s, dst)
        except OSError:  # another file system, or no hard links: a copy is as good, only bigger
            shutil.copyfile(s, dst)
        rows.append({"id": f"r{i:07d}", "path": f"img/{i:07d}.png", "label": s.parent.name})
    with open(out / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["id", "path", "label"])
        w.writeheader()
        w.writerows(rows)
    spec = yaml.safe_load((example / "spec.yaml").read_text(encoding="utf-8"))
    spec["name"] = f"{spec['name']}_scale"
    spec["model"].update(factory=f"{example / 'model.py'}:build_model", weights=str(example / "weights.pt"))
    spec["dataset"] = {"kind": "image", "path": str(out / "manifest.csv")}
    spec["handler"]["extra_files"] = [str(example / f) for f in ("index_to_name.json",)]
    spec["timeout_s"] = max(3600, n // 10)
    spec.setdefault("export", {})["latency_repeats"] = 20  # reported, not gated; at 3x224x224 the default costs seconds
    if concurrency:
        spec.setdefault("replay", {})["concurrency"] = concurrency
    path = out / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


class PeakMemory:
    """Samples the resident memory of a process and of its whole tree until stopped; keeps the peaks."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak_main = self.peak_tree = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        try:
            main = self.proc.memory_info().rss
            tree = main
            for child in self.proc.children(recursive=True):
                try:
                    tree += child.memory_info().rss
                except psutil.Error:
                    pass  # it ended between the listing and the read
        except psutil.Error:
            return
        self.peak_main, self.peak_tree = max(self.peak_main, main), max(self.peak_tree, tree)

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.sample()


def run_scale(n: int, work: Path, concurrency: int | None = None) -> dict:
    """Generate the dataset, run the CLI on it under the memory sampler; the figures."""
    spec = make_dataset(EXAMPLE, n, work / "data", concurrency)
    cmd = [sys.executable, "-m", "pipeline", "run", str(spec), "--reports-dir", str(work / "reports"),
           "--model-store", str(work / "store"), "--no-publish"]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with PeakMemory(proc.pid) as mem:
        out, _ = proc.communicate()
    wall = time.monotonic() - started
    reports = sorted((work / "reports").glob("*/report.json"))
    if not reports:
        raise SystemExit(f"the run wrote no report (exit {proc.returncode}):\n{out[-3000:]}")
    rep = json.loads(reports[-1].read_text())
    replay = rep["stages"].get("replay") or {}
    return {"images": n, "exit_code": proc.returncode, "verdict": rep["verdict"], "wall_s": wall,
            "stage_seconds": rep["stage_seconds"], "replay_concurrency": replay.get("concurrency"),
            "replay_images_per_s": replay.get("throughput_rps"), "replay_answered": replay.get("answered"),
            "client_cpu_us_per_request": replay.get("client_cpu_us_per_request"),
            "peak_rss_mib": mem.peak_main / 2**20, "peak_tree_rss_mib": mem.peak_tree / 2**20,
            "run_dir": rep["run_dir"], "console_tail": out[-2500:]}


def _print(res: dict) -> None:
    n = res["images"]
    print(f"\n{n} images, verdict {res['verdict']} (exit {res['exit_code']}), {res['wall_s']:.0f} s in all")
    per_row = {"baseline", "export", "handled", "replay"}
    for stage, s in res["stage_seconds"].items():
        rate = f"  {n / s:8.0f} images/s" if stage in per_row and s > 0 else ""
        print(f"  {stage:10} {s:9.2f} s{rate}")
    rps = res["replay_images_per_s"]
    print(f"replay (timed loop, concurrency {res['replay_concurrency']}): "
          f"{rps:.0f} images/s" if rps else "replay: no figure (see the console tail)")
    print(f"peak resident memory: package-validate {res['peak_rss_mib']:.0f} MiB; its whole process tree "
          f"(handled child, TorchServe, Java, workers; shared pages counted per process) "
          f"{res['peak_tree_rss_mib']:.0f} MiB")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.bench_scale", description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--concurrency", type=int, default=None, help="replay.concurrency (default: the example's)")
    ap.add_argument("--out", type=Path, default=Path.cwd() / "reports" / "bench")
    ap.add_argument("--keep", action="store_true", help="keep the generated images and the run folder")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="scale-"))
    try:
        res = run_scale(args.images, work, args.concurrency)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    (args.out / f"scale-{args.images}.json").write_text(json.dumps(res, indent=2))
    _print(res)
    print(f"\nwritten: {args.out / f'scale-{args.images}.json'}" + (f"; run folder {res['run_dir']}" if args.keep else ""))
    return 0 if res["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
