"""Latency summaries: percentiles that mean the same thing in every report."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class LatencySummary:
    """Percentiles in milliseconds over ``count`` measurements."""

    count: int
    mean: float
    p50: float
    p90: float
    p95: float
    p99: float
    max: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def summarize_latency(values_ms) -> LatencySummary | None:
    """Percentiles of a latency sample; None when it is empty."""
    v = np.asarray([x for x in values_ms if x is not None], dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None
    p50, p90, p95, p99 = np.percentile(v, [50, 90, 95, 99])
    return LatencySummary(
        count=int(v.size), mean=float(v.mean()), p50=float(p50), p90=float(p90), p95=float(p95),
        p99=float(p99), max=float(v.max()),
    )
