"""The guided search, the grid, and the choice among measured points (pure: a point's measurement is given).

Guided (after Model Analyzer's hill climbing, in the order the issue's measurements suggest):
1. the spec's own setting (the default: never recommended below it);
2. concurrency grown at the default's batch until throughput gains less than ``KNEE_GAIN``
   or p99 leaves the objective: the knee;
3. each batch size at the knee's concurrency (at least workers x batch: a batch forms only from
   requests in flight together, and each worker takes a batch of its own) and the middle delay;
   then the other delays and the next concurrency for the best batch;
4. workers and threads around the best point, concurrency again raised to fill every worker's batch;
5. hill climbing: from the best point, one step of batch, workers and concurrency (the knobs whose
   best values depend on each other), moving to the first that beats it, until none does.
A point whose answers differ from the baseline is measured and shown, never chosen, and a
larger batch is not tried past one that changed answers at the same delay. Each step stops
when the next measurement would overrun the time budget (estimated from those so far).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field, replace
from typing import Callable

from pipeline.run.phases import Setting

KNEE_GAIN = 0.05  # a concurrency step that adds less throughput than this is past the knee
KNEE_FRACTION = 0.9  # without a p99 objective: the lowest p99 reaching this fraction of the best throughput
SHORTLIST = 3  # per search: its choice and its next best points, settled by the head-to-head


@dataclass(frozen=True)
class Ranges:
    """The values each knob may take (the spec's tune section, or the CLI)."""

    workers: tuple[int, ...] = (1, 2)
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8)
    delays_ms: tuple[int, ...] = (5, 20)
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16)
    threads: tuple[int | None, ...] = (None,)

    def grid(self) -> list[Setting]:
        return [Setting(w, b, d, c, t) for w, b, d, c, t in itertools.product(
            self.workers, self.batch_sizes, self.delays_ms, self.concurrency, self.threads)]


@dataclass(frozen=True)
class Measurement:
    """One point as measured: figures of its stable windows, the batches that formed, its answers.

    answers: "same" (every answer matches the baseline: predictions, outputs within the gate's
    tolerance), "differ" (some do: ``detail`` says how many and how far), or "failed" (rows got
    no answer).
    """

    setting: Setting
    throughput_rps: float
    p50_ms: float
    p99_ms: float
    stable: bool
    answers: str
    formed: dict[int, int] = field(default_factory=dict)
    detail: str = ""
    seconds: float = 0.0  # measuring time of this point, applying the setting included
    apply_s: float = 0.0
    phase: str = ""  # the search step that measured it
    windows: int = 0
    window_figures: tuple[tuple[float, float], ...] = ()  # (throughput, p99) of every window, warm-up first

    @property
    def keeps_answers(self) -> bool:
        return self.answers == "same"

    @property
    def largest_batch(self) -> int:
        return max(self.formed, default=1)


def meets(m: Measurement, p99_ms: float | None) -> bool:
    return m.keeps_answers and (p99_ms is None or m.p99_ms <= p99_ms)


def choose(measured: list[Measurement], p99_ms: float | None,
           default: Measurement | None = None) -> tuple[Measurement | None, str]:
    """The recommendation and how it was chosen.

    With ``p99_ms``: the highest throughput among points that keep every answer and whose p99 is
    within it. Without: the knee of the frontier, the lowest p99 among points that keep every
    answer and reach ``KNEE_FRACTION`` of the best such throughput. Never below the default's
    throughput when the default itself qualifies.
    """
    ok = [m for m in measured if meets(m, p99_ms)]
    if not ok:
        why = "no measured point keeps every answer" + (f" with p99 <= {p99_ms:g} ms" if p99_ms is not None else "")
        return None, why
    if p99_ms is not None:
        best = max(ok, key=lambda m: m.throughput_rps)
        how = f"the highest throughput whose p99 stays under tune.p99_ms = {p99_ms:g} ms"
    else:
        top = max(m.throughput_rps for m in ok)
        best = min((m for m in ok if m.throughput_rps >= KNEE_FRACTION * top), key=lambda m: m.p99_ms)
        how = (f"the knee of the frontier (no p99 objective: the lowest p99 reaching {KNEE_FRACTION:.0%} of the best "
               "throughput that keeps every answer)")
    if default is not None and meets(default, p99_ms) and best.throughput_rps < default.throughput_rps:
        return default, how + "; the default, as no other point beats its throughput"
    return best, how


