"""``make bench``: the replay client against Apache Bench on one served model, where the served time goes,
what model and handler alone can do in-process, and stage wall times.

Both tools hit the same TorchServe, in the same run, alternating (client, ab, client, ab)
so machine noise hits both alike; medians per tool are compared. ab sends one body, so the
client is measured on that same row repeated (and, for information, over the varied rows).
Targets (issue 4): client throughput >= 0.9x ab's and client p50 within 10% of ab's.

Before the server starts, the exported model and the archive's handler run in-process at the
served batch size (issue 19): the model's forward alone, and the handler through TorchServe's
``Service.predict`` with BaseHandler's preprocess, inference and postprocess timed by wrapping
the handler instance's methods (``inprocess.time_phases``; a handler that overrides ``handle``
or is a function is one phase). So the served throughput reads as a fraction of both. The
varied-rows replays read the server's metrics logs: the served latency split by part
(``evaluate.latency``) at each concurrency.
This module is an entry point like ``cli``: it prints.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from pipeline.inputs.base import Rows
from pipeline.model.loading import load_model
from pipeline.report.schema import environment
from pipeline.run.options import DEFAULT_REPORTS_DIR, RunOptions
from pipeline.run.phases import handler_batches, handler_config
from pipeline.run.plan import plan_run
from pipeline.run.runner import run_validation
from pipeline.spec import load_spec
from pipeline.evaluate.latency import split_latency
from pipeline.stages.archive import ArchiveConfig, build_archive
from pipeline.stages.baseline import score_baseline
from pipeline.stages.dataset import load_dataset
from pipeline.stages.export import _example, _median_iqr, export_model, load_exported
from pipeline.stages.handled import HandlerProcess
from pipeline.torchserve.inprocess import PHASES
from pipeline.stages.replay import ReplayConfig, replay_dataset
from pipeline.stages.serve import ServeConfig, serve_model
from pipeline.wire import worker_view

DEFAULT_SPEC = Path(__file__).resolve().parents[1] / "examples" / "digits" / "spec.yaml"
IMAGES_SPEC = DEFAULT_SPEC.parents[1] / "digits_images" / "spec.yaml"
SETTLE_S = 1.0  # between measurements: the previous tool's connections close, the server settles
AB_HINT = "ab (Apache Bench) not found: install it with `apt-get install -y apache2-utils`."


def parse_ab(stdout: str, csv_text: str) -> dict:
    """Requests/s, failures and percentiles (ms, float) from ab's output and its -e CSV."""
    rps = re.search(r"Requests per second:\s+([0-9.]+)", stdout)
    failed = re.search(r"Failed requests:\s+(\d+)", stdout)
    non2xx = re.search(r"Non-2xx responses:\s+(\d+)", stdout)
    pct = {}
    for row in csv.reader(csv_text.splitlines()[1:]):
        if len(row) == 2:
            pct[int(float(row[0]))] = float(row[1])
    if not rps or not pct:
        raise ValueError(f"unexpected ab output: {stdout[-500:]}")
    return {"rps": float(rps.group(1)), "failed": int(failed.group(1)) if failed else 0,
            "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "p50": pct.get(50), "p90": pct.get(90), "p99": pct.get(99)}


def _run_ab(url: str, token: str, body: Path, concurrency: int, n: int, work: Path,
            content_type: str = "application/json") -> dict:
    out_csv = work / f"ab-{concurrency}-{time.monotonic_ns()}.csv"
    cmd = ["ab", "-k", "-q", "-c", str(concurrency), "-n", str(n), "-p", str(body), "-T", content_type,
           "-H", f"Authorization: Bearer {token}", "-e", str(out_csv), url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"ab failed ({proc.returncode}): {proc.stderr.strip()[-300:]}")
    return parse_ab(proc.stdout, out_csv.read_text())


def _run_client(url: str, token: str, data: Rows, concurrency: int, codec, log_dir: Path | None = None) -> dict:
    """One replay's figures; with ``log_dir`` (the server's logs) also where its time went."""
    metrics = dict(metrics_log=log_dir / "model_metrics.log", frontend_log=log_dir / "ts_metrics.log") if log_dir else {}
    res = replay_dataset(ReplayConfig(url=url, token=token, codec=codec, concurrency=concurrency,
                                      warmup_requests=0, **metrics), data)
    cpu_us = res.client_cpu_us_per_request
    lat = np.array([r.latency_ms for r in res.rows if r.is_ok])
    out = {"rps": res.throughput_rps, "failed": res.failed, "cpu_us_per_request": cpu_us,
           "p50": float(np.percentile(lat, 50)),
           "p90": float(np.percentile(lat, 90)), "p99": float(np.percentile(lat, 99))}
    if log_dir is not None:
        out["latency_split"] = split_latency(res.rows, res.frontend).to_dict()
    return out


def _rows_per_s(batch: int, ms: float) -> float:
    return batch / (ms / 1e3) if ms > 0 else float("nan")


def bench_inprocess(spec, base, exported, archive, data: Rows, codec, work: Path, batches: int) -> dict:
    """The exported model's forward and the archive's handler in-process at the served batch size.

    The handler runs in TorchServe's own ``Service.predict`` in a child process (the handled stage's
    ``HandlerProcess``) with its phases timed; ``batches`` batches of consecutive rows (cycled), after
    a tenth as many untimed. Medians per batch (ms) and the rows/s they give.
    """
    b = spec.serving.batch_size
    forward = load_exported(exported.path, exported.model_file)
    model_us, model_iqr = _median_iqr(forward, _example(base, min(b, len(base.inputs.rows) or b)), batches * 4,
                                      budget_s=20.0)
    out: dict = {"batch_size": b, "model_ms": model_us / 1e3, "model_iqr_ms": model_iqr / 1e3,
                 "model_rows_per_s": _rows_per_s(b, model_us / 1e3)}
    cfg = handler_config(spec, archive, codec, work / "inprocess", b, time_phases=True)
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    totals, phases, why = [], {p: [] for p in PHASES}, None
    with HandlerProcess(cfg) as proc:
        for k, ms in enumerate(handler_batches(proc, data, codec, b, batches + batches // 10)):
            if k < batches // 10:
                continue  # warm-up
            totals.append(ms)
            got, why = proc.last_phases
            for p in PHASES:
                if got is not None:
                    phases[p].append(got[p])
    handled_ms = statistics.median(totals)
    out |= {"handled_ms": handled_ms, "handled_rows_per_s": _rows_per_s(b, handled_ms), "batches": len(totals)}
    if why is None:
        per = {p: statistics.median(v) for p, v in phases.items()}
        # the rest of Service.predict: decoding the batch, TorchServe's service, the envelope, the answers' bytes
        per["other"] = statistics.median(t - sum(phases[p][i] for p in PHASES) for i, t in enumerate(totals))
        out["phases_ms"] = per
    else:
        out["phases_ms"] = {"handle": handled_ms}
        out["phases_note"] = why
    return out


def _repeat(data: Rows, n: int, one_row: bool) -> Rows:
    idx = np.zeros(n, dtype=int) if one_row else np.arange(n) % len(data)
    return data.take(idx, ids=[f"{data.ids[i]}#{k}" for k, i in enumerate(idx)])


def _median(samples: list[dict], key: str) -> float:
    return float(statistics.median(s[key] for s in samples))


def bench_clients(spec_path: Path, work: Path, requests: int, rounds: int, inprocess_batches: int = 2000) -> dict:
    """Measure model and handler in-process, then start one TorchServe and measure the replay client and ab
    on it, alternating; the varied-rows replays also split the served latency by part."""
    spec = load_spec(spec_path)
    plan = plan_run(spec)
    data = load_dataset(spec).rows
    model = load_model(spec)
    base = score_baseline(spec, model, data, plan.reference)
    exported = export_model(spec, model, data, base, work / "export")
    archive = build_archive(spec, ArchiveConfig(work_dir=work / "archive"), plan.handler, exported, base.input_shape)
    body = work / "body.bin"
    payload, content_type = plan.codec.request(data.body(0), data.content_type,
                                               worker_view(data.body(0), data.content_type))
    body.write_bytes(payload)
    results_inprocess = bench_inprocess(spec, base, exported, archive, data, plan.codec, work, inprocess_batches)
    one_row = _repeat(data, requests, one_row=True)
    varied = _repeat(data, requests, one_row=False)
    codec = plan.codec
    results: dict = {"requests_per_measurement": requests, "rounds": rounds, "concurrency": {},
                     "inprocess": results_inprocess}
    has_ab = shutil.which("ab") is not None
    with serve_model(spec, ServeConfig(run_dir=work, mar_path=archive.mar_path,
                                       startup_timeout_s=spec.serving.startup_timeout_s)) as server:
        url, token = server.inference_url + plan.codec.envelope.path(spec.name), server.inference_token
        # Warm the JVM's JIT and the worker until throughput settles: windows of 2000 requests
        # until two in a row agree within 5% (after perf_analyzer's stability rule), at most 15.
        warm, window = [], _repeat(data, 2000, one_row=False)
        for _ in range(15):
            warm.append(_run_client(url, token, window, 16, codec)["rps"])
            if len(warm) >= 4 and abs(warm[-1] - warm[-2]) <= 0.05 * warm[-2]:
                break
        results["warmup_windows_rps"] = [round(w) for w in warm]
        for conc in (1, 16):
            client, ab = [], []
            for r in range(rounds):
                # Swap who goes first every round so that drift (JIT, other load) favours neither.
                order = ("client", "ab") if r % 2 == 0 else ("ab", "client")
                for tool in order:
                    time.sleep(SETTLE_S)
                    if tool == "client":
                        client.append(_run_client(url, token, one_row, conc, codec))
                    elif has_ab:
                        ab.append(_run_ab(url, token, body, conc, requests, work, content_type))
            client_varied = [_run_client(url, token, varied, conc, codec, server.log_dir)]
            inp = results["inprocess"]
            fractions = {f"{what}_of_{alone}": _median(source, "rps") / inp[f"{alone}_rows_per_s"]
                         for what, source in (("client", client), ("client_varied", client_varied))
                         for alone in ("model", "handled")}
            entry = {"client_one_row": client, "client_varied_rows": client_varied, "ab": ab,
                     "latency_split": client_varied[0].get("latency_split"), "fractions": fractions,
                     "client_cpu_us_per_request_median": _median(client, "cpu_us_per_request"),
                     "client_rps_median": _median(client, "rps"), "client_p50_median": _median(client, "p50"),
                     "client_varied_rps_median": _median(client_varied, "rps"),
                     "client_varied_p50_median": _median(client_varied, "p50")}
            if ab:
                entry |= {"ab_rps_median": _median(ab, "rps"), "ab_p50_median": _median(ab, "p50")}
                entry["throughput_ratio"] = entry["client_rps_median"] / entry["ab_rps_median"]
                entry["p50_ratio"] = entry["client_p50_median"] / entry["ab_p50_median"]
                entry["meets_target"] = entry["throughput_ratio"] >= 0.9 and entry["p50_ratio"] <= 1.1
            results["concurrency"][str(conc)] = entry
    results["ab_available"] = has_ab
    return results


def bench_stages(spec_path: Path, reports: Path) -> dict:
    """Wall time of each stage of one full run on the spec."""
    out = run_validation(RunOptions(spec_path=spec_path, reports_dir=reports, model_store=reports / "store",
                                    force=True, publish=False))
    return {"exit_code": out.exit_code, "stage_seconds": (out.report or {}).get("stage_seconds", {}),
            "run_dir": str(out.run_dir)}


def _print(res: dict) -> None:
    print(f"\nreplay client vs ab -k, same server, {res['clients']['requests_per_measurement']} requests x "
          f"{res['clients']['rounds']} rounds, medians (one body for both; varied rows for information)")
    print(f"{'conc':>4} {'client req/s':>13} {'ab req/s':>10} {'ratio':>6} {'client p50':>11} {'ab p50':>8} "
          f"{'ratio':>6} {'target':>7} {'varied req/s':>13} {'varied p50':>11}")
    cpu = ", ".join(f"c={c}: {e['client_cpu_us_per_request_median']:.0f} us"
                    for c, e in res["clients"]["concurrency"].items())
    print(f"client CPU per request in the timed loop: {cpu}")
    for conc, e in res["clients"]["concurrency"].items():
        ab_rps = f"{e['ab_rps_median']:.0f}" if "ab_rps_median" in e else "-"
        ab_p50 = f"{e['ab_p50_median']:.3f}" if "ab_p50_median" in e else "-"
        tr = f"{e['throughput_ratio']:.2f}" if "throughput_ratio" in e else "-"
        pr = f"{e['p50_ratio']:.2f}" if "p50_ratio" in e else "-"
        met = ("met" if e["meets_target"] else "MISSED") if "meets_target" in e else "-"
        print(f"{conc:>4} {e['client_rps_median']:>13.0f} {ab_rps:>10} {tr:>6} {e['client_p50_median']:>11.3f} "
              f"{ab_p50:>8} {pr:>6} {met:>7} {e['client_varied_rps_median']:>13.0f} "
              f"{e['client_varied_p50_median']:>11.3f}")
    if not res["clients"]["ab_available"]:
        print(AB_HINT)
    _print_inprocess(res["clients"])
    _print_split(res["clients"])
    st = res["stages"]
    print(f"\nstage wall time of one full run (exit {st['exit_code']}):")
    for k, v in st["stage_seconds"].items():
        print(f"  {k:10} {v:8.2f} s")
    print(f"  {'total':10} {sum(st['stage_seconds'].values()):8.2f} s")


def _print_inprocess(clients: dict) -> None:
    inp = clients["inprocess"]
    b = inp["batch_size"]
    print(f"\nin-process at the served batch size {b} (medians; the handler through TorchServe's Service.predict, "
          f"{inp['batches']} batches):")
    print(f"  {'exported model forward':34} {inp['model_ms']:9.3f} ms/batch {inp['model_rows_per_s']:10.0f} rows/s")
    print(f"  {'handled (handler + Service.predict)':34} {inp['handled_ms']:9.3f} ms/batch "
          f"{inp['handled_rows_per_s']:10.0f} rows/s")
    for phase, ms in inp["phases_ms"].items():
        share = ms / inp["handled_ms"] if inp["handled_ms"] > 0 else float("nan")
        print(f"    {phase:32} {ms:9.3f} ms       {share:8.0%} of handled")
    if inp.get("phases_note"):
        print(f"    ({inp['phases_note']})")
    print(f"\nserved throughput as a fraction of what model and handler alone do (one worker):")
    print(f"{'conc':>4} {'client req/s':>13} {'of handled':>11} {'of model':>9} {'varied req/s':>13} {'of handled':>11} "
          f"{'of model':>9}")
    for conc, e in clients["concurrency"].items():
        f = e["fractions"]
        print(f"{conc:>4} {e['client_rps_median']:>13.0f} {f['client_of_handled']:>11.3f} {f['client_of_model']:>9.4f} "
              f"{e['client_varied_rps_median']:>13.0f} {f['client_varied_of_handled']:>11.3f} "
              f"{f['client_varied_of_model']:>9.4f}")


SPLIT_SHOWN = (("components", "client_ms", "client latency"), ("components", "prediction_ms", "server PredictionTime"),
               ("components", "handler_ms", "handler (HandlerTime)"),
               ("components", "worker_other_ms", "worker around the handler"),
               ("components", "client_overhead_ms", "outside the worker"),
               ("frontend", "frontend_ms", "frontend total (no id)"), ("frontend", "queue_ms", "queue (no id)"))


def _print_split(clients: dict) -> None:
    print("\nwhere the served time goes (varied rows; ms p50 / p90 / p99 / max; 'no id': ts_metrics.log, not joined):")
    for conc, e in clients["concurrency"].items():
        split = e.get("latency_split")
        if not split:
            continue
        rows = ", ".join(f"{n} {k}" for k, n in split["rows"].items() if n)
        print(f"  concurrency {conc}: {split['replayed']} rows ({rows})")
        for block, key, label in SPLIT_SHOWN:
            s = (split.get(block) or {}).get(key)
            figures = " / ".join(f"{s[q]:.3f}" for q in ("p50", "p90", "p99", "max")) if s else "-"
            print(f"    {label:28} {figures}")
        for note in split["notes"][1:]:  # the first says the queue has no request id: said in the heading
            print(f"    note: {note}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--spec", type=Path, action="append",
                    help=f"a spec to bench (repeat for several; default: {DEFAULT_SPEC.parent.name} and "
                         f"{IMAGES_SPEC.parent.name})")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--inprocess-batches", type=int, default=2000,
                    help="batches timed in-process through the handler (the model: four times as many calls)")
    ap.add_argument("--out", type=Path, default=Path.cwd() / DEFAULT_REPORTS_DIR / "bench")
    ap.add_argument("--no-stages", action="store_true", help="skip the full run that times each stage")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    if shutil.which("ab") is None:
        print(AB_HINT, file=sys.stderr)
    runs = []
    for spec in args.spec or [DEFAULT_SPEC, IMAGES_SPEC]:
        work = Path(tempfile.mkdtemp(prefix="bench-", dir=args.out))
        try:
            clients = bench_clients(spec, work, args.requests, args.rounds, args.inprocess_batches)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        stages = {"exit_code": None, "stage_seconds": {}} if args.no_stages else bench_stages(spec, args.out / "runs")
        res = {"spec": str(spec), "clients": clients, "stages": stages}
        print(f"\n=== {spec}")
        _print(res)
        runs.append(res)
    out = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": {"cores": os.cpu_count(), "platform": platform.platform()}, "environment": environment(),
           "runs": runs}
    (args.out / "bench.json").write_text(json.dumps(out, indent=2))
    print(f"\nwritten: {args.out / 'bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
