"""The spec file: one typed, validated, frozen description of a validation run.

A spec is YAML. Relative paths in it are resolved against the spec file's folder, so a
spec and its model, weights and data can move together. See ``examples/*/spec.yaml``.
This module checks the shape of each field; combinations that need knowledge of
TorchServe (a built-in handler with an AOTInductor package, a KServe envelope with
batching, ...) are checked by ``pipeline.run.plan`` before any stage runs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import ConfigError

__all__ = [
    "DEFAULT_MAX_METRIC_DROP", "DEFAULT_OUTPUT_ATOL", "GATED_METRICS", "INPUT_KINDS", "ANSWER_FORMATS",
    "ENVELOPES", "EXPORT_MODES", "AnswersSpec", "AnswerMapping", "DatasetSpec", "ExportSpec", "GateSpec",
    "HandlerSpec", "MetricThreshold", "ModelSpec", "PortsSpec", "ReplaySpec", "ServingSpec", "Spec",
    "is_finite", "load_spec", "parse_spec",
]

# The seeds: metrics within 1 point, outputs within 1e-5, identical confusion matrices.
DEFAULT_MAX_METRIC_DROP = 0.01
DEFAULT_OUTPUT_ATOL = 1e-5
DEFAULT_TIMEOUT_S = 3600.0
GATED_METRICS = (
    "accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "precision_weighted",
    "recall_weighted",
    "f1_weighted",
)
INPUT_KINDS = ("tensor", "image", "text", "json")
ANSWER_FORMATS = ("auto", "package_validate", "topk", "logits", "mapping", "index", "label", "top1", "label_scores",
                  "custom")
ENVELOPES = ("none", "kserve_v1", "kserve_v2")
EXPORT_MODES = ("script", "trace", "export", "eager")

# Fields that moved: the old name, where it lives now and why.
_MOVED = {
    ("export", "atol"): "gate.max_output_diff (one output tolerance decides the diverging rows and the printed limit)",
    ("export", "rtol"): "gate.max_output_diff (one absolute output tolerance for every stage)",
}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)


def _check_callable_ref(v: str, what: str) -> str:
    module, sep, func = v.partition(":")
    if not sep or not module or not func.isidentifier():
        raise ValueError(f"expected 'package.module:function' or 'path/to/file.py:function' for {what}")
    return v


class ModelSpec(_Frozen):
    """Where the eager model comes from, and the preprocessing it was trained with."""

    factory: str = Field(description="'package.module:function' or 'file.py:function'")
    weights: Path
    task: str = Field(
        default="classification",
        description="what the model answers: classification (one class per row), multilabel, regression, "
                    "detection or segmentation; the module of pipeline/tasks/ that reads the labels, decodes "
                    "the answers, compares and gates them",
    )
    num_classes: int = Field(
        ge=1, description="classification: the classes (at least 2); multilabel: the labels; regression: the "
                          "model's outputs (one per target)")
    class_names: tuple[str, ...] | None = None
    threshold: float = Field(
        default=0.5, gt=0, lt=1,
        description="multilabel: a label is present when its score (the sigmoid of its logit) is at least this")
    preprocess: str | None = Field(
        default=None,
        description="reference preprocessing: 'file.py:function' taking what the worker hands the handler "
                    "(bytes, str or parsed JSON) and returning one row's input tensor; "
                    "'builtin:image_classifier' for TorchServe's image transforms",
    )
    collate: str | None = Field(
        default=None,
        description="'file.py:function' given the list of per-row inputs of model.preprocess, returning the "
                    "model's batched input (a tensor, a tuple for forward(*x), a dict for forward(**x)); "
                    "default: each tensor stacked, and rows whose shapes differ scored one at a time",
    )

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        from pipeline.tasks import registry  # the registry names the tasks; the spec does not restate them

        if v not in registry.TASKS:
            raise ValueError(registry.unknown_task(v))
        return v

    @field_validator("factory")
    @classmethod
    def _factory_ref(cls, v: str) -> str:
        return _check_callable_ref(v, "model.factory")

    @field_validator("preprocess")
    @classmethod
    def _preprocess_ref(cls, v: str | None) -> str | None:
        if v is None or v.startswith("builtin:"):
            return v
        return _check_callable_ref(v, "model.preprocess")

    @field_validator("collate")
    @classmethod
    def _collate_ref(cls, v: str | None) -> str | None:
        return v if v is None else _check_callable_ref(v, "model.collate")

    @model_validator(mode="after")
    def _names_match_classes(self) -> "ModelSpec":
        if self.class_names is not None:
            if len(self.class_names) != self.num_classes:
                raise ValueError(
                    f"class_names has {len(self.class_names)} names but num_classes is {self.num_classes}"
                )
            dup = sorted({n for n in self.class_names if self.class_names.count(n) > 1})
            if dup:
                raise ValueError(f"class_names must be unique, {dup} appear more than once")
        return self


class DatasetSpec(_Frozen):
    """The labeled rows to score, and what a client sends for each."""

    kind: Literal["tensor", "image", "text", "json"] = Field(
        default="tensor",
        description="tensor: numeric columns sent as JSON; image: files sent as raw bytes; "
                    "text: a text column sent as UTF-8; json: one JSON object per row",
    )
    path: Path = Field(description="CSV or Parquet manifest; for kind image also an ImageFolder-style folder")
    label_column: str = "label"
    label_columns: tuple[str, ...] = Field(
        default=(),
        description="multilabel: one 0/1 column per label; regression: one numeric column per target (model order); "
                    "instead of label_column",
    )
    id_column: str = "id"
    feature_columns: tuple[str, ...] | None = Field(
        default=None, description="tensor: the numeric columns; json: the named fields of each record"
    )
    input_shape: tuple[int, ...] | None = Field(
        default=None, description="shape of one row's tensor, e.g. [1, 8, 8]; required for kind tensor"
    )
    path_column: str = Field(default="path", description="image manifests: file path relative to the manifest")
    text_column: str = Field(default="text", description="kind text: the column holding each row's text")
    json_column: str | None = Field(
        default=None, description="kind json: a column holding each row's JSON document (else feature_columns)"
    )
    train_path: Path | None = Field(default=None, description="training rows, for the leakage check")
    annotations: Path | None = Field(
        default=None, description="model.task detection: a COCO annotations JSON with the rows' boxes, joined on "
                                  "the image file name (else label_column holds a JSON list of boxes per row)")
    chunk_rows: int = Field(default=256, ge=1, le=65536, description="rows held in memory at once")

    @field_validator("input_shape")
    @classmethod
    def _positive_dims(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is not None and (not v or any(d <= 0 for d in v)):
            raise ValueError("expected a non-empty list of positive integers")
        return v

    @model_validator(mode="after")
    def _kind_fields(self) -> "DatasetSpec":
        if self.kind == "tensor" and self.input_shape is None:
            raise ValueError("dataset.input_shape is required for kind tensor (e.g. [30] or [1, 8, 8])")
        if self.kind == "json" and self.json_column is None and not self.feature_columns:
            raise ValueError("kind json needs dataset.feature_columns (the record's fields) or dataset.json_column")
        return self


class HandlerSpec(_Frozen):
    """The handler the .mar ships: one of this project's, a TorchServe built-in, or a file."""

    name: str = Field(
        default="tensor_classifier",
        description="a handler of this project (tensor_classifier), a TorchServe built-in "
                    "(image_classifier, base_handler, ...), a path to a .py file, or 'path/file.py:function' "
                    "(TorchServe's --handler file:function: a module-level function is the entry point)",
    )
    extra_files: tuple[Path, ...] = Field(
        default=(), description="label maps, vocabularies, configs, weights the handler loads itself; a folder "
                                "(e.g. a Hugging Face model folder) is packed as its contents, as the archiver does")
    config: Path | None = Field(
        default=None, description="the handler's own model-config.yaml (the archiver's --config-file, "
                                  "context.model_yaml_config); the serving keys the tool writes are added to it")
    requirements: Path | None = Field(
        default=None, description="requirements.txt packed into the .mar; checked, never installed"
    )
    probes: bool = Field(default=True, description="send variants of a row that real clients send "
                                                   "(other image modes, empty text, a missing field, ...)")

    @field_validator("name")
    @classmethod
    def _function_ref(cls, v: str) -> str:
        file, sep, func = v.rpartition(":")
        if sep and file.endswith(".py") and not func.isidentifier():
            raise ValueError("expected 'path/file.py:function' with a Python function name after the colon")
        return v

    @property
    def is_file(self) -> bool:
        return "/" in self.name or self.file.endswith(".py")

    @property
    def file(self) -> str:
        """The handler's file (or name) without a ``:function`` suffix."""
        file, sep, _ = self.name.rpartition(":")
        return file if sep and file.endswith(".py") else self.name

    @property
    def function(self) -> str | None:
        """The module-level function named by ``file.py:function`` (TorchServe's entry point), or None."""
        file, sep, func = self.name.rpartition(":")
        return func if sep and file.endswith(".py") else None


