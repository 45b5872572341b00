"""Command line: the only module that parses arguments, prints and exits.

Exit codes: 0 gate passed, 1 gate failed, 2 bad spec or input (found before any server
starts), 3 server, runtime or internal failure, 130 interrupted (SIGINT), 143 terminated (SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

from pipeline.compat import install_import_hook
from pipeline.errors import Interrupted, PipelineError

# Repeated from pipeline.run.options, which imports the spec schema (pydantic): `lint` must start fast.
DEFAULT_REPORTS_DIR = Path("reports")
DEFAULT_MODEL_STORE = Path("model_store")
TOKEN_ENV = "PACKAGE_VALIDATE_TOKEN"


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="package-validate",
        description="Prove that a PyTorch model behaves and performs the same after it is packaged for TorchServe.",
        epilog="Exit codes: 0 pass, 1 gate failed, 2 bad spec or input, 3 server/runtime/internal failure, "
               "130 interrupted, 143 terminated.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log every stage to stderr")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="baseline, export, archive, handled, serve, replay, compare and gate one spec")
    run.add_argument("spec", type=Path, help="the YAML spec, e.g. examples/digits/spec.yaml")
    run.add_argument("--force", action="store_true", help="replace model_store/<name>.mar when the gate passes")
    run.add_argument("--no-publish", action="store_true", help="never copy the .mar to the model store")
    run.add_argument("--reports-dir", type=Path, default=DEFAULT_REPORTS_DIR,
                     help="where run folders and history.sqlite go (default: ./reports)")
    run.add_argument("--model-store", type=Path, default=DEFAULT_MODEL_STORE,
                     help="where a passing .mar is published (default: ./model_store)")
    run.add_argument("--export-mode", choices=["script", "trace", "export", "eager"], help="override export.mode")
    run.add_argument("--mar", type=Path, help="validate this prebuilt .mar instead of building one")
    run.add_argument("--expect-sha256", help="refuse the .mar unless its sha256 is this")
    run.add_argument("--endpoint", help="replay against an already running TorchServe or KServe (inference URL, "
                                        f"http or https); its token is read from ${TOKEN_ENV}")
    run.add_argument("--rate", type=float, help="open-loop replay at this many requests/s")
    run.add_argument("--concurrency", type=int, help="override replay.concurrency")
    run.add_argument("--timeout", type=float, help="deadline of the whole run in seconds (overrides timeout_s)")
    run.add_argument("--ts-config", type=Path,
                     help="serve under your production config.properties (serving.ts_config): the run replaces only "
                          "the listeners, model store, models loaded, token authorization, model API, per-model "
                          "installs and logs, lists each replacement, and lints the file")
    run.add_argument("--until", choices=["export", "handled", "served"],
                     help="stop after this stage: 'handled' checks the handler in-process in seconds, without "
                          "TorchServe; the gate covers the stages that ran, and nothing is published")
    run.add_argument("--wait", action="store_true",
                     help="when another run holds this model's store entry, wait for it instead of failing")
    run.add_argument("--baseline-report", type=Path,
                     help="an earlier run's report.json: its served metrics become a second baseline")
    run.add_argument("--against-last-pass", action="store_true",
                     help="use the last passing run in the history as a second baseline")
    out = run.add_mutually_exclusive_group()
    out.add_argument("--quiet", action="store_true", help="print only the verdict line")
    out.add_argument("--json", action="store_true", help="print the report's verdict block as JSON on stdout")
    lint = sub.add_parser("lint", help="lint a TorchServe config.properties (and a .mar) for known exposures and "
                                       "settings the server ignores or overrides; exit 1 on a failing severity")
    lint.add_argument("config", type=Path, help="the config.properties to check")
    lint.add_argument("--mar", type=Path, help="also check this archive's model-config.yaml and requirements")
    lint.add_argument("--fail-on", default="high",
                      help="comma-separated severities that fail (high, medium, low, info; default: high)")
    hist = sub.add_parser("history", help="runs recorded under the reports folder and the trend of each figure")
    hist.add_argument("--reports-dir", type=Path, default=DEFAULT_REPORTS_DIR,
                      help="the folder whose history.sqlite to read")
    hist.add_argument("--model", help="only this model")
    hist.add_argument("--limit", type=_positive_int, default=20, help="at most this many runs, newest first")
    tune = sub.add_parser("tune", help="find the fastest serving setting (workers, batch size, delay, concurrency, "
                                       "threads) whose answers all equal the baseline's")
    tune.add_argument("spec", type=Path, help="the YAML spec (its tune: section holds the ranges and the objective)")
    tune.add_argument("--reports-dir", type=Path, default=DEFAULT_REPORTS_DIR, help="where the run folder goes")
    tune.add_argument("--budget-s", type=float, help="measuring time of the guided search (overrides tune.budget_s)")
    tune.add_argument("--grid", action="store_true", help="also measure the full grid over the same ranges")
    tune.add_argument("--rate", action="store_true",
                      help="open loop at the recommendation: the highest rate that holds the p99 objective")
    tune.add_argument("--apply", choices=["auto", "restart", "register"],
                      help="how each point is served (overrides tune.apply)")
    tune.add_argument("--window-requests", type=_positive_int, help="requests per window (tune.window_requests)")
    tune.add_argument("--max-windows", type=_positive_int, help="windows per point at most (tune.max_windows)")
    tune.add_argument("--tolerance", type=float, help="stability tolerance (tune.stability_tolerance)")
    tune.add_argument("--rounds", type=_positive_int,
                      help="head-to-head rounds of default, recommendation and grid best (tune.head_to_head_rounds)")
    for flag, dest in (("--workers", "workers"), ("--batch-sizes", "batch_sizes"), ("--delays-ms", "delays_ms"),
                       ("--concurrency", "concurrency"), ("--threads", "threads")):
        tune.add_argument(flag, dest=dest, type=_int_list, help=f"comma-separated values (overrides the spec's)")
    init = sub.add_parser("init", help="write a commented spec for your model, inferred from its factory, weights "
                                       "and data (and checked by running the model)")
    init.add_argument("--factory", required=True, help="file.py:function or package.module:function")
    init.add_argument("--weights", required=True, type=Path, help="the model's torch.save'd state_dict")
    init.add_argument("--data", required=True, type=Path,
                      help="labeled rows: a CSV/Parquet table, or a folder of class sub-folders of images")
    init.add_argument("--handler", help="a handler name (tensor_classifier, image_classifier, ...) or a file.py")
    init.add_argument("--out", type=Path, default=Path("spec.yaml"), help="the spec to write (default: ./spec.yaml)")
    init.add_argument("--name", help="the TorchServe model name (default: from the factory's file or folder)")
    init.add_argument("--preprocess", help="file.py:function: your model's preprocessing (needed for text)")
    init.add_argument("--label-column", help="the label column, when init cannot tell it by its name")
    init.add_argument("--id-column", help="the id column, when init cannot tell it by its name")
    init.add_argument("--input-shape", help="one row's shape, e.g. 1,8,8: try only this one")
    init.add_argument("--kind", choices=("tensor", "image", "text", "json"),
                      help="the input kind, overriding what the data looks like (json: each row sent as a JSON object)")
    init.add_argument("--collate", help="file.py:function: batches the rows --preprocess gives (model.collate), "
                                        "for inputs that do not stack (token ids of different lengths)")
    init.add_argument("--force", action="store_true", help="overwrite the spec (and label map) if they exist")
    return p


def _init(args) -> int:
    from pipeline.scaffold import InitConfig, parse_shape, write_spec

    try:
        cfg = InitConfig(factory=args.factory, weights=args.weights, data=args.data, out=args.out,
                         base_dir=Path.cwd(), handler=args.handler, name=args.name, preprocess=args.preprocess,
                         label_column=args.label_column, id_column=args.id_column,
                         input_shape=parse_shape(args.input_shape) if args.input_shape else None, kind=args.kind,
                         force=args.force, collate=args.collate)
        result = write_spec(cfg)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    for line in result.decisions:
        print(f"  {line}")
    for line in result.todos:
        print(f"  TODO: {line}")
    print(f"wrote {', '.join(str(p) for p in result.written)}")
    print(f"next: package-validate run {result.spec_path}")
    return 0


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return n


def _on_sigterm(signum, frame):
    raise Interrupted(signum)


def _absolute(p: Path | None) -> Path | None:
    """A path given on the command line, made absolute against the working directory once, here."""
    return None if p is None else (p.expanduser() if p.expanduser().is_absolute() else Path.cwd() / p.expanduser())


def _lint(args) -> int:
    from pipeline.lint import SEVERITIES, check_severities, failing, lint_files, render_finding

    try:
        fail_on = check_severities([x.strip() for x in args.fail_on.split(",") if x.strip()])
        found = lint_files(_absolute(args.config), _absolute(args.mar))
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        for d in getattr(e, "details", None) or []:
            print(f"  {d}", file=sys.stderr)
        return 2
    for f in found:
        print("\n".join(render_finding(f)))
    bad = failing(found, fail_on)
    counts = ", ".join(f"{sum(f.severity == s for f in found)} {s}" for s in SEVERITIES)
    print(f"{args.config}{' + ' + str(args.mar) if args.mar else ''}: {len(found)} finding(s) ({counts}); "
          + (f"FAIL: {len(bad)} of severity {'/'.join(fail_on)}" if bad else f"OK (fails on {'/'.join(fail_on) or 'nothing'})"))
    return 1 if bad else 0


def _run(args) -> int:
    from pipeline.console import Console
    from pipeline.report.console import render_console, verdict_json
    from pipeline.run.options import RunOptions
    from pipeline.run.runner import run_validation

    console = Console.for_stream(sys.stderr, quiet=args.quiet or args.json)
    opts = RunOptions(
        spec_path=_absolute(args.spec), reports_dir=_absolute(args.reports_dir),
        model_store=_absolute(args.model_store), force=args.force,
        publish=not args.no_publish and args.endpoint is None and args.until in (None, "served"), until=args.until,
        prebuilt_mar=_absolute(args.mar), expected_sha256=args.expect_sha256, endpoint=args.endpoint,
        endpoint_token=os.environ.get(TOKEN_ENV), export_mode=args.export_mode, rate=args.rate,
        concurrency=args.concurrency, timeout_s=args.timeout, baseline_report=_absolute(args.baseline_report),
        against_last_pass=args.against_last_pass, wait_for_lock=args.wait, progress=console.progress,
        ts_config=_absolute(args.ts_config),
    )
    try:
        outcome = run_validation(opts, events=console.stage_event)
    except (KeyboardInterrupt, Interrupted) as e:  # arrived before the run folder existed, or after its report
        print("interrupted", file=sys.stderr)
        return 143 if isinstance(e, Interrupted) and e.signum == signal.SIGTERM else 130
    console.finish()
    if outcome.report is not None:
        if args.json:
            print(json.dumps(verdict_json(outcome.report), indent=2))
        elif args.quiet:
            print(render_console(outcome.report).splitlines()[0])
        else:
            print(render_console(outcome.report))
    elif outcome.error is not None:
        print(f"error: {outcome.error}", file=sys.stderr)
        if args.json:
            print(json.dumps({"verdict": "ERROR", "exit_code": outcome.exit_code, "error": str(outcome.error)}))
    return outcome.exit_code


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "lint":  # standard library and PyYAML only: answers in well under a second
        return _lint(args)
    # Before any command imports a user module: torchvision beside the CPU torch (pipeline/compat.py).
    install_import_hook()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    signal.signal(signal.SIGTERM, _on_sigterm)
    if args.command == "run":
        return _run(args)
    if args.command == "history":
        from pipeline.history.store import HISTORY_FILE

        return _print_history(_absolute(args.reports_dir) / HISTORY_FILE, args.model, args.limit)
    if args.command == "init":
        return _init(args)
    if args.command == "tune":
        return _tune(args)
    return 2


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        values = ()
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, e.g. 1,2,4, got {text!r}")
    return values


def _tune(args) -> int:
    from pipeline.tune.report import objective_text, summary, summary_lines
    from pipeline.tune.session import TuneOptions, run_tune

    ranges = {k: getattr(args, k) for k in ("workers", "batch_sizes", "delays_ms", "concurrency", "threads")
              if getattr(args, k)}
    try:
        res = run_tune(TuneOptions(spec_path=_absolute(args.spec), reports_dir=_absolute(args.reports_dir),
                                   budget_s=args.budget_s, grid=args.grid, rate=args.rate, apply=args.apply,
                                   ranges=ranges, tune={k: v for k, v in (
                                       ("window_requests", args.window_requests), ("max_windows", args.max_windows),
                                       ("stability_tolerance", args.tolerance),
                                       ("head_to_head_rounds", args.rounds)) if v is not None},
                                   progress=lambda line: print(f"  {line}", file=sys.stderr, flush=True)))
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:  # Interrupted too: the servers it started are stopped by their context managers
        print("interrupted: tune stopped before its report, nothing recommended; the server it started is stopped "
              "(the measurements so far are in the run folder named above, under tune/)", file=sys.stderr)
        return 143 if isinstance(e, Interrupted) and e.signum == signal.SIGTERM else 130
    s = summary(res)
    rec = s["recommended"]
    print(f"recommended: {rec['setting']} ({rec['throughput_rps']} req/s, p99 {rec['p99_ms']} ms, {rec['from']})"
          if rec else f"no recommendation: {res.how}")
    print(f"  chosen as {res.how}; {objective_text(res)}")
    for line in summary_lines(res, s):
        print(f"  {line}")
    print(f"report: {res.run_dir / 'report.html'}")
    return 0 if rec else 1


def _num(v, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _print_history(db: Path, model: str | None, limit: int) -> int:
    from pipeline.history.store import load_history, summarize_trend

    try:
        runs = load_history(db, model, limit)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    if not runs:
        print(f"no runs recorded in {db}" + (f" for model {model}" if model else ""))
        return 0
    print(f"{'started':26} {'model':20} {'status':12} {'served acc':>10} {'served f1':>10} "
          f"{'p50 ms':>8} {'p99 ms':>8}  run folder")
    for r in runs:
        f = r.figures
        print(f"{r.started_at:26} {str(r.model):20} {r.status:12} {_num(f.get('served.accuracy')):>10} "
              f"{_num(f.get('served.f1_macro')):>10} {_num(f.get('served.latency_p50_ms'), 2):>8} "
              f"{_num(f.get('served.latency_p99_ms'), 2):>8}  {r.run_dir}")
    models = {r.model for r in runs}
    print(f"\ntrend over these {len(runs)} runs (oldest -> newest):")
    if len(models) > 1:
        print("  (several models mixed: pass --model NAME for one model's trend)")
    for key, t in summarize_trend(runs).items():
        print(f"  {key:32} {_num(t['first'])} -> {_num(t['last'])}  (min {_num(t['min'])}, max {_num(t['max'])}, "
              f"change {t['change']:+.4f}, {t['runs']} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
