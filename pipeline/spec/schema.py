"""The spec file: one typed, validated, frozen description of a validation run.

A spec is YAML. Relative paths in it are resolved against the spec file's folder, so a
spec and its model, weights and data can move together. See ``examples/*/spec.yaml``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
HANDLERS_DIR = REPO_ROOT / "handlers"
DEFAULT_HANDLER = "tensor_classifier"
DEFAULT_MODEL_STORE = REPO_ROOT / "model_store"
DEFAULT_REPORTS_DIR = REPO_ROOT / "reports"

# The seeds: metrics within 1 point, outputs within 1e-5, identical confusion matrices.
DEFAULT_MAX_METRIC_DROP = 0.01
DEFAULT_OUTPUT_ATOL = 1e-5
GATED_METRICS = (
    "accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "precision_weighted",
    "recall_weighted",
    "f1_weighted",
)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)


class ModelSpec(_Frozen):
    """Where the eager model comes from."""

    factory: str = Field(description="'package.module:function' or 'file.py:function'")
    weights: Path
    num_classes: int = Field(ge=2)
    class_names: tuple[str, ...] | None = None

    @field_validator("factory")
    @classmethod
    def _factory_has_colon(cls, v: str) -> str:
        module, sep, func = v.partition(":")
        if not sep or not module or not func.isidentifier():
            raise ValueError("expected 'package.module:function' or 'path/to/file.py:function'")
        return v

    @model_validator(mode="after")
    def _names_match_classes(self) -> "ModelSpec":
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"class_names has {len(self.class_names)} names but num_classes is {self.num_classes}"
            )
        return self


class DatasetSpec(_Frozen):
    """The labeled rows to score: a CSV or Parquet file."""

    path: Path
    label_column: str = "label"
    id_column: str = "id"
    feature_columns: tuple[str, ...] | None = Field(
        default=None, description="default: every column but the id and the label, in file order"
    )
    input_shape: tuple[int, ...] = Field(description="shape of one row's tensor, e.g. [1, 8, 8] or [30]")
    train_path: Path | None = Field(default=None, description="training rows, for the leakage check")

    @field_validator("input_shape")
    @classmethod
    def _positive_dims(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(d <= 0 for d in v):
            raise ValueError("expected a non-empty list of positive integers")
        return v


class ExportSpec(_Frozen):
    """How the eager model becomes the artefact inside the .mar."""

    mode: Literal["script", "trace", "export"] = "script"
    atol: float = Field(default=DEFAULT_OUTPUT_ATOL, gt=0)
    rtol: float = Field(default=0.0, ge=0)
    probe: bool = Field(default=True, description="also check batch sizes and extreme inputs")
    probe_value_range: tuple[float, float] | None = Field(
        default=None, description="[low, high] of valid feature values; default: the dataset's range"
    )
    optimize: bool = Field(default=False, description="try freeze + optimize_for_inference (script only)")
    latency_repeats: int = Field(default=200, ge=10)


class PortsSpec(_Frozen):
    """Fixed loopback ports for TorchServe's five listeners; leave out to pick free ones."""

    inference: int = Field(ge=1, le=65535)
    management: int = Field(ge=1, le=65535)
    metrics: int = Field(ge=1, le=65535)
    grpc_inference: int = Field(ge=1, le=65535)
    grpc_management: int = Field(ge=1, le=65535)


class ServingSpec(_Frozen):
    """TorchServe settings, carried into the .mar's model config."""

    workers: int = Field(default=1, ge=1, le=64)
    batch_size: int = Field(default=1, ge=1, le=1024)
    max_batch_delay_ms: int = Field(default=5, ge=0)
    response_timeout_s: int = Field(default=30, ge=1)
    startup_timeout_s: float = Field(default=120.0, gt=0)
    job_queue_size: int = Field(default=100, ge=1)
    ports: PortsSpec | None = None


class ReplaySpec(_Frozen):
    """How the labeled rows are sent to the served model."""

    concurrency: int = Field(default=1, ge=1, le=256)
    warmup_requests: int = Field(default=20, ge=0)
    request_timeout_s: float = Field(default=30.0, gt=0)
    max_retries: int = Field(default=5, ge=0, description="retries of 'queue full' answers only")
    rate: float | None = Field(default=None, gt=0, description="open-loop requests/s; default closed loop")


class MetricThreshold(_Frozen):
    """Limits on one metric of a candidate (exported or served) against the baseline."""

    min: float | None = Field(default=None, ge=0, le=1)
    max_drop: float | None = Field(default=None, ge=0, le=1, description="absolute, e.g. 0.01 = 1 point")
    max_relative_drop: float | None = Field(default=None, ge=0, le=1)


def _default_metric_thresholds() -> dict[str, MetricThreshold]:
    return {m: MetricThreshold(max_drop=DEFAULT_MAX_METRIC_DROP) for m in GATED_METRICS}