class ExportSpec(_Frozen):
    """How the eager model becomes the artefact inside the .mar."""

    mode: Literal["script", "trace", "export", "eager"] = Field(
        default="script",
        description="script | trace (TorchScript), export (torch.export + AOTInductor), "
                    "eager (the model file and its state_dict, as TorchServe's --model-file)",
    )
    probe: bool = Field(default=True, description="also check batch sizes and extreme inputs")
    probe_value_range: tuple[float, float] | None = Field(
        default=None, description="[low, high] of valid input values; default: the dataset's range"
    )
    optimize: bool = Field(default=False, description="try freeze + optimize_for_inference (script only)")
    latency_repeats: int = Field(default=200, ge=10, description="the most timed calls per model and batch size")
    latency_budget_s: float = Field(
        default=10.0, gt=0, le=3600,
        description="seconds of latency timing per timed model (eager and exported), over every batch size; "
                    "timing stops at latency_repeats calls or at the budget, whichever comes first",
    )


class AnswerMapping(_Frozen):
    """Where a custom answer keeps its figures: dotted paths into the JSON, e.g. 'result.scores'."""

    prediction: str | None = Field(default=None, description="path to the predicted class index")
    label: str | None = Field(default=None, description="path to the predicted class name")
    probabilities: str | None = Field(
        default=None, description="path to a list of probabilities or a {label: probability} object"
    )
    logits: str | None = Field(default=None, description="path to a list of logits")

    @model_validator(mode="after")
    def _something_to_read(self) -> "AnswerMapping":
        if not (self.prediction or self.label or self.probabilities or self.logits):
            raise ValueError("answers.mapping needs at least one of prediction, label, probabilities, logits")
        return self


