"""The whole tune: plan, prepare, package, the handler's in-process limit per batch size, then each
point served, measured and its answers checked, and the head-to-head that gives the closing figures.

Every point replays the labeled rows (repeated to a window's length) and every answer of
every window is compared with the baseline (``compare.output_diff``, the gate's tolerance):
a point whose answers differ is marked and never recommended. The batch sizes reported are
those TorchServe formed (request ids per PredictionTime line of model_metrics.log).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.errors import ConfigError
from pipeline.evaluate.compare import StageOutputs, output_diff
from pipeline.inputs.base import Rows
from pipeline.names import Stage, StageName
from pipeline.run.phases import (HandlerLimit, Prepared, Setting, handler_limit, package, prepare, replay_config,
                                 replay_rows)
from pipeline.run.plan import plan_run
from pipeline.run.runner import _make_run_dir
from pipeline.spec import Spec, load_spec
from pipeline.stages.outcomes import stage_outputs
from pipeline.torchserve.logs import parse_metric
from pipeline.tune.apply import PointServer, cleanup
from pipeline.tune.search import (Budget, Measurement, Ranges, choose, grid_search, guided_search, meets,
                                  shortlist)
from pipeline.tune.versus import HeadToHead, head_to_head
from pipeline.tune.windows import Window, formed_batches, measure_windows, summary

log = logging.getLogger(__name__)

HEAD_TO_HEAD_WINDOWS = 3  # per contender per round: the warm-up window and two counted (stable or not, said)
RATE_FRACTIONS = (0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5)  # of the recommendation's closed-loop throughput


@dataclass(frozen=True)
class TuneOptions:
    spec_path: Path
    reports_dir: Path
    budget_s: float | None = None
    grid: bool = False
    rate: bool = False
    apply: str | None = None  # restart | register | auto; None: the spec's tune.apply
    ranges: dict = field(default_factory=dict)  # CLI overrides of the spec's ranges
    tune: dict = field(default_factory=dict)  # CLI overrides of other tune: keys (window_requests, ...)
    progress: Callable[[str], None] | None = None  # one line per measured point (the CLI prints it)


@dataclass
class TuneResult:
    spec: Spec
    run_dir: Path
    p99_ms: float | None
    p99_from: str
    ranges: Ranges
    apply_mode: str
    apply_figures: dict
    guided: list[Measurement]
    guided_s: float
    out_of_budget: bool
    recommended: Measurement | None
    how: str
    confirmed: Measurement | None = None  # the recommendation over the head-to-head's rounds: every row, every round
    grid: list[Measurement] | None = None
    grid_s: float | None = None
    grid_best: Measurement | None = None
    versus: HeadToHead | None = None
    guided_settle_s: float = 0.0  # head-to-head time of the default and the guided shortlist
    grid_settle_s: float | None = None  # head-to-head time of the default and the grid's shortlist
    limit: HandlerLimit | None = None
    rate: dict | None = None
    notes: list[str] = field(default_factory=list)


def ranges_of(spec: Spec, overrides: dict) -> Ranges:
    t = spec.tune
    r = Ranges(workers=t.workers, batch_sizes=t.batch_sizes, delays_ms=t.max_batch_delays_ms,
               concurrency=t.concurrency, threads=t.threads or (None,))
    return replace(r, **{k: tuple(v) for k, v in overrides.items() if v})


def objective(spec: Spec) -> tuple[float | None, str]:
    if spec.tune.p99_ms is not None:
        return spec.tune.p99_ms, "tune.p99_ms"
    if spec.gate.max_served_p99_ms is not None:
        return spec.gate.max_served_p99_ms, "gate.max_served_p99_ms"
    return None, "none set (tune.p99_ms, gate.max_served_p99_ms)"


def window_rows(rows: Rows, requests: int) -> Rows:
    """The rows repeated to at least ``requests`` (whole passes: every row answered equally often)."""
    passes = max(1, math.ceil(requests / len(rows)))
    idx = np.tile(np.arange(len(rows)), passes)
    return rows.take(idx, ids=[f"{rows.ids[i]}#{k // len(rows)}" for k, i in enumerate(idx)])


def formed_since(metrics_log: Path | None, offset: int) -> dict[int, int]:
    """Batches TorchServe formed since ``offset`` of model_metrics.log: requests per batch -> batches."""
    out: dict[int, int] = {}
    if metrics_log is None or not metrics_log.is_file():
        return out
    with metrics_log.open("rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    for line in text.splitlines():
        parsed = parse_metric(line) if "requestID:" in line else None
        if parsed is not None and parsed[0] == "PredictionTime" and parsed[2]:
            n = len(parsed[2])  # one PredictionTime line per batch, naming all its request ids
            out[n] = out.get(n, 0) + 1
    return out


def _size(path: Path | None) -> int:
    try:
        return path.stat().st_size if path is not None else 0
    except OSError:
        return 0


@dataclass
class AnswerCheck:
    """Every answer of a point against the baseline: rows failed, rows with another class, the largest output diff."""

    failed: int = 0
    disagreeing: int = 0
    max_diff: float | None = None
    quantity: str | None = None
    answers: int = 0

    def add(self, base: StageOutputs, cand: StageOutputs) -> None:
        self.answers += len(cand.predictions)
        self.failed += int((cand.predictions < 0).sum())
        self.disagreeing += int(((cand.predictions != base.predictions) & (cand.predictions >= 0)).sum())
        diff = output_diff(base, cand)[0]
        if diff.max_abs is not None:
            self.max_diff = max(self.max_diff or 0.0, diff.max_abs)
            self.quantity = diff.quantity

    def verdict(self, tolerance: float) -> tuple[str, str]:
        moved = self.max_diff is not None and self.max_diff > tolerance
        diff = (f", max {self.quantity} difference {self.max_diff:.3g}" if self.max_diff is not None
                else ", outputs not compared (the answers carry no numbers)")
        text = f"{self.answers} answers: {self.disagreeing} with another class, {self.failed} failed{diff}"
        if self.failed:
            return "failed", text
        return ("differ" if self.disagreeing or moved else "same"), text


class Tuner:
    """Measures points of one prepared model and archive on a PointServer."""

    def __init__(self, spec: Spec, prepared: Prepared, codec, server: PointServer):
        self.spec, self.prepared, self.codec, self.server = spec, prepared, codec, server
        self.base = StageOutputs.from_scores(Stage.BASELINE, prepared.baseline.scores)
        self.rows = prepared.rows
        self.window = window_rows(self.rows, spec.tune.window_requests)
        self.apply_s: list[tuple[str, float]] = []
        self.keep_going = lambda: True
        self.say: Callable[[str], None] = lambda line: None

    def measure(self, setting: Setting, phase: str, *, rate: float | None = None,
                max_windows: int | None = None, fresh: bool = True) -> Measurement:
        """Serve ``setting`` (afresh, or as it is when it already serves it and not ``fresh``), replay windows of
        every row until two agree (or ``max_windows``), check every answer."""
        t0 = time.monotonic()
        server, apply_s = self.server.apply(setting, fresh)
        if self.server.last != "kept":
            self.apply_s.append((self.server.last, apply_s))
        spec = setting.apply(self.spec)
        metrics_log = server.log_dir / "model_metrics.log" if server.log_dir else None
        cfg = replay_config(spec, server.inference_url, server.inference_token, self.codec, metrics_log,
                            concurrency=setting.concurrency, rate=rate)
        check = AnswerCheck()
        name = StageName(Stage.SERVED, setting=setting.key)
        n, c = len(self.rows), spec.model.num_classes
        t = spec.tune

        def run_window(i: int) -> Window:
            offset = _size(metrics_log)
            res = replay_rows(replace(cfg, codec=self.codec, warmup_requests=t.warmup_requests if i == 0 else 0),
                              self.window)
            if res.codec is not None:
                self.codec = res.codec  # answers.format auto: settled by the first answer
            for k in range(len(self.window) // n):
                chunk = tuple(replace(o, index=o.index - k * n) for o in res.rows[k * n:(k + 1) * n])
                check.add(self.base, stage_outputs(name, chunk, c))
            lat = np.array([r.latency_ms for r in res.rows if r.is_ok and r.latency_ms is not None])
            p = (np.percentile(lat, 50), np.percentile(lat, 99)) if lat.size else (np.nan, np.nan)
            return Window(res.throughput_rps, float(p[0]), float(p[1]), len(res.rows), res.failed,
                          formed_since(metrics_log, offset))

        windows, is_stable = measure_windows(run_window, t.stability_tolerance, max_windows or t.max_windows,
                                             self.keep_going)
        thr, p50, p99 = summary(windows)
        answers, detail = check.verdict(self.spec.gate.max_output_diff)
        m = Measurement(setting, thr, p50, p99, is_stable, answers, formed_batches(windows), detail,
                        time.monotonic() - t0, apply_s, phase, len(windows),
                        tuple((round(w.throughput_rps, 1), round(w.p99_ms, 2)) for w in windows))
        line = (f"{phase:<17} {setting.key:<18} {thr:8.0f} req/s  p99 {p99:7.1f} ms  "
                f"{'stable' if is_stable else 'UNSTABLE'} ({len(windows)} windows)  formed {m.formed}  "
                f"answers {answers}"
                + ("" if answers == "same" else f" ({detail})"))
        log.info("tune %s", line)
        self.say(line)
        return m


def _apply_figures(tuner: Tuner, spec: Spec, default: Setting, mode: str) -> tuple[str, dict]:
    """With ``auto``: one restart and one re-registration of the default, timed; the faster mode is kept."""
    figures: dict = {}
    if mode != "auto":
        return mode, figures
    tuner.server.mode = "register"
    _, restart_s = tuner.server.apply(default)  # no server yet: this is a start
    figures["restart_s"] = restart_s
    figures["register_s"] = tuner.server.reregister(default)
    chosen = "register" if figures["register_s"] < figures["restart_s"] else "restart"
    tuner.server.mode = chosen
    if chosen == "restart":
        tuner.server.stop()
    return chosen, figures


def _rate_search(tuner: Tuner, rec: Measurement, p99_ms: float | None) -> dict:
    """Open loop at the recommendation: the highest rate (of RATE_FRACTIONS x its throughput) holding the objective."""
    limit = p99_ms if p99_ms is not None else 2 * rec.p99_ms
    tried, best = [], None
    for f in RATE_FRACTIONS:
        r = round(f * rec.throughput_rps, 1)
        m = tuner.measure(rec.setting, "rate", rate=r, fresh=False)  # one setting: applied once, for the first rate
        holds = m.answers == "same" and m.p99_ms <= limit
        tried.append({"rate": r, "throughput_rps": m.throughput_rps, "p99_ms": m.p99_ms, "holds": holds,
                      "answers": m.answers})
        if not holds:
            break
        best = r
    return {"objective_p99_ms": limit, "objective_from": "tune.p99_ms" if p99_ms is not None else
            "2 x the recommendation's closed-loop p99 (no p99 objective)", "highest_rate": best, "tried": tried}


def _refuse_other_tasks(spec: Spec) -> None:
    if spec.model.task != "classification":
        raise ConfigError(
            f"tune: model.task is {spec.model.task!r}; tune checks every answer at every point by class and output "
            "difference (classification's sameness) and does not yet compare a task's own answers (boxes, masks, "
            "values, label sets), so it would call changed answers the same. Tune a classification spec, or validate "
            f"each setting with `package-validate run` (it compares {spec.model.task} answers by the task's own "
            "rules).")


def _head_to_head(tuner: Tuner, res: TuneResult, default: Setting, rounds: int) -> None:
    """The default and each search's shortlist in interleaved rounds; the medians settle the recommendation (and
    the grid's best) among each search's shortlist. A shortlisted point whose answers changed is never chosen."""
    p99 = res.p99_ms
    guided = shortlist(res.guided, res.recommended, p99)
    grid = shortlist(res.grid, res.grid_best, p99) if res.grid is not None else []
    named = [("default", default)] + [(f"guided #{i + 1}", m.setting) for i, m in enumerate(guided)]
    named += [(f"grid #{i + 1}", m.setting) for i, m in enumerate(grid)]
    h = head_to_head(named, lambda s, phase: tuner.measure(s, phase, max_windows=HEAD_TO_HEAD_WINDOWS), rounds)
    base = _default_of(res.guided, default)
    extra: dict[Setting, tuple[str, ...]] = {}
    for c in h.contenders:
        if not c.answers == "same":
            res.notes.append(f"{' = '.join(c.names)} {c.setting.key} changed answers when replayed in the "
                             f"head-to-head: {c.detail}; never recommended")
    if guided:
        d = h.settled([base])[0] if base is not None else None
        best, how = choose(h.settled(guided) + ([d] if d is not None else []), p99, d)
        n = len(guided)
        if best is None:
            res.recommended, res.how = None, "withdrawn: " + how + " when replayed in the head-to-head"
        else:
            picked = next((m for m in guided + [base] if m is not None and m.setting == best.setting))
            changed = res.recommended is not None and picked.setting != res.recommended.setting
            res.recommended = picked
            res.how = how + (f"; settled by the head-to-head medians among the search's {n} best point(s)"
                             + (f" (the search's own pick was {guided[0].setting.key})" if changed else ""))
            extra[best.setting] = ("recommended",)
    if grid:
        gd = next((m for m in res.grid if m.setting == default), None)
        d = h.settled([gd])[0] if gd is not None and h.at(gd.setting) is not None else None
        best, _ = choose(h.settled(grid) + ([d] if d is not None else []), p99, d)
        res.grid_best = next((m for m in grid + [gd] if m is not None and best is not None
                              and m.setting == best.setting), None)
        if best is not None:
            extra[best.setting] = extra.get(best.setting, ()) + ("grid best",)
    res.versus = h.named(extra)
    res.guided_settle_s = h.seconds_of(("default", "guided"))
    res.grid_settle_s = h.seconds_of(("default", "grid")) if grid else None
    rec = res.versus.of("recommended")
    if rec is not None:
        first = rec.rounds[0]
        res.confirmed = replace(first, throughput_rps=rec.throughput_rps, p99_ms=rec.p99_ms, answers=rec.answers,
                                detail=f"{len(rec.rounds)} rounds; " + rec.detail, phase="head-to-head",
                                seconds=sum(m.seconds for m in rec.rounds), windows=sum(m.windows for m in rec.rounds))


def _default_of(measured: list[Measurement], default: Setting) -> Measurement | None:
    return next((m for m in measured if m.setting == default), None)


def run_tune(opts: TuneOptions) -> TuneResult:
    """Search the settings of one spec and write the tune report into a run folder.

    Raises:
        ConfigError: a tune option out of range, or a model.task other than classification.
    """
    spec = load_spec(opts.spec_path)
    _refuse_other_tasks(spec)
    changes = {**opts.tune, **({"budget_s": opts.budget_s} if opts.budget_s is not None else {})}
    if changes:
        try:
            tune = spec.tune.model_validate({**spec.tune.model_dump(), **changes})
        except ValueError as e:  # pydantic's ValidationError: a command-line value out of range
            raise ConfigError(f"tune options {changes}: {e}") from e
        spec = spec.model_copy(update={"tune": tune})
    mode = opts.apply or spec.tune.apply
    if mode not in ("auto", "restart", "register"):
        raise ConfigError(f"--apply {mode!r}: choose restart, register or auto")
    say = opts.progress or (lambda line: None)
    plan = plan_run(spec)
    run_dir = _make_run_dir(opts.reports_dir, f"{spec.name}-tune")
    say(f"run folder: {run_dir}")
    ranges = ranges_of(spec, opts.ranges)
    p99_ms, p99_from = objective(spec)
    prepared = prepare(spec, plan, run_dir)
    archive = package(spec, plan, prepared, run_dir)
    default = Setting.of_spec(spec)
    limit = handler_limit(spec, archive, plan.codec, prepared.rows, {*ranges.batch_sizes, default.batch_size},
                          run_dir / "tune" / "inprocess")
    say("in-process limit (the handler through TorchServe's Service.predict, no server): "
        + ", ".join(f"batch {b}: {r:.0f} rows/s" for b, r in limit.rows_per_s.items()))
    with PointServer(spec, archive, run_dir / "tune", "restart" if mode == "auto" else mode,
                     plan.codec.envelope.service_envelope) as server:
        tuner = Tuner(spec, prepared, plan.codec, server)
        tuner.say = say
        mode, figures = _apply_figures(tuner, spec, default, mode)
        budget = Budget(spec.tune.budget_s)
        tuner.keep_going = budget.fits
        guided, short = guided_search(default, ranges, tuner.measure, budget, p99_ms)
        guided_s = sum(m.seconds for m in guided)
        by_default = next((m for m in guided if m.setting == default), None)
        rec, how = choose(guided, p99_ms, by_default)
        res = TuneResult(spec, run_dir, p99_ms, p99_from, ranges, mode, figures, guided, guided_s, short, rec, how)
        res.limit = limit
        tuner.keep_going = lambda: True
        if opts.grid:
            server.stop()
            t0 = time.monotonic()
            res.grid = grid_search(ranges, tuner.measure, default)
            res.grid_s = time.monotonic() - t0
            gd = next((m for m in res.grid if m.setting == default), None)
            res.grid_best, _ = choose(res.grid, p99_ms, gd)
        # every row again at the recommendation, beside the default and the grid's best, each applied afresh
        _head_to_head(tuner, res, default, spec.tune.head_to_head_rounds)
        if opts.rate and res.recommended is not None:
            at = res.versus.of("recommended") if res.versus is not None else None
            res.rate = _rate_search(tuner, replace(res.recommended, throughput_rps=at.throughput_rps)
                                    if at is not None else res.recommended, p99_ms)
        res.apply_figures = {**figures, **_mean_apply(tuner.apply_s)}
    cleanup(run_dir / "tune")
    from pipeline.tune.report import write_tune_report
    write_tune_report(res)
    return res


def _mean_apply(samples: list[tuple[str, float]]) -> dict:
    out = {}
    for mode in ("restart", "register"):
        xs = [s for m, s in samples if m == mode]
        if xs:
            out[f"{mode}_mean_s"] = round(float(np.mean(xs)), 2)
            out[f"{mode}_count"] = len(xs)
    return out


__all__ = ["TuneOptions", "TuneResult", "run_tune", "meets"]
