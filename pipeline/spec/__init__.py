"""The spec file: one typed, validated, frozen description of a validation run."""

from pipeline.spec.schema import (  # noqa: F401
    ANSWER_FORMATS, DEFAULT_MAX_METRIC_DROP, DEFAULT_OUTPUT_ATOL, ENVELOPES, EXPORT_MODES, GATED_METRICS,
    INPUT_KINDS, AnswerMapping, AnswersSpec, DatasetSpec, ExportSpec, GateSpec, HandlerSpec, MetricThreshold,
    ModelSpec, PortsSpec, ReplaySpec, ServingSpec, Spec, is_finite, load_spec, parse_spec,
)
