"""The spec file: one typed, validated, frozen description of a validation run."""

from pipeline.spec.schema import (  # noqa: F401
    DEFAULT_HANDLER, DEFAULT_MAX_METRIC_DROP, DEFAULT_MODEL_STORE, DEFAULT_OUTPUT_ATOL, DEFAULT_REPORTS_DIR,
    GATED_METRICS, HANDLERS_DIR, REPO_ROOT, DatasetSpec, ExportSpec, GateSpec, MetricThreshold, ModelSpec,
    PortsSpec, ReplaySpec, ServingSpec, Spec, is_finite, load_spec, parse_spec,
)
