"""Stage 6b, gate: thresholds from the spec, checked against every candidate.

A failed gate is a normal outcome, not an exception. Each check carries the candidate's
value, the baseline's value and the limit, so a reader sees why without opening a log.
A NaN (or a value that could not be measured) never passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pipeline.evaluate.compare import Comparison
from pipeline.spec import GateSpec

SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class Check:
    """One gate check: the measured value against its limit."""

    name: str
    stage: str
    value: float | str | None
    baseline: float | str | None
    limit: str
    passed: bool
    detail: str = ""
    is_gating: bool = True


@dataclass(frozen=True)
class GateInputs:
    """What the gate needs beyond the metric comparison."""

    export_max_abs_diff: float | None = None
    export_diverging_ids: tuple[str, ...] = ()
    export_failed_probes: tuple[str, ...] = ()
    export_size_ratio: float | None = None  # exported file / eager weights file
    export_latency_ratio: float | None = None  # exported / eager in-process median, batch 1
    replay_error_rate: float | None = None
    replay_errors: dict[str, int] = field(default_factory=dict)
    replay_complete: bool = True
    replay_abort_reason: str | None = None
    eager_p50_ms: float | None = None
    leaked_ids: tuple[str, ...] | None = None  # None: no training data to check against
    prior_metrics: dict[str, float] | None = None  # served metrics of an earlier run (second baseline)
    prior_label: str = "previous run"


@dataclass(frozen=True)
class GateResult:
    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks if c.is_gating)

    @property
    def failures(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.is_gating and not c.passed)


def _bad(x: float | None) -> bool:
    return x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x)))


def _metric_checks(spec: GateSpec, cmp: Comparison, stage: str, base_name: str) -> list[Check]:
    out = []
    cand, base = cmp.stages[stage], cmp.stages[base_name]
    for metric, th in spec.metrics.items():
        v, b = cand.get(metric), base.get(metric)
        if th.min is not None:
            out.append(Check(f"{metric} >= min", stage, v, b, f">= {th.min:.4f}", not _bad(v) and v >= th.min))
        if th.max_drop is not None:
            ok = not _bad(v) and not _bad(b) and (b - v) <= th.max_drop + 1e-12
            out.append(Check(f"{metric} drop", stage, v, b, f"drop <= {th.max_drop:.4f}", ok,
                             f"drop {b - v:+.4f}" if not (_bad(v) or _bad(b)) else "not measured"))
        if th.max_relative_drop is not None:
            rel = (b - v) / b if not _bad(b) and b > 0 and not _bad(v) else float("nan")
            out.append(Check(f"{metric} relative drop", stage, v, b, f"relative drop <= {th.max_relative_drop:.2%}",
                             not _bad(rel) and rel <= th.max_relative_drop + 1e-12,
                             f"relative drop {rel:+.2%}" if not _bad(rel) else "not measured"))
    return out


def evaluate_gate(spec: GateSpec, cmp: Comparison, inputs: GateInputs, base_name: str = "baseline") -> GateResult:
    """Check every candidate stage against the baseline and the spec's limits.

    Args:
        spec: the gate section of the spec.
        cmp: side-by-side metrics from ``compare_stages``.
        inputs: export consistency, replay accounting, latency and leakage facts.
        base_name: the reference stage.

    Returns:
        Every check with value, baseline and limit; ``passed`` is True only if all gating
        checks passed.
    """
    checks: list[Check] = []
    candidates = [s for s in cmp.stages if s != base_name]
    base = cmp.stages[base_name]

    if "exported" in cmp.stages:
        d = inputs.export_max_abs_diff
        ids = inputs.export_diverging_ids
        checks.append(Check(
            "max abs output difference", "exported", d, 0.0, f"<= {spec.max_output_diff:g}",
            not _bad(d) and d <= spec.max_output_diff and not ids,
            f"{len(ids)} row(s) over tolerance: {', '.join(ids[:10])}" if ids else "",
        ))
        probes = inputs.export_failed_probes
        checks.append(Check(
            "probe inputs (batch sizes, zeros, domain edges)", "exported", f"{len(probes)} failed", None,
            "none failed", not probes, "; ".join(probes[:6]),
        ))

        # The seeds: size the same or smaller, in-process latency 20% lower is good. Gated only when set.
        for name, ratio, limit, seed_limit, seed_words in (
            ("exported size / eager weights size", inputs.export_size_ratio, spec.max_size_ratio, 1.0,
             "seeds: same or smaller"),
            ("exported / eager latency, batch 1", inputs.export_latency_ratio, spec.max_export_latency_ratio, 0.8,
             "seeds: 20% faster is good"),
        ):
            if ratio is not None:
                checks.append(Check(name, "exported", ratio, 1.0,
                                    f"<= {limit:g}" if limit else f"<= {seed_limit:g} ({seed_words}; not gated)",
                                    not _bad(ratio) and ratio <= (limit or seed_limit), is_gating=limit is not None))

    for stage in candidates:
        t = cmp.tests[stage]
        cand = cmp.stages[stage]
        checks.append(Check("prediction agreement", stage, t.agreement, 1.0, f">= {spec.min_prediction_agreement:.4f}",
                            not _bad(t.agreement) and t.agreement >= spec.min_prediction_agreement,
                            f"McNemar exact p={t.mcnemar_p:.3g} ({t.baseline_only_correct} rows only baseline right, "
                            f"{t.candidate_only_correct} only {stage} right)"))
        if spec.require_identical_confusion:
            same = cand.confusion == base.confusion and not any(cand.failed_by_class)
            checks.append(Check("confusion matrix identical", stage, "identical" if same else "differs",
                                None, "identical", same))
        checks.extend(_metric_checks(spec, cmp, stage, base_name))
        if spec.positive_class is not None:
            label = cmp.labels[spec.positive_class]
            for metric, minimum in (("recall", spec.min_positive_recall), ("precision", spec.min_positive_precision)):
                if minimum is not None:
                    v = cand.per_class[label][metric]
                    checks.append(Check(f"{metric} of positive class '{label}'", stage, v,
                                        base.per_class[label][metric], f">= {minimum:.4f}",
                                        not _bad(v) and v >= minimum))
        if spec.flag_improvement:
            improved = t.candidate_only_correct > t.baseline_only_correct and t.mcnemar_p < SIGNIFICANCE
            checks.append(Check("no improvement beyond noise", stage, t.delta_accuracy, 0.0,
                                f"McNemar p >= {SIGNIFICANCE} when better", not improved,
                                "metrics improved after packaging beyond noise: suspect the wrong data or model"
                                if improved else f"delta accuracy {t.delta_accuracy:+.4f}, 95% CI "
                                f"[{t.delta_accuracy_ci[0]:+.4f}, {t.delta_accuracy_ci[1]:+.4f}]"))

    if "served" in cmp.stages:
        t = cmp.tests["served"]
        if t.max_logit_diff is not None:
            checks.append(Check("max abs output difference", "served", t.max_logit_diff, 0.0,
                                f"<= {spec.max_output_diff:g}",
                                not _bad(t.max_logit_diff) and t.max_logit_diff <= spec.max_output_diff))
        er = inputs.replay_error_rate
        errs = ", ".join(f"{k}: {v}" for k, v in sorted(inputs.replay_errors.items()))
        checks.append(Check("replay error rate", "served", er, None, f"<= {spec.max_error_rate:.4f}",
                            not _bad(er) and er <= spec.max_error_rate, errs))
        checks.append(Check("replay complete", "served", "complete" if inputs.replay_complete else "incomplete",
                            None, "every row sent", inputs.replay_complete, inputs.replay_abort_reason or ""))
        lat = cmp.stages["served"].latency
        p99 = lat.p99 if lat else None
        if spec.max_served_p99_ms is not None:
            checks.append(Check("served latency p99 (ms)", "served", p99, None, f"<= {spec.max_served_p99_ms:g}",
                                not _bad(p99) and p99 <= spec.max_served_p99_ms))
        srv = cmp.served_server_latency
        if spec.max_model_time_ratio is not None:
            ratio = srv.p50 / inputs.eager_p50_ms if srv and inputs.eager_p50_ms else None
            checks.append(Check("served model time p50 / eager p50", "served", ratio, 1.0,
                                f"<= {spec.max_model_time_ratio:g}",
                                not _bad(ratio) and ratio <= spec.max_model_time_ratio))

    if inputs.prior_metrics is not None and "served" in cmp.stages:
        served = cmp.stages["served"]
        for metric, th in spec.metrics.items():
            b = inputs.prior_metrics.get(metric)
            if b is None or th.max_drop is None:
                continue
            v = served.get(metric)
            ok = not _bad(v) and not _bad(b) and (b - v) <= th.max_drop + 1e-12
            checks.append(Check(f"{metric} drop vs {inputs.prior_label}", "served", v, b,
                                f"drop <= {th.max_drop:.4f}", ok,
                                f"drop {b - v:+.4f}" if not (_bad(v) or _bad(b)) else "not measured"))

    if inputs.leaked_ids is not None:
        leaked = inputs.leaked_ids
        checks.append(Check("eval rows not in training data", "dataset", f"{len(leaked)} leaked", None, "0 leaked",
                            not leaked, ", ".join(leaked[:10]), is_gating=spec.fail_on_leakage))
    return GateResult(checks=tuple(checks))