def shortlist(measured: list[Measurement], chosen: Measurement | None, p99_ms: float | None,
              k: int = SHORTLIST) -> list[Measurement]:
    """A search's candidates for the head-to-head: its own choice, then its fastest other points that qualify.

    One measurement per point is noisy (the same setting measured minutes apart can differ by more
    than two settings do), so the search only shortlists; the interleaved rounds decide.
    """
    out = [chosen] if chosen is not None else []
    for m in sorted((m for m in measured if meets(m, p99_ms)), key=lambda m: -m.throughput_rps):
        if len(out) >= k:
            break
        if all(m.setting != o.setting for o in out):
            out.append(m)
    return out


Measure = Callable[[Setting, str], Measurement]


@dataclass
class Budget:
    """The measuring time left: a measurement is started only when the mean one so far fits."""

    seconds: float
    clock: Callable[[], float] = time.monotonic
    started: float = field(default=0.0)
    spent: list[float] = field(default_factory=list)

    def __post_init__(self):
        self.started = self.clock()

    def elapsed(self) -> float:
        return self.clock() - self.started

    def fits(self) -> bool:
        mean = sum(self.spent) / len(self.spent) if self.spent else 0.0
        return self.elapsed() + mean <= self.seconds


class _Search:
    def __init__(self, measure: Measure, budget: Budget, p99_ms: float | None):
        self.measure, self.budget, self.p99_ms = measure, budget, p99_ms
        self.done: dict[Setting, Measurement] = {}
        self.out_of_budget = False

    def at(self, s: Setting, phase: str) -> Measurement | None:
        if s in self.done:
            return self.done[s]
        if not self.budget.fits():
            self.out_of_budget = True
            return None
        t0 = self.budget.clock()
        m = self.measure(s, phase)
        self.budget.spent.append(self.budget.clock() - t0)
        m = replace(m, phase=phase) if not m.phase else m
        self.done[s] = m
        return m

    def score(self, m: Measurement | None) -> float:
        return m.throughput_rps if m is not None and meets(m, self.p99_ms) else float("-inf")

    def best(self, among) -> Measurement | None:
        cands = [m for m in among if m is not None]
        good = [m for m in cands if meets(m, self.p99_ms)]
        return max(good, key=lambda m: m.throughput_rps) if good else None


def _at_least(values: tuple[int, ...], floor: int) -> int:
    """The smallest value at least ``floor`` (the largest when none is)."""
    above = [v for v in sorted(values) if v >= floor]
    return above[0] if above else max(values)


def _filled(s: Setting, ranges: Ranges) -> Setting:
    """``s`` with concurrency raised, where the range allows, to workers x batch: enough requests in flight
    for every worker to take a full batch (fewer leave a worker idle or its batch waiting out the delay)."""
    need = _at_least(ranges.concurrency, s.workers * s.batch_size)
    return s if s.concurrency >= need else replace(s, concurrency=need)


def _steps(values: tuple, current) -> tuple[list, list]:
    """The next value up and the next value down from ``current`` in the sorted range (empty at its ends)."""
    ordered = sorted(set(values))
    up = [v for v in ordered if v > current][:1]
    down = [v for v in ordered if v < current][-1:]
    return up, down


def _neighbours(s: Setting, ranges: Ranges) -> list[Setting]:
    """One step of batch, workers and concurrency from ``s``, the steps up first (where a faster point lies, if
    anywhere, once the walk has found its knee): batch up, workers up, concurrency up, batch down, workers down."""
    b_up, b_down = _steps(ranges.batch_sizes, s.batch_size)
    w_up, w_down = _steps(ranges.workers, s.workers)
    c_up, _ = _steps(ranges.concurrency, s.concurrency)
    out = [_filled(replace(s, batch_size=b), ranges) for b in b_up]
    out += [_filled(replace(s, workers=w), ranges) for w in w_up]
    out += [replace(s, concurrency=c) for c in c_up]
    out += [replace(s, batch_size=b) for b in b_down]
    out += [replace(s, workers=w) for w in w_down]
    return [p for i, p in enumerate(out) if p != s and p not in out[:i]]


