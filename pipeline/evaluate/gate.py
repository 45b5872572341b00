"""Gate: thresholds from the spec, checked against every candidate stage the run planned.

A failed gate is a normal outcome, not an exception. Each check carries the candidate's
value, the baseline's value and the limit, so a reader sees why without opening a log.

The checks a run must contain come from the spec and the *planned* stages (``GatePlan``),
not from what happened to run: a stage that did not produce results, or a figure the
answers cannot support, still has its checks, and each fails saying why ("not evaluated:
...", "not evaluable: ..."). A not-evaluable check shows as a WARN only where
``gate.allow_not_evaluable`` names it. NaN never passes. A gate with no candidate stage, no
answered row or no gating check does not pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pipeline.evaluate.compare import Comparison, PairedTest, StageMetrics, class_keys
from pipeline.names import Stage, StageName
from pipeline.spec import GateSpec
from pipeline.tasks.registry import task_for

SIGNIFICANCE = 0.05
EPS = 1e-12
SEED_SIZE_RATIO = 1.0  # the seeds: model size the same or smaller is good
SEED_LATENCY_RATIO = 0.8  # the seeds: in-process latency 20% lower is good


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
    evaluated: bool = True


@dataclass(frozen=True)
class GatePlan:
    """What the run set out to check, known before any stage runs.

    Attributes:
        candidates: the candidate stages planned, in pipeline order (a handled variant at the
            served batch size is ``StageName(HANDLED, batch=N)``, text ``handled@batchN``).
        output_quantity: per candidate, what its outputs carry for the output-difference check
            ("logits", "probabilities"), or why there is nothing to compare ("not evaluable: ...").
        has_training_data: the leakage check is planned.
        has_prior: a second baseline (an earlier run's served metrics) is planned.
        probes: stages whose probes are planned ("exported", "handled").
        classes_only: candidates whose answers may carry only the class (no logits, no probabilities)
            without failing the output-difference check: it is then a WARN "compares classes only",
            the classes being compared by the agreement and metric checks. The plan names the stages
            that answer over a handler unless the spec demands probabilities (``answers.top_k`` set).
            A stage whose outputs do carry a quantity (e.g. the model's own outputs read inside the
            handler) is compared on it as usual.
    """

    candidates: tuple[str, ...]
    labels: tuple[str, ...] = ()
    output_quantity: dict[str, str] = field(default_factory=dict)
    has_training_data: bool = False
    has_prior: bool = False
    probes: tuple[str, ...] = ()
    warmup: bool = False  # the served warm-up answers are compared with the steady-state ones
    classes_only: tuple[str, ...] = ()
    lint: bool = False  # the config and archive lint is planned (every run: pipeline.lint)
    task: str = "classification"  # model.task: whose checks each candidate gets (tasks.registry)


@dataclass(frozen=True)
class StageFacts:
    """Row accounting of a stage that answered over a handler (handled or served)."""

    error_rate: float | None
    errors: dict[str, int] = field(default_factory=dict)
    complete: bool = False
    abort_reason: str | None = None


@dataclass(frozen=True)
class GateInputs:
    """What the gate needs beyond the metric comparison; None means "not measured"."""

    export_size_ratio: float | None = None  # exported file / eager weights file
    export_latency_ratio: float | None = None  # exported / eager in-process median, batch 1
    export_latency_untimed: str = ""  # why the export ran but latency was not timed
    failed_probes: dict[str, tuple[str, ...]] = field(default_factory=dict)  # stage -> failed probe lines
    probes_run: tuple[str, ...] = ()  # stages whose probes ran
    warned_probes: dict[str, tuple[str, ...]] = field(default_factory=dict)  # stage -> passed probes' warnings
    answered: dict[str, StageFacts] = field(default_factory=dict)  # handled, served
    eager_p50_ms: float | None = None
    leaked_ids: tuple[str, ...] | None = None  # None: no training data checked
    prior_metrics: dict[str, float] | None = None  # served metrics of an earlier run (second baseline)
    prior_label: str = "previous run"
    not_run: dict[str, str] = field(default_factory=dict)  # planned stage -> why it has no results
    warmup_checked: int | None = None  # rows answered both in the warm-up and in the replay
    warmup_differing: tuple[str, ...] = ()  # those whose warm-up answer differs, with both answers
    lint_findings: tuple | None = None  # pipeline.lint.Finding of the config and archive; None: not linted


@dataclass(frozen=True)
class GateResult:
    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        return passes(self.checks)

    @property
    def failures(self) -> tuple[Check, ...]:
        return failures_of(self.checks)

    def names(self) -> set[tuple[str, str]]:
        return {(c.stage, c.name) for c in self.checks}


# Plain functions rather than property bodies, so the mutation tester (mutmut skips decorated
# functions) reaches the verdict itself.
def passes(checks: tuple[Check, ...]) -> bool:
    """At least one gating check, and every gating check passed."""
    gating = [c for c in checks if c.is_gating]
    return bool(gating) and all(c.passed for c in gating)


def failures_of(checks: tuple[Check, ...]) -> tuple[Check, ...]:
    return tuple(c for c in checks if c.is_gating and not c.passed)


def is_bad(x: float | str | None) -> bool:
    return x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x)))


def at_most(value: float | None, limit: float) -> bool:
    return not is_bad(value) and value <= limit + EPS


def at_least(value: float | None, limit: float) -> bool:
    return not is_bad(value) and value >= limit - EPS


def missing(name: str, stage: str, limit: str, why: str, spec: GateSpec, evaluable_gap: bool = False) -> Check:
    """A planned check that has no value: it fails, saying why (a WARN only where the spec allows)."""
    allowed = evaluable_gap and (name in spec.allow_not_evaluable or f"{stage}: {name}" in spec.allow_not_evaluable)
    words = "not evaluable" if evaluable_gap else "not evaluated"
    return Check(name, stage, None, None, limit, False, f"{words}: {why}", is_gating=not allowed, evaluated=False)


def metric_checks(spec: GateSpec, cand: StageMetrics | None, base: StageMetrics | None, stage: str,
                  not_run: str = "") -> list[Check]:
    """min, max_drop and max_relative_drop of every gated metric against the baseline."""
    out = []
    for metric, th in spec.metrics.items():
        if cand is None or base is None:
            v = b = None
            why = ""
        else:
            v, b = cand.get(metric), base.get(metric)
            why = cand.undefined.get(metric) or base.undefined.get(metric)
        limits = []
        if th.min is not None:
            limits.append((f"{metric} >= min", f">= {th.min:.4f}", lambda v, b, t=th.min: at_least(v, t),
                           lambda v, b: ""))
        if th.max_drop is not None:
            limits.append((f"{metric} drop", f"drop <= {th.max_drop:.4f}",
                           lambda v, b, t=th.max_drop: at_most(b - v, t), lambda v, b: f"drop {b - v:+.4f}"))
        if th.max_relative_drop is not None:
            limits.append((f"{metric} relative drop", f"relative drop <= {th.max_relative_drop:.2%}",
                           lambda v, b, t=th.max_relative_drop: b > 0 and at_most((b - v) / b, t),
                           lambda v, b: f"relative drop {(b - v) / b:+.2%}" if b > 0 else "baseline is 0"))
        for name, limit, ok, detail in limits:
            if why or is_bad(v) or is_bad(b):
                out.append(missing(name, stage, limit, why or not_run or f"{metric} could not be measured", spec,
                                   evaluable_gap=bool(why)))
                continue
            out.append(Check(name, stage, v, b, limit, bool(ok(v, b)), detail(v, b)))
    return out


def agreement_checks(spec: GateSpec, t: PairedTest | None, cand: StageMetrics | None, base: StageMetrics | None,
                     stage: str, labels: tuple[str, ...], not_run: str = "",
                     flipped_ids: tuple[str, ...] = ()) -> list[Check]:
    """Agreement with the baseline, the confusion matrix, the positive class, improvement beyond noise."""
    if t is None or cand is None or base is None:
        names = [("prediction agreement", f">= {spec.min_prediction_agreement:.4f}")]
        if spec.require_identical_confusion:
            names.append(("confusion matrix identical", "identical"))
        if spec.positive_class is not None:
            names += [(f"{m} of positive class '{labels[spec.positive_class]}'", f">= {minimum:.4f}")
                      for m, minimum in (("recall", spec.min_positive_recall),
                                         ("precision", spec.min_positive_precision)) if minimum is not None]
        if spec.flag_improvement:
            names.append(("no improvement beyond noise", f"McNemar p >= {SIGNIFICANCE} when better"))
        return [missing(n, stage, limit, not_run, spec) for n, limit in names]
    named = f" ({', '.join(flipped_ids[:8])}{', ...' if len(flipped_ids) > 8 else ''})" if flipped_ids else ""
    out = [Check("prediction agreement", stage, t.agreement, 1.0, f">= {spec.min_prediction_agreement:.4f}",
                 at_least(t.agreement, spec.min_prediction_agreement),
                 f"{t.disagreeing} row(s) differ{named}; McNemar exact p={t.mcnemar_p:.3g} ({t.reference_only_correct}"
                 f" rows only baseline right, {t.candidate_only_correct} only {stage} right)")]
    if spec.require_identical_confusion:
        same = cand.confusion == base.confusion and not any(cand.failed_by_class)
        failed = sum(cand.failed_by_class)
        out.append(Check("confusion matrix identical", stage, "identical" if same else "differs", None, "identical",
                         same, f"{failed} row(s) without an answer" if failed else ""))
    if spec.positive_class is not None:
        label = labels[spec.positive_class]
        for metric, minimum in (("recall", spec.min_positive_recall), ("precision", spec.min_positive_precision)):
            if minimum is None:
                continue
            name = f"{metric} of positive class '{label}'"
            key = class_keys(labels)[spec.positive_class]  # 'crane [134]' where two classes share a name
            v, b = cand.per_class[key][metric], base.per_class[key][metric]
            if is_bad(v):
                out.append(missing(name, stage, f">= {minimum:.4f}", f"{metric} of '{label}' is 0/0 in {stage}",
                                   spec, evaluable_gap=True))
            else:
                out.append(Check(name, stage, v, b, f">= {minimum:.4f}", at_least(v, minimum)))
    if spec.flag_improvement:
        improved = t.candidate_only_correct > t.reference_only_correct and t.mcnemar_p < SIGNIFICANCE
        out.append(Check("no improvement beyond noise", stage, t.delta_accuracy, 0.0,
                         f"McNemar p >= {SIGNIFICANCE} when better", not improved,
                         "metrics improved after packaging beyond noise: suspect the wrong data or model"
                         if improved else f"delta accuracy {t.delta_accuracy:+.4f}, 95% CI "
                         f"[{t.delta_accuracy_ci[0]:+.4f}, {t.delta_accuracy_ci[1]:+.4f}]"))
    return out


def output_check(spec: GateSpec, plan: GatePlan, t: PairedTest | None, stage: str, not_run: str = "",
                 over: tuple[str, ...] = ()) -> Check:
    """The largest |candidate - baseline| of the logits (or carried probabilities) against the one tolerance."""
    name, limit = "max abs output difference", f"<= {spec.max_output_diff:g}"
    planned = plan.output_quantity.get(stage, "")
    classes_only = stage in plan.classes_only
    if planned.startswith("not evaluable") and not classes_only:
        return missing(name, stage, limit, planned.split(": ", 1)[-1], spec, evaluable_gap=True)
    if t is None:
        return missing(name, stage, limit, not_run or f"the {stage} stage has no results", spec)
    d = t.output
    if d.quantity is None and classes_only:
        return classes_only_check(name, stage, limit, d.reason or "the answers carry only the class")
    if d.quantity is None or d.max_abs is None:
        return missing(name, stage, limit, d.reason or "nothing to compare", spec, evaluable_gap=d.quantity is None)
    detail = f"{d.quantity}, {d.rows_compared} row(s) compared"
    if over:
        detail += f"; largest beyond the tolerance: {', '.join(over)}"
    return Check(name, stage, d.max_abs, 0.0, limit, at_most(d.max_abs, spec.max_output_diff), detail)


def classes_only_check(name: str, stage: str, limit: str, why: str) -> Check:
    """The output difference of answers that carry only the class: a WARN, not a failure (the spec did
    not demand probabilities), saying what is compared instead."""
    return Check(name, stage, "compares classes only", None, limit, False,
                 f"compares classes only: {why}; the predicted classes are compared by the agreement and metric "
                 "checks (set answers.top_k, with answers that carry probabilities, to gate the outputs too)",
                 is_gating=False, evaluated=False)


def answered_checks(spec: GateSpec, facts: StageFacts | None, stage: str, why_missing: str) -> list[Check]:
    """Every row answered and the run complete, for a stage that talks to a handler."""
    rate_name, rate_limit = f"{stage} error rate", f"<= {spec.max_error_rate:.4f}"
    if facts is None:
        return [missing(rate_name, stage, rate_limit, why_missing, spec),
                missing(f"{stage} complete", stage, "every row", why_missing, spec)]
    errs = ", ".join(f"{k}: {v}" for k, v in sorted(facts.errors.items()))
    return [
        Check(rate_name, stage, facts.error_rate, None, rate_limit, at_most(facts.error_rate, spec.max_error_rate),
              errs),
        Check(f"{stage} complete", stage, "complete" if facts.complete else "incomplete", None, "every row",
              facts.complete, facts.abort_reason or ""),
    ]


def probe_check(spec: GateSpec, inputs: GateInputs, stage: str) -> Check:
    name = "probe inputs"
    if stage not in inputs.probes_run:
        return Check(name, stage, None, None, "none failed", False,
                     f"not evaluated: the {stage} probes did not run", is_gating=spec.probes, evaluated=False)
    failed = inputs.failed_probes.get(stage, ())
    detail = "; ".join(failed[:6])
    if failed and spec.probes:
        detail += " (fix the handler, or set gate.probes: false to report probes without gating them)"
    return Check(name, stage, f"{len(failed)} failed", None, "none failed", not failed, detail,
                 is_gating=spec.probes)


def probe_warning_check(inputs: GateInputs, stage: str) -> Check:
    """A WARN (never gating) for probes a correct handler passes that still surprise a client (EXIF ignored)."""
    warned = inputs.warned_probes.get(stage, ())
    return Check("probe warnings", stage, f"{len(warned)} warning(s)", None, "none", not warned, "; ".join(warned[:4]),
                 is_gating=False)


def export_ratio_checks(spec: GateSpec, inputs: GateInputs) -> list[Check]:
    """The seeds' size and in-process speed checks: always reported, gated only when a limit is set."""
    out = []
    for name, ratio, limit, seed_limit, seed_words in (
        ("exported size / eager weights size", inputs.export_size_ratio, spec.max_size_ratio, SEED_SIZE_RATIO,
         "seeds: same or smaller"),
        ("exported / eager latency, batch 1", inputs.export_latency_ratio, spec.max_export_latency_ratio,
         SEED_LATENCY_RATIO, "seeds: 20% faster is good"),
    ):
        words = f"<= {limit:g}" if limit is not None else f"<= {seed_limit:g} ({seed_words}; not gated)"
        if ratio is None:
            why = inputs.export_latency_untimed if "latency" in name and inputs.export_latency_untimed else \
                "no export result"
            out.append(Check(name, Stage.EXPORTED, None, 1.0, words, False, f"not evaluated: {why}",
                             is_gating=limit is not None, evaluated=False))
            continue
        out.append(Check(name, Stage.EXPORTED, ratio, 1.0, words, at_most(ratio, limit if limit is not None
                                                                          else seed_limit),
                         is_gating=limit is not None))
    return out


def served_latency_checks(spec: GateSpec, cmp: Comparison | None, inputs: GateInputs) -> list[Check]:
    out = []
    served = cmp.stages.get(Stage.SERVED) if cmp else None
    if spec.max_served_p99_ms is not None:
        p99 = served.latency.p99 if served and served.latency else None
        out.append(Check("served latency p99 (ms)", Stage.SERVED, p99, None, f"<= {spec.max_served_p99_ms:g}",
                         at_most(p99, spec.max_served_p99_ms), "" if p99 is not None else "not evaluated: no latency",
                         evaluated=p99 is not None))
    if spec.max_model_time_ratio is not None:
        srv = cmp.served_server_latency if cmp else None
        ratio = srv.p50 / inputs.eager_p50_ms if srv and inputs.eager_p50_ms else None
        out.append(Check("served model time p50 / eager p50", Stage.SERVED, ratio, 1.0,
                         f"<= {spec.max_model_time_ratio:g}", at_most(ratio, spec.max_model_time_ratio),
                         "" if ratio is not None else "not evaluated: no server-side time or eager latency",
                         evaluated=ratio is not None))
    return out


def warmup_check(inputs: GateInputs) -> Check:
    """Warm-up answers equal the steady-state answers of the same rows (a first request that scores
    differently is a known TorchServe trap: serve issue #2983)."""
    name = "warm-up answers equal steady-state answers"
    if not inputs.warmup_checked:
        return Check(name, Stage.SERVED, None, None, "0 rows differ", False,
                     "not evaluated: no row was answered both during the warm-up and the replay", evaluated=False)
    n = len(inputs.warmup_differing)
    return Check(name, Stage.SERVED, f"{n} of {inputs.warmup_checked} differ", None, "0 rows differ", n == 0,
                 "; ".join(inputs.warmup_differing[:5]))


def prior_checks(spec: GateSpec, cmp: Comparison | None, inputs: GateInputs,
                 lower_is_better: frozenset[str] = frozenset()) -> list[Check]:
    """Each served metric against an earlier run's; for a loss (``lower_is_better``, the task's) its rise."""
    out = []
    served = cmp.stages.get(Stage.SERVED) if cmp else None
    for metric, th in spec.metrics.items():
        if th.max_drop is None:
            continue
        low = metric in lower_is_better
        word = "rise" if low else "drop"
        name, limit = f"{metric} {word} vs {inputs.prior_label}", f"{word} <= {th.max_drop:.4f}"
        b = (inputs.prior_metrics or {}).get(metric)
        v = served.get(metric) if served else None
        if is_bad(b) or is_bad(v):
            out.append(missing(name, Stage.SERVED, limit, "the served metric or the earlier run's is missing", spec))
            continue
        worse = v - b if low else b - v
        out.append(Check(name, Stage.SERVED, v, b, limit, at_most(worse, th.max_drop), f"{word} {worse:+.4f}"))
    return out


def leakage_check(spec: GateSpec, inputs: GateInputs) -> Check:
    leaked = inputs.leaked_ids
    if leaked is None:
        return Check("eval rows not in training data", "dataset", None, None, "0 leaked", False,
                     "not evaluated: the training rows were not read", is_gating=spec.fail_on_leakage,
                     evaluated=False)
    return Check("eval rows not in training data", "dataset", f"{len(leaked)} leaked", None, "0 leaked",
                 not leaked, ", ".join(leaked[:10]), is_gating=spec.fail_on_leakage)


LINT_CHECK = "config lint"


def lint_check(spec: GateSpec, inputs: GateInputs) -> Check:
    """The config.properties and archive lint: no finding of a severity ``gate.lint`` names."""
    limit = f"no {'/'.join(spec.lint)} findings" if spec.lint else "reported, not gated"
    found = inputs.lint_findings
    if found is None:
        return Check(LINT_CHECK, "config", None, None, limit, False, "not evaluated: the run stopped before the lint",
                     is_gating=bool(spec.lint), evaluated=False)
    bad = [f for f in found if f.severity in spec.lint]
    counts = ", ".join(f"{sum(f.severity == s for f in found)} {s}" for s in ("high", "medium", "low", "info")
                       if any(f.severity == s for f in found)) or "no findings"
    detail = "; ".join(f"{f.severity} {f.id}: {f.key}" + (f"={f.value}" if getattr(f, "value", None) else "")
                       + f" ({f.reference})" for f in bad)
    if bad:
        detail += "; each fix is in the report's TorchServe config section (package-validate lint prints them)"
    return Check(LINT_CHECK, "config", counts, None, limit, not bad, detail, is_gating=bool(spec.lint))


def stage_checks(spec: GateSpec, plan: GatePlan, cmp: Comparison | None, inputs: GateInputs,
                 stage: str, base_name: str, labels: tuple[str, ...]) -> list[Check]:
    """Every check of one planned candidate stage."""
    why = inputs.not_run.get(stage) or f"the {stage} stage has no results"
    # agreement, metrics and the output difference are the task's (tasks/<task>.py); the rest every task shares
    checks: list[Check] = task_for(plan.task).stage_checks(spec, plan, cmp, stage, base_name, labels, why)
    if stage in plan.probes:
        checks.append(probe_check(spec, inputs, stage))
        if inputs.warned_probes.get(stage):
            checks.append(probe_warning_check(inputs, stage))
    if stage == Stage.EXPORTED:
        checks += export_ratio_checks(spec, inputs)
    if StageName.of(stage).stage in (Stage.HANDLED, Stage.SERVED):
        checks += answered_checks(spec, inputs.answered.get(stage), stage, why)
    if stage == Stage.SERVED:
        checks += served_latency_checks(spec, cmp, inputs)
        if plan.warmup:
            checks.append(warmup_check(inputs))
        if plan.has_prior:
            checks += prior_checks(spec, cmp, inputs, task_for(plan.task).lower_is_better)
    return checks


def evaluate_gate(spec: GateSpec, plan: GatePlan, cmp: Comparison | None, inputs: GateInputs,
                  base_name: str = Stage.BASELINE) -> GateResult:
    """Every planned check of every planned candidate, against the baseline and the spec's limits.

    Args:
        spec: the gate section of the spec.
        plan: the candidate stages and checks the run planned.
        cmp: side-by-side metrics from ``compare_stages`` (None when nothing could be compared).
        inputs: export, probe, row-accounting, latency, leakage and prior-run facts.
        base_name: the reference stage.

    Returns:
        Every check with value, baseline and limit; ``passed`` only if there is at least one
        gating check and every gating check passed.
    """
    checks: list[Check] = []
    if not plan.candidates:
        checks.append(Check("a candidate stage to gate", "run", None, None, ">= 1 planned", False,
                            "nothing was planned after the baseline: there is nothing to vouch for"))
    for stage in plan.candidates:
        checks += stage_checks(spec, plan, cmp, inputs, stage, base_name, plan.labels)
    if plan.has_training_data:
        checks.append(leakage_check(spec, inputs))
    if plan.lint:
        checks.append(lint_check(spec, inputs))
    answered = [cmp.stages[s].answered for s in plan.candidates if cmp is not None and s in cmp.stages]
    if plan.candidates and not any(answered):
        checks.append(Check("rows answered", "run", 0, None, ">= 1", False, "no candidate stage answered any row"))
    return GateResult(checks=tuple(checks))