class AnswersSpec(_Frozen):
    """What the served answers look like and what each must carry."""

    format: Literal["auto", "package_validate", "topk", "logits", "mapping", "index", "label", "top1",
                    "label_scores", "custom"] = Field(
        default="auto",
        description="auto: from the handler or the first answer; package_validate: this project's JSON; topk: the "
                    "built-in classifiers' {label: probability}; logits: a list of numbers; mapping: paths you "
                    "declare; index: a bare class index; label: a bare class label; top1: {label, confidence}; "
                    "label_scores: [{label, score}, ...] as Hugging Face pipelines answer; custom: answers.decode",
    )
    top_k: int | Literal["all"] | None = Field(
        default=None, description="classes every answer must carry; default: what the format promises"
    )
    envelope: Literal["none", "kserve_v1", "kserve_v2"] = Field(
        default="none", description="KServe v1 or v2 (Open Inference Protocol) requests and answers"
    )
    mapping: AnswerMapping | None = None
    decode: str | None = Field(
        default=None, description="'file.py:function' (or 'package.module:function') reading one answer body (the "
                                  "JSON document, or the raw text when it is not JSON) into a class index, a label "
                                  "or {index|label, probabilities?, logits?}; implies format custom")

    @model_validator(mode="before")
    @classmethod
    def _decode_means_custom(cls, data: Any) -> Any:
        # answers.decode with the default format is the custom format: one field is enough to say it
        if isinstance(data, dict) and data.get("decode") is not None and data.get("format", "auto") == "auto":
            return {**data, "format": "custom"}
        return data

    @field_validator("decode")
    @classmethod
    def _decode_ref(cls, v: str | None) -> str | None:
        return None if v is None else _check_callable_ref(v, "answers.decode")

    @field_validator("top_k")
    @classmethod
    def _top_k_positive(cls, v: int | str | None) -> int | str | None:
        if isinstance(v, int) and v < 1:
            raise ValueError("expected a whole number >= 1 or 'all'")
        return v

    @model_validator(mode="after")
    def _mapping_given(self) -> "AnswersSpec":
        if self.format == "mapping" and self.mapping is None:
            raise ValueError("answers.format mapping needs answers.mapping (where prediction, label, "
                             "probabilities sit in the answer)")
        if self.format == "custom" and self.decode is None:
            raise ValueError("answers.format custom needs answers.decode: file.py:function, the function that "
                             "reads one answer (or choose another answers.format)")
        if self.decode is not None and self.format != "custom":
            raise ValueError(f"answers.decode is read only by answers.format custom, but the format is "
                             f"{self.format!r}: remove answers.format (or set it to custom), or remove answers.decode")
        return self


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
    max_request_size: int = Field(default=6_553_500, ge=1024, description="TorchServe's max_request_size, bytes")
    env: dict[str, str] = Field(default_factory=dict, description="environment of TorchServe and its workers")
    secret_env: tuple[str, ...] = Field(
        default=(), description="names of your environment's variables that TorchServe and the handler must not "
                                "inherit, besides $PACKAGE_VALIDATE_TOKEN and names with TOKEN, SECRET, PASSWORD, "
                                "CREDENTIAL or KEY (torchserve/childenv.py)")
    ports: PortsSpec | None = None
    ts_config: Path | None = Field(
        default=None, description="your production config.properties (relative to the spec): the run serves it, "
                                  "with only the listeners, model store, models loaded, token authorization, model "
                                  "API, per-model installs and logs replaced, and lints it")

    @model_validator(mode="after")
    def _secret_not_set(self) -> "ServingSpec":
        both = sorted(set(self.secret_env) & set(self.env))
        if both:
            raise ValueError(f"{', '.join(both)}: listed in serving.secret_env and set in serving.env; a variable "
                             "is either withheld from TorchServe or given to it: remove it from one of them")
        return self