def guided_search(default: Setting, ranges: Ranges, measure: Measure, budget: Budget,
                  p99_ms: float | None) -> tuple[list[Measurement], bool]:
    """Measure the default, then walk concurrency, batch and delay, then workers and threads, then hill-climb.

    Returns:
        The measurements in the order taken, and whether the budget cut the search short.
    """
    s = _Search(measure, budget, p99_ms)
    base = s.at(default, "default")
    best = base if base is not None and meets(base, p99_ms) else None
    # 1. concurrency to the knee, at the default's batch, delay, workers and threads
    knee = default
    for c in sorted(set(ranges.concurrency)):
        if c == default.concurrency:
            continue
        m = s.at(replace(default, concurrency=c), "concurrency")
        if m is None:
            break
        if s.score(m) > s.score(best) * (1 + KNEE_GAIN) or best is None and meets(m, p99_ms):
            best, knee = m, m.setting
        elif c > knee.concurrency:
            break  # past the knee: more clients only queue
    # 2. batch sizes at the knee's concurrency (at least the batch), the middle delay
    delays = sorted(set(ranges.delays_ms))
    mid = delays[len(delays) // 2]
    batch_best = best
    for b in sorted(set(ranges.batch_sizes)):
        if b == 1 and knee.batch_size == 1:
            continue
        m = s.at(_filled(replace(knee, batch_size=b, max_batch_delay_ms=mid if b > 1 else knee.max_batch_delay_ms),
                         ranges), "batch")
        if m is None:
            break
        if s.score(m) > s.score(batch_best):
            batch_best = m
        if not m.keeps_answers and m.largest_batch > 1:
            break  # this handler changes answers once rows share a batch: larger batches only add the same
    best = batch_best or best
    if best is not None and best.setting.batch_size > 1:
        # 3. the other delays, and one more step of concurrency, around the best batch
        around = [replace(best.setting, max_batch_delay_ms=d) for d in delays if d != best.setting.max_batch_delay_ms]
        higher = [c for c in sorted(ranges.concurrency) if c > best.setting.concurrency][:1]
        around += [replace(best.setting, concurrency=c) for c in higher]
        for p in around:
            m = s.at(p, "delay/concurrency")
            if m is None:
                break
            if s.score(m) > s.score(best):
                best = m
    # 4. workers and threads around the best point
    anchor = best.setting if best is not None else default
    for w, t in itertools.product(sorted(set(ranges.workers)), ranges.threads):
        p = _filled(replace(anchor, workers=w, threads=t), ranges)
        if p == anchor:
            continue
        m = s.at(p, "workers/threads")
        if m is None:
            break
        if s.score(m) > s.score(best):
            best = m
    # 5. hill climbing from the best point, first improvement, until no neighbour beats it (never a batch as large
    # as one that changed answers once rows shared it: such a handler mixes rows at every larger batch too)
    changed = [m.setting.batch_size for m in s.done.values() if not m.keeps_answers and m.largest_batch > 1]
    moved = best is not None
    while moved:
        moved = False
        for p in _neighbours(best.setting, ranges):
            if changed and p.batch_size >= min(changed):
                continue
            m = s.at(p, "refine")
            if m is None:
                break
            if not m.keeps_answers and m.largest_batch > 1:
                changed.append(p.batch_size)
            if s.score(m) > s.score(best):
                best, moved = m, True
                break
    return list(s.done.values()), s.out_of_budget


def grid_search(ranges: Ranges, measure: Measure, default: Setting | None = None) -> list[Measurement]:
    """Every point of the ranges (the default first, when given and outside them)."""
    points = ranges.grid()
    if default is not None and default not in points:
        points = [default] + points
    return [measure(p, "grid") for p in points]
