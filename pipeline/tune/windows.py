"""Stability windows: a point's throughput and p99 count only once consecutive windows agree.

After perf_analyzer's stability rule: a point is measured in windows of the same requests;
the first is warm-up (the JVM's JIT, the worker's first batches) and never counts; the figures
are the mean of the last two windows once they agree within ``tolerance`` on throughput and on
p99, else the point is reported unstable (its last two windows, said as such).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Window:
    """One window's figures: closed-loop throughput, client latency percentiles, what failed, batches formed."""

    throughput_rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    failed: int = 0
    formed: dict[int, int] = field(default_factory=dict)  # requests per batch -> batches (model_metrics.log)


def agree(a: float, b: float, tolerance: float) -> bool:
    """|a - b| within ``tolerance`` of the larger (both finite)."""
    if not (np.isfinite(a) and np.isfinite(b)):
        return False
    return abs(a - b) <= tolerance * max(abs(a), abs(b), 1e-12)


def stable(windows: list[Window], tolerance: float) -> bool:
    """The last two counted windows (the first is warm-up) agree on throughput and p99."""
    counted = windows[1:]
    if len(counted) < 2:
        return False
    a, b = counted[-2], counted[-1]
    return agree(a.throughput_rps, b.throughput_rps, tolerance) and agree(a.p99_ms, b.p99_ms, tolerance)


def measure_windows(run_window: Callable[[int], Window], tolerance: float, max_windows: int,
                    keep_going: Callable[[], bool] = lambda: True) -> tuple[list[Window], bool]:
    """Windows until the last two counted ones agree, ``max_windows`` are measured or ``keep_going`` says stop.

    Returns:
        Every window measured (warm-up first) and whether the point is stable.
    """
    windows: list[Window] = []
    while len(windows) < max(3, max_windows):
        windows.append(run_window(len(windows)))
        if stable(windows, tolerance) or windows[-1].failed:
            break
        if len(windows) >= 3 and not keep_going():
            break
    return windows, stable(windows, tolerance)


def summary(windows: list[Window]) -> tuple[float, float, float]:
    """Throughput, p50 and p99 of the last two counted windows (the warm-up only when nothing else ran)."""
    counted = windows[1:][-2:] or windows[-1:]
    return (float(np.mean([w.throughput_rps for w in counted])), float(np.mean([w.p50_ms for w in counted])),
            float(np.mean([w.p99_ms for w in counted])))


def formed_batches(windows: list[Window]) -> dict[int, int]:
    """Batches formed over the counted windows, by requests per batch."""
    out: dict[int, int] = {}
    for w in windows[1:] or windows:
        for size, n in w.formed.items():
            out[size] = out.get(size, 0) + n
    return dict(sorted(out.items()))