class GateSpec(_Frozen):
    """What a candidate must satisfy for the run to pass."""

    metrics: dict[str, MetricThreshold] = Field(default_factory=_default_metric_thresholds)
    max_output_diff: float = Field(default=DEFAULT_OUTPUT_ATOL, gt=0)
    min_prediction_agreement: float = Field(default=1.0, ge=0, le=1)
    require_identical_confusion: bool = True
    positive_class: int | None = Field(default=None, ge=0)
    min_positive_recall: float | None = Field(default=None, ge=0, le=1)
    min_positive_precision: float | None = Field(default=None, ge=0, le=1)
    max_error_rate: float = Field(default=0.0, ge=0, le=1)
    max_served_p99_ms: float | None = Field(default=None, gt=0)
    max_model_time_ratio: float | None = Field(
        default=None, gt=0, description="served model time p50 / eager in-process p50"
    )
    max_size_ratio: float | None = Field(
        default=None, gt=0, description="exported file size / eager weights size; unset: reported, not gated"
    )
    max_export_latency_ratio: float | None = Field(
        default=None, gt=0, description="exported / eager in-process median at batch 1; unset: reported, not gated"
    )
    flag_improvement: bool = Field(default=True, description="a metric that improves beyond noise fails")
    fail_on_leakage: bool = True

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, v: dict[str, MetricThreshold]) -> dict[str, MetricThreshold]:
        unknown = sorted(set(v) - set(GATED_METRICS))
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; allowed: {list(GATED_METRICS)}")
        return v

    @model_validator(mode="after")
    def _positive_class_needed(self) -> "GateSpec":
        if (self.min_positive_recall is not None or self.min_positive_precision is not None) and (
            self.positive_class is None
        ):
            raise ValueError("min_positive_recall/min_positive_precision need gate.positive_class")
        return self


class Spec(_Frozen):
    """One validation: the model, its data, how to export, serve, replay and gate it."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$", description="TorchServe model name")
    version: str = Field(default="1.0", pattern=r"^[0-9A-Za-z.\-_]+$")
    model: ModelSpec
    dataset: DatasetSpec
    export: ExportSpec = ExportSpec()
    handler: str = DEFAULT_HANDLER
    serving: ServingSpec = ServingSpec()
    replay: ReplaySpec = ReplaySpec()
    gate: GateSpec = GateSpec()
    spec_path: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _positive_class_in_range(self) -> "Spec":
        pc = self.gate.positive_class
        if pc is not None and pc >= self.model.num_classes:
            raise ValueError(
                f"gate.positive_class is {pc} but the model has {self.model.num_classes} classes (0..{self.model.num_classes - 1})"
            )
        return self

    @property
    def handler_path(self) -> Path:
        """The handler file shipped in the .mar: a name in handlers/ or a path."""
        if "/" not in self.handler and not self.handler.endswith(".py"):
            return HANDLERS_DIR / f"{self.handler}.py"
        return Path(self.handler)

    @property
    def class_labels(self) -> tuple[str, ...]:
        return self.model.class_names or tuple(str(i) for i in range(self.model.num_classes))


def _resolve(base: Path, p: Path | None) -> Path | None:
    if p is None:
        return None
    p = Path(p).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def _format_validation_error(err: ValidationError, source: str) -> ConfigError:
    lines = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"{loc}: unknown field (check its spelling and where it is nested)")
            continue
        value = e.get("input")
        shown = repr(value) if not isinstance(value, dict) else "{...}"
        if len(shown) > 80:
            shown = shown[:77] + "..."
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}, got {shown}")
    return ConfigError(f"{source}: {len(lines)} invalid field(s). Fix the spec and re-run.", details=lines)


def parse_spec(data: Any, *, base_dir: Path, source: str = "spec") -> Spec:
    """Validate a spec already parsed from YAML and resolve its relative paths.

    Args:
        data: the parsed YAML document.
        base_dir: folder that relative paths are resolved against.
        source: name used in error messages.

    Returns:
        The frozen, validated spec.

    Raises:
        ConfigError: naming every invalid field, its value and what is allowed.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a YAML mapping at the top level, got {type(data).__name__}")
    try:
        spec = Spec.model_validate(data)
    except ValidationError as e:
        raise _format_validation_error(e, source) from e
    handler = spec.handler
    if "/" in handler or handler.endswith(".py"):
        handler = str(_resolve(base_dir, Path(handler)))
    model = spec.model.model_copy(update={"weights": _resolve(base_dir, spec.model.weights)})
    factory_mod, _, factory_fn = spec.model.factory.partition(":")
    if factory_mod.endswith(".py"):
        model = model.model_copy(update={"factory": f"{_resolve(base_dir, Path(factory_mod))}:{factory_fn}"})
    dataset = spec.dataset.model_copy(
        update={
            "path": _resolve(base_dir, spec.dataset.path),
            "train_path": _resolve(base_dir, spec.dataset.train_path),
        }
    )
    return spec.model_copy(update={"model": model, "dataset": dataset, "handler": handler})


def load_spec(path: Path) -> Spec:
    """Read, validate and resolve a spec file.

    Args:
        path: the YAML spec.

    Returns:
        The frozen, validated spec with absolute paths.

    Raises:
        ConfigError: the file is missing, is not YAML, or has invalid fields.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"spec file {path} does not exist. Pass the path of a YAML spec, e.g. examples/digits/spec.yaml."
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}. Fix the syntax and re-run.") from e
    spec = parse_spec(data, base_dir=path.resolve().parent, source=str(path))
    return spec.model_copy(update={"spec_path": path.resolve()})


def is_finite(x: float | None) -> bool:
    return x is not None and not math.isnan(x) and not math.isinf(x)