class ReplaySpec(_Frozen):
    """How the labeled rows are sent to the served model."""

    concurrency: int = Field(default=1, ge=1, le=256)
    warmup_requests: int = Field(default=20, ge=0)
    request_timeout_s: float = Field(default=30.0, gt=0)
    max_retries: int = Field(default=5, ge=0, description="retries of 'queue full' answers only")
    max_consecutive_timeouts: int = Field(
        default=3, ge=1, description="timeouts in a row that end the replay (a hung handler)"
    )
    rate: float | None = Field(default=None, gt=0, description="open-loop requests/s; default closed loop")
    headers: dict[str, str] = Field(default_factory=dict, description="extra request headers (e.g. a KServe host)")
    ca_file: Path | None = Field(default=None, description="CA bundle for an https --endpoint")


class TuneSpec(_Frozen):
    """``package-validate tune``: the ranges searched, the objective, the budget and the stability rule."""

    budget_s: float = Field(default=300.0, gt=0, description="measuring time of the guided search, seconds")
    p99_ms: float | None = Field(default=None, gt=0, description="the objective: client p99 at most this; default "
                                 "gate.max_served_p99_ms, and without either the knee of the frontier")
    workers: tuple[int, ...] = Field(default=(1, 2), min_length=1)
    batch_sizes: tuple[int, ...] = Field(default=(1, 2, 4, 8), min_length=1)
    max_batch_delays_ms: tuple[int, ...] = Field(default=(5, 20), min_length=1)
    concurrency: tuple[int, ...] = Field(default=(1, 2, 4, 8, 16), min_length=1)
    threads: tuple[int, ...] = Field(default=(), description="the worker's torch threads (OMP_NUM_THREADS); "
                                     "empty: the environment's own")
    window_requests: int = Field(default=200, ge=1, description="requests per stability window (at least the rows)")
    warmup_requests: int = Field(default=50, ge=0, description="requests before a point's first window")
    stability_tolerance: float = Field(default=0.1, gt=0, lt=1,
                                       description="consecutive windows agree when throughput and p99 are within "
                                                   "this fraction of each other")
    max_windows: int = Field(default=6, ge=3, description="windows per point before it is reported unstable")
    head_to_head_rounds: int = Field(default=3, ge=1, description="after the searches: rounds in which the default, "
                                     "the recommendation and the grid's best are measured again, interleaved")
    apply: Literal["auto", "restart", "register"] = Field(
        default="auto", description="how a point is served: restart TorchServe, re-register the model (model API "
                                    "on for tune only), or auto (both measured once, the faster kept)")

    @field_validator("workers", "batch_sizes", "concurrency", "threads")
    @classmethod
    def _positive(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(x < 1 for x in v):
            raise ValueError(f"every value must be >= 1, got {list(v)}")
        return tuple(sorted(set(v)))

    @field_validator("max_batch_delays_ms")
    @classmethod
    def _delays(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(x < 0 for x in v):
            raise ValueError(f"every delay must be >= 0 ms, got {list(v)}")
        return tuple(sorted(set(v)))


class MetricThreshold(_Frozen):
    """Limits on one metric of a candidate (exported, handled or served) against the baseline."""

    min: float | None = Field(default=None, ge=0, le=1)
    max_drop: float | None = Field(default=None, ge=0,
                                   description="absolute, e.g. 0.01 = 1 point (a loss: its rise, in the target's units)")
    max_relative_drop: float | None = Field(default=None, ge=0, le=1)


def _default_metric_thresholds() -> dict[str, MetricThreshold]:
    return {m: MetricThreshold(max_drop=DEFAULT_MAX_METRIC_DROP) for m in GATED_METRICS}


def default_thresholds(task) -> dict[str, MetricThreshold]:
    """The seeds' "within 1 point of the baseline" for a task's default metrics: 0.01 for a score in [0, 1];
    for a loss in the target's units (MAE, RMSE), a rise of at most 1% of the baseline's (an absolute 0.01
    would be loose for targets near 0.001 and below float32's noise for targets near 1e6)."""
    units = getattr(task, "in_target_units", frozenset())
    return {m: MetricThreshold(max_relative_drop=DEFAULT_MAX_METRIC_DROP) if m in units
            else MetricThreshold(max_drop=DEFAULT_MAX_METRIC_DROP) for m in task.default_metrics}


class GateSpec(_Frozen):
    """What a candidate must satisfy for the run to pass."""

    metrics: dict[str, MetricThreshold] = Field(default_factory=_default_metric_thresholds)
    max_output_diff: float = Field(
        default=DEFAULT_OUTPUT_ATOL, gt=0,
        description="largest allowed |candidate - baseline| of any logit or probability, every stage",
    )
    value_rtol: float = Field(
        default=1e-5, ge=0,
        description="regression: a value is the baseline's when within max_output_diff + value_rtol * |baseline| "
                    "(float32 values carry about 7 digits)",
    )
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
    probes: bool = Field(default=True, description="failed export and handler probes fail the gate")
    allow_not_evaluable: tuple[str, ...] = Field(
        default=(), description="checks that may show as WARN when the answers cannot support them"
    )
    lint: tuple[Literal["high", "medium", "low", "info"], ...] = Field(
        default=("high",), description="severities of config and archive lint findings that fail the gate ([] : none)")
    metric_classes: Literal["present", "all"] = Field(
        default="present",
        description="classes the macro and weighted metrics average over: those present among the eval labels "
                    "(sklearn's labels=), or all of the model's (a class without rows then makes them undefined)",
    )

    @model_validator(mode="after")
    def _positive_class_needed(self) -> "GateSpec":
        if (self.min_positive_recall is not None or self.min_positive_precision is not None) and (
            self.positive_class is None
        ):
            raise ValueError("min_positive_recall/min_positive_precision need gate.positive_class")
        return self


def _handler_shorthand(v: Any) -> Any:
    return {"name": v} if isinstance(v, str) else v


class Spec(_Frozen):
    """One validation: the model, its data, how to export, archive, serve, replay and gate it."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$", description="TorchServe model name")
    version: str = Field(default="1.0", pattern=r"^[0-9A-Za-z.\-_]+$")
    model: ModelSpec
    dataset: DatasetSpec
    export: ExportSpec = ExportSpec()
    handler: HandlerSpec = HandlerSpec()
    answers: AnswersSpec = AnswersSpec()
    serving: ServingSpec = ServingSpec()
    replay: ReplaySpec = ReplaySpec()
    gate: GateSpec = GateSpec()
    tune: TuneSpec = TuneSpec()
    timeout_s: float = Field(default=DEFAULT_TIMEOUT_S, gt=0, description="deadline of the whole run")
    spec_path: Path | None = Field(default=None, exclude=True)

    @field_validator("handler", mode="before")
    @classmethod
    def _handler_str(cls, v: Any) -> Any:
        return _handler_shorthand(v)

    @model_validator(mode="after")
    def _task_fields(self) -> "Spec":
        """The task's own rules: classification needs two classes; gate.metrics names the task's metrics
        (``tasks/<task>.py``), and a task other than classification gates its own by default."""
        from pipeline.tasks.registry import task_for

        task = self.model.task
        if task == "classification" and self.model.num_classes < 2:
            raise ValueError(f"model.num_classes is {self.model.num_classes}: a classifier has at least 2 classes "
                             "(a model with one output is task: regression)")
        t = task_for(task)
        allowed = t.gated_metrics
        unknown = sorted(set(self.gate.metrics) - set(allowed))
        if unknown and "metrics" not in self.gate.model_fields_set and task != "classification":
            object.__setattr__(self, "gate", self.gate.model_copy(update={"metrics": default_thresholds(t)}))
        elif unknown:
            raise ValueError(f"unknown metric(s) {unknown}; allowed: {list(allowed)}"
                             + (f" (model.task: {task})" if task != "classification" else ""))
        for metric, th in self.gate.metrics.items():
            if metric in getattr(t, "lower_is_better", ()) and th.min is not None:
                raise ValueError(f"gate.metrics.{metric}.min: {metric} is a loss (lower is better), a floor does not "
                                 f"bound it; limit its rise with max_drop (in the target's units) or max_relative_drop")
            if metric not in getattr(t, "in_target_units", ()) and th.max_drop is not None and th.max_drop > 1:
                raise ValueError(f"gate.metrics.{metric}.max_drop is {th.max_drop:g}: {metric} lies in [0, 1], so a "
                                 "drop above 1 bounds nothing (0.01 = 1 point)")
        return self

    @model_validator(mode="after")
    def _positive_class_in_range(self) -> "Spec":
        pc = self.gate.positive_class
        if pc is not None and pc >= self.model.num_classes:
            raise ValueError(
                f"gate.positive_class is {pc} but the model has {self.model.num_classes} classes "
                f"(0..{self.model.num_classes - 1})"
            )
        k = self.answers.top_k
        if isinstance(k, int) and k > self.model.num_classes:
            raise ValueError(f"answers.top_k is {k} but the model has {self.model.num_classes} classes")
        return self

    @property
    def class_labels(self) -> tuple[str, ...]:
        return self.model.class_names or tuple(str(i) for i in range(self.model.num_classes))


def _resolve(base: Path, p: Path | None) -> Path | None:
    if p is None:
        return None
    p = Path(p).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def _resolve_ref(base: Path, ref: str | None) -> str | None:
    """'file.py:fn' becomes '/abs/file.py:fn'; 'package.module:fn' and 'builtin:x' stay."""
    if ref is None or ref.startswith("builtin:"):
        return ref
    module, _, fn = ref.rpartition(":")
    if module.endswith(".py"):
        return f"{_resolve(base, Path(module))}:{fn}"
    return ref


def _moved_fields(data: dict) -> list[str]:
    out = []
    for (section, field), where in _MOVED.items():
        if isinstance(data.get(section), dict) and field in data[section]:
            out.append(f"{section}.{field}: moved to {where}")
    return out


def _format_validation_error(err: ValidationError, source: str, moved: list[str]) -> ConfigError:
    moved_locs = {m.split(":", 1)[0] for m in moved}
    lines = list(moved)
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        if loc in moved_locs:
            continue
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
    moved = _moved_fields(data)
    try:
        spec = Spec.model_validate(data)
    except ValidationError as e:
        raise _format_validation_error(e, source, moved) from e
    if moved:
        raise ConfigError(f"{source}: {len(moved)} invalid field(s). Fix the spec and re-run.", details=moved)
    h = spec.handler
    handler = h.model_copy(update={
        "name": (str(_resolve(base_dir, Path(h.file))) + (f":{h.function}" if h.function else "")
                 if h.is_file else h.name),
        "extra_files": tuple(_resolve(base_dir, p) for p in h.extra_files),
        "requirements": _resolve(base_dir, h.requirements),
        "config": _resolve(base_dir, h.config),
    })
    model = spec.model.model_copy(update={
        "weights": _resolve(base_dir, spec.model.weights),
        "factory": _resolve_ref(base_dir, spec.model.factory),
        "preprocess": _resolve_ref(base_dir, spec.model.preprocess),
        "collate": _resolve_ref(base_dir, spec.model.collate),
    })
    dataset = spec.dataset.model_copy(update={
        "path": _resolve(base_dir, spec.dataset.path),
        "train_path": _resolve(base_dir, spec.dataset.train_path),
        "annotations": _resolve(base_dir, spec.dataset.annotations),
    })
    replay = spec.replay.model_copy(update={"ca_file": _resolve(base_dir, spec.replay.ca_file)})
    answers = spec.answers.model_copy(update={"decode": _resolve_ref(base_dir, spec.answers.decode)})
    update = {"model": model, "dataset": dataset, "handler": handler, "replay": replay, "answers": answers}
    if spec.serving.ts_config is not None:
        update["serving"] = spec.serving.model_copy(update={"ts_config": _resolve(base_dir, spec.serving.ts_config)})
    return spec.model_copy(update=update)


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
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e}). Save the spec as UTF-8.") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}. Fix the syntax and re-run.") from e
    spec = parse_spec(data, base_dir=path.resolve().parent, source=str(path))
    return spec.model_copy(update={"spec_path": path.resolve()})


def is_finite(x: float | None) -> bool:
    return x is not None and not math.isnan(x) and not math.isinf(x)
