"""The head-to-head: the default and each search's shortlist measured side by side (pure).

A search measures each point once, at its own moment; on a shared machine the same setting
measured minutes apart can differ by more than the gap between two settings. So after the
searches the contenders are measured again in interleaved rounds (A B C, B C A, C A B, ...: each
round's order rotated, so a drift over the rounds hits each contender alike), the setting applied
afresh each time; the medians over the rounds settle the recommendation (and the grid's best) among
each search's shortlist, and are the closing figures. Contenders that are the
same setting (the recommendation is the default, or the grid's best) are measured once per round
under all their names: their ratio is then 1 by construction, and said as such.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, replace
from typing import Callable

from pipeline.run.phases import Setting
from pipeline.tune.search import Measurement

ANSWER_RANK = {"same": 0, "differ": 1, "failed": 2}  # the worst over the rounds is a contender's verdict


@dataclass(frozen=True)
class Contender:
    """One setting's rounds: its names (default, recommended, grid best), its measurements, their medians."""

    names: tuple[str, ...]
    setting: Setting
    rounds: tuple[Measurement, ...]

    @property
    def throughput_rps(self) -> float:
        return float(statistics.median(m.throughput_rps for m in self.rounds))

    @property
    def p99_ms(self) -> float:
        return float(statistics.median(m.p99_ms for m in self.rounds))

    @property
    def answers(self) -> str:
        return max((m.answers for m in self.rounds), key=lambda a: ANSWER_RANK.get(a, 2))

    @property
    def detail(self) -> str:
        worst = [m for m in self.rounds if m.answers == self.answers]
        return worst[0].detail if worst else ""


@dataclass(frozen=True)
class HeadToHead:
    contenders: tuple[Contender, ...]
    seconds: float

    def of(self, name: str) -> Contender | None:
        return next((c for c in self.contenders if name in c.names), None)

    def at(self, setting: Setting) -> Contender | None:
        return next((c for c in self.contenders if c.setting == setting), None)

    def named(self, extra: dict[Setting, tuple[str, ...]]) -> "HeadToHead":
        """The same rounds with more names (the settled recommendation, the grid's best) on some contenders."""
        return HeadToHead(tuple(replace(c, names=c.names + extra.get(c.setting, ())) for c in self.contenders),
                          self.seconds)

    def seconds_of(self, names_prefix: tuple[str, ...]) -> float:
        """Measuring time of the contenders carrying a name that starts with one of ``names_prefix``."""
        return sum(m.seconds for c in self.contenders if any(n.startswith(names_prefix) for n in c.names)
                   for m in c.rounds)

    def settled(self, searched: list[Measurement]) -> list[Measurement]:
        """The searched points as the head-to-head measured them: medians of throughput and p99, the worst answers."""
        out = []
        for m in searched:
            c = self.at(m.setting)
            if c is not None:
                out.append(replace(m, throughput_rps=c.throughput_rps, p99_ms=c.p99_ms, answers=c.answers,
                                   detail=c.detail or m.detail))
        return out

    def ratio(self, a: str, b: str) -> tuple[float | None, str]:
        """Median throughput of ``a`` over ``b``, and what it measures (a ratio of one setting with itself is noise)."""
        ca, cb = self.of(a), self.of(b)
        if ca is None or cb is None or cb.throughput_rps <= 0:
            return None, "not measured"
        if ca is cb:
            return 1.0, (f"the {a} is the {b} (the same setting): measured once per round, the ratio is 1 by "
                         "construction")
        n = len(ca.rounds)
        return ca.throughput_rps / cb.throughput_rps, f"medians over {n} interleaved round{'s' if n > 1 else ''}"


Measure = Callable[[Setting, str], Measurement]


def head_to_head(named: list[tuple[str, Setting]], measure: Measure, rounds: int,
                 clock: Callable[[], float] | None = None) -> HeadToHead:
    """Measure each distinct setting of ``named`` once per round, the order rotated each round.

    Args:
        named: (name, setting) pairs in order (default, recommended, grid best); a setting named twice is one contender.
        measure: measures one setting (applied afresh) and returns its Measurement.
        rounds: how many times each contender is measured.
    Returns:
        The contenders with their measurements in round order, and the seconds spent.
    """
    clock = clock or time.monotonic
    t0 = clock()
    order: list[Setting] = []
    names: dict[Setting, list[str]] = {}
    for name, s in named:
        if s not in names:
            order.append(s)
            names[s] = []
        names[s].append(name)
    got: dict[Setting, list[Measurement]] = {s: [] for s in order}
    for r in range(rounds):
        k = r % len(order)
        for s in order[k:] + order[:k]:
            got[s].append(measure(s, "head-to-head"))
    return HeadToHead(tuple(Contender(tuple(names[s]), s, tuple(got[s])) for s in order), clock() - t0)
