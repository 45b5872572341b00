"""The lint's rules: each a row of data (id, severity, reference, fix) and a function finding it.

A rule's function gets the ``LintInput`` (the config.properties, the archive's model-config.yaml
and requirements, the dataset's largest body, the served model's name and version) and yields
``(key, value, message)`` for each place it fires; ``lint`` turns those into ``Finding`` rows
carrying the rule's severity, reference and fix. Facts are TorchServe 0.12.0's (ConfigManager,
ModelManager.createModel, ModelServer.initModelStore).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterator
from urllib.parse import urlsplit

from pipeline.errors import ConfigError
from pipeline.lint.properties import Properties, models_setting

SEVERITIES = ("high", "medium", "low", "info")
DEFAULT_FAIL_ON = ("high",)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
# TorchServe 0.12's defaults where config.properties leaves a key out.
DEFAULTS = {
    "inference_address": "http://127.0.0.1:8080",
    "management_address": "http://127.0.0.1:8081",
    "metrics_address": "http://127.0.0.1:8082",
    "grpc_inference_address": "127.0.0.1",
    "grpc_management_address": "127.0.0.1",
    "allowed_urls": "file://.*|http(s)?://.*",
    "max_request_size": "6553500",
    "max_response_size": "6553500",
}
# Keys TorchServe 0.12 reads (ConfigManager's constants, ts/model_server.py's vmargs and plugins_path).
KNOWN_KEYS = frozenset("""
debug inference_address management_address metrics_address load_models blacklist_env_vars default_workers_per_model
default_response_timeout default_startup_timeout unregister_model_timeout number_of_netty_threads netty_client_threads
job_queue_size number_of_gpu metrics_config metrics_mode model_metrics_auto_detect disable_system_metrics ipex_enable
cpu_launcher_enable cpu_launcher_args ipex_gpu_enable async_logging cors_allowed_origin cors_allowed_methods
cors_allowed_headers decode_input_request keystore keystore_pass keystore_type certificate_file private_key_file
max_request_size max_response_size limit_max_image_pixels default_service_handler service_envelope model_server_home
model_store prefer_direct_buffer allowed_urls install_py_dep_per_model enable_metrics_api grpc_inference_address
grpc_management_address grpc_inference_port grpc_management_port grpc_inference_max_connection_age_ms
grpc_management_max_connection_age_ms grpc_inference_max_connection_age_grace_ms
grpc_management_max_connection_age_grace_ms enable_grpc_ssl initial_worker_port initial_distribution_port
workflow_store cpp_log_config ts_open_inference_protocol token_expiration_min ts_header_key_sequence_id
ts_header_key_sequence_start ts_header_key_sequence_end disable_token_authorization enable_model_api use_native_io
io_ratio metric_time_interval enable_envvars_config model_snapshot models version system_metrics_cmd
use_env_allowed_urls python vmargs plugins_path snapshot_store
""".split())
# model-config.yaml / models= keys whose archive value wins over models= (ModelManager.createModel,
# ModelServer.initModelStore: a value > 0 in the archive is taken, models= only when it is unset).
ARCHIVE_WINS = ("batchSize", "maxBatchDelay", "responseTimeout", "startupTimeout", "minWorkers", "maxWorkers")
KSERVE_ENVELOPES = ("kserve", "kservev2")


@dataclass(frozen=True)
class LintInput:
    """What the lint reads. ``props`` is the config.properties as TorchServe would get it."""

    props: Properties
    model_name: str | None = None
    model_version: str | None = None
    model_config: dict | None = None  # the archive's model-config.yaml (None: no archive given)
    requirements: tuple[str, ...] | None = None  # the archive's requirements file lines (None: none shipped)
    requirements_name: str = "requirements.txt"
    largest_body: int | None = None  # bytes of the dataset's largest request body (None: not known)
    largest_body_id: str | None = None


@dataclass(frozen=True)
class Finding:
    id: str
    severity: str
    key: str
    value: str | None
    message: str
    reference: str
    fix: str
    where: str = ""


@dataclass(frozen=True)
class Rule:
    id: str
    severity: str
    reference: str
    fix: str
    find: Callable[[LintInput], Iterator[tuple[str, str | None, str]]] = field(repr=False)


def host_of(address: str) -> str:
    """The host of a TorchServe address: ``http(s)://host:port`` or a bare host (gRPC)."""
    a = address.strip()
    if "://" in a:
        return (urlsplit(a).hostname or "").lower()
    return a.rsplit(":", 1)[0].strip("[]").lower() if a.count(":") == 1 else a.strip("[]").lower()


def is_loopback(address: str) -> bool:
    h = host_of(address)
    return h in ("localhost", "::1") or h.startswith("127.")


def _value(i: LintInput, key: str) -> str | None:
    v = i.props.get(key)
    return v if v is not None else DEFAULTS.get(key)


def allowed_patterns(i: LintInput) -> list[str]:
    """``allowed_urls`` as TorchServe splits it: a comma-separated list of regular expressions."""
    return [p.strip() for p in (_value(i, "allowed_urls") or "").split(",") if p.strip()]


def _full(pattern: str, url: str) -> bool:
    try:
        return re.fullmatch(pattern, url) is not None  # Java's Pattern.matches: the whole URL
    except re.error:
        return False


_FOREIGN = ("http://attacker.example/x.mar", "https://attacker.example/x.mar", "http://169.254.169.254/x.mar")


def open_patterns(i: LintInput) -> list[str]:
    """Patterns admitting a URL on a host nobody chose (any remote server can hand a .mar)."""
    return [p for p in allowed_patterns(i) if any(_full(p, u) for u in _FOREIGN)]


def _literal_prefix(pattern: str) -> str:
    out, k = [], 0
    while k < len(pattern):
        ch = pattern[k]
        if ch == "\\" and k + 1 < len(pattern) and not pattern[k + 1].isalnum():
            out.append(pattern[k + 1])
            k += 2
            continue
        if ch in ".^$*+?{}[]|()\\":
            break
        out.append(ch)
        k += 1
    return "".join(out).lstrip("^")


def dotdot_patterns(i: LintInput) -> list[str]:
    """Patterns a ``..`` segment walks out of: the prefix they pin, then ``../`` up and out of it."""
    hits, opened = [], set(open_patterns(i))  # a pattern open to any host is reported as that
    for p in allowed_patterns(i):
        if p in opened:
            continue
        prefix = _literal_prefix(p)
        if not prefix:
            continue
        sep = "" if prefix.endswith("/") else "/"
        probes = (f"{prefix}{sep}../../../../tmp/x.mar", f"{prefix}{sep}a/../../../../tmp/x.mar",
                  f"{prefix}..%2f..%2f..%2ftmp%2fx.mar")
        if any(_full(p, u) for u in probes):
            hits.append(p)
    return hits


# --- the rules' functions: each yields (key, value, message) ---

def _exposed(keys: tuple[str, ...], what: str):
    def find(i: LintInput):
        for key in keys:
            v = _value(i, key)
            if v is not None and not is_loopback(v):
                yield key, v, f"the {what} listens on {host_of(v) or v!r}, beyond this machine"
    return find


def _model_api_open(i: LintInput):
    if not i.props.flag("enable_model_api"):
        return
    opened = open_patterns(i)
    if opened:
        set_ = i.props.get("allowed_urls") is not None
        yield ("allowed_urls", i.props.get("allowed_urls") or DEFAULTS["allowed_urls"],
               f"enable_model_api=true and allowed_urls {'admits' if set_ else 'is unset, so TorchServe admits'} "
               f"URLs on any host ({', '.join(opened)}): anyone reaching the management API registers a .mar "
               "from a server of their choosing, and a .mar runs its handler's code")


def _model_api_dotdot(i: LintInput):
    if not i.props.flag("enable_model_api"):
        return
    for p in dotdot_patterns(i):
        yield "allowed_urls", p, f"the pattern {p!r} also matches URLs whose '..' segments climb out of the place it pins"


def _token_off(i: LintInput):
    if i.props.flag("disable_token_authorization"):
        yield ("disable_token_authorization", i.props.get("disable_token_authorization"),
               "token authorization is off: any client reaching a listener may call every API")


def _inference_everywhere(i: LintInput):
    for key in ("inference_address", "grpc_inference_address"):
        v = i.props.get(key)
        if v is not None and host_of(v) in ("0.0.0.0", "::", ""):
            yield key, v, "the inference API listens on every interface (normal inside a container)"


_PINNED = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[^\]]*\])?\s*===?\s*[^\s,;*]+\s*(;.*)?$")


def requirement_problems(lines: tuple[str, ...]) -> list[tuple[int, str, str]]:
    """(line number, line, what is missing) for each requirement not pinned with ``==`` or not hashed."""
    out = []
    for n, raw in enumerate(lines, 1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-") and not line.startswith("--hash"):
            out.append((n, line, "a pip option: pip runs with it at model load"))
            continue
        spec, _, rest = line.partition("--hash")
        missing = []
        if not _PINNED.match(spec.strip().rstrip("\\").strip()):
            missing.append("not pinned to one version (==)")
        if not rest:
            missing.append("no --hash")
        if missing:
            out.append((n, line, " and ".join(missing)))
    return out


def _unpinned(i: LintInput):
    if not i.props.flag("install_py_dep_per_model") or not i.requirements:
        return
    for n, line, why in requirement_problems(i.requirements):
        yield "install_py_dep_per_model", "true", f"{i.requirements_name} line {n} {line!r}: {why}"


def _settings(i: LintInput) -> tuple[str | None, dict]:
    if i.model_name is None:
        return None, {}
    versions = models_setting(i.props).get(i.model_name) or {}
    if i.model_version is not None:
        return (i.model_version, versions[i.model_version]) if i.model_version in versions else (None, {})
    if len(versions) == 1:
        v = next(iter(versions))
        return v, versions[v]
    return None, {}


def _batch_sizes(i: LintInput) -> list[tuple[str, int]]:
    """Each batch size asked for the model: the archive's, and ``models=``'s (where it is > 1)."""
    out = []
    mc = i.model_config or {}
    if isinstance(mc.get("batchSize"), int):
        out.append(("model-config.yaml batchSize", mc["batchSize"]))
    _, s = _settings(i)
    if isinstance(s.get("batchSize"), int):
        out.append(("models= batchSize", s["batchSize"]))
    if i.model_name is None:  # config alone: any model's models= batch size
        for name, versions in models_setting(i.props).items():
            for ver, st in versions.items():
                if isinstance(st.get("batchSize"), int):
                    out.append((f"models= {name} {ver} batchSize", st["batchSize"]))
    return out


def _kserve_batch(i: LintInput):
    env = (i.props.get("service_envelope") or "").strip().lower()
    if env not in KSERVE_ENVELOPES:
        return
    for where, n in _batch_sizes(i):
        if n > 1:
            yield "service_envelope", env, (f"service_envelope={env} with {where} {n}: the envelope answers only the "
                                            "first request of each server-side batch")


def _request_size(i: LintInput):
    if i.largest_body is None:
        return
    limit = _int(_value(i, "max_request_size"))
    if limit is not None and i.largest_body > limit:
        row = f" (row {i.largest_body_id})" if i.largest_body_id else ""
        yield ("max_request_size", str(limit), f"the dataset's largest request body{row} is {i.largest_body} bytes, "
                                                f"above max_request_size {limit}: TorchServe refuses it (HTTP 413)")


def _int(v) -> int | None:
    try:
        return int(str(v).strip())
    except (TypeError, ValueError):
        return None


def _archive_wins(i: LintInput):
    mc = i.model_config
    if mc is None or i.model_name is None:
        return
    _, s = _settings(i)
    for key in ARCHIVE_WINS:
        if key in s and _int(mc.get(key)) is not None and _int(mc[key]) > 0 and _int(s[key]) != _int(mc[key]):
            yield (f"models.{key}", str(s[key]), f"models= asks {key} {s[key]} for {i.model_name}, but the archive's "
                                                 f"model-config.yaml sets {mc[key]}, which TorchServe 0.12 serves")


def _models_elsewhere(i: LintInput):
    if i.model_name is None:
        return
    models = models_setting(i.props)
    if not models:
        return
    versions = models.get(i.model_name)
    if versions is None:
        yield "models", ", ".join(sorted(models)), (f"models= has settings for {', '.join(sorted(models))} but not for "
                                                    f"{i.model_name}, the model served: TorchServe ignores them")
    elif i.model_version is not None and i.model_version not in versions:
        yield ("models", f"{i.model_name}: {', '.join(sorted(versions))}",
               f"models= has settings for version(s) {', '.join(sorted(versions))} of {i.model_name}, but the archive "
               f"is version {i.model_version}: TorchServe looks them up by version and ignores them")


def _delay_zero(i: LintInput):
    mc = i.model_config or {}
    if mc.get("maxBatchDelay") == 0 and _int(mc.get("batchSize")) not in (None, 1):
        yield ("model-config.yaml maxBatchDelay", "0", "maxBatchDelay 0 in the archive counts as unset: TorchServe "
                                                        "waits up to 100 ms (or models='s value) to fill a batch")


def _unknown_keys(i: LintInput):
    for key in i.props.values:
        if key not in KNOWN_KEYS:
            yield key, i.props.get(key), f"{key} is not a key TorchServe 0.12 reads: it is ignored (a typo?)"


def _urls_open_unused(i: LintInput):
    if i.props.flag("enable_model_api") or i.props.get("allowed_urls") is not None:
        return
    yield "allowed_urls", None, ("allowed_urls is unset, so every URL is allowed; harmless while the model API is "
                                 "off, an open door the day enable_model_api is turned on")


RULES: tuple[Rule, ...] = (
    Rule("management-exposed", "high", "CVE-2023-43654 (ShellTorch)",
         "bind management_address (and grpc_management_address) to 127.0.0.1, or keep the port off any network "
         "clients reach", _exposed(("management_address", "grpc_management_address"), "management API")),
    Rule("metrics-exposed", "high", "CVE-2023-43654 (ShellTorch: the listeners TorchServe exposes by default)",
         "bind metrics_address to 127.0.0.1 and let the scraper reach it from the same host or pod",
         _exposed(("metrics_address",), "metrics API")),
    Rule("model-api-open-urls", "high", "CVE-2023-43654 (ShellTorch)",
         "set enable_model_api=false, or allowed_urls to your own store only, e.g. "
         "https://models\\.example\\.com/[A-Za-z0-9_-]+\\.mar", _model_api_open),
    Rule("model-api-dotdot", "high", "CVE-2024-35198 (serve PR #3082, fixed in 0.11.0)",
         "end each allowed_urls pattern with a character class that cannot hold '.' and '/' (e.g. "
         "[A-Za-z0-9_-]+\\.mar), and run TorchServe 0.11.0 or later", _model_api_dotdot),
    Rule("token-auth-disabled", "high", "serve #3163 (token authorization on by default since 0.11); "
                                        "docs/token_authorization_api.md",
         "remove disable_token_authorization (or set it to false) and give clients the inference key",
         _token_off),
    Rule("inference-all-interfaces", "info", "docs/configuration.md (inference_address)",
         "nothing inside a container; on a host, bind to the interface clients use", _inference_everywhere),
    Rule("unpinned-requirements", "medium", "docs/configuration.md (install_py_dep_per_model); "
                                            "CVE-2023-43654's supply-chain path",
         "pin every requirement with == and add --hash=sha256:..., or install the packages into the image and set "
         "install_py_dep_per_model=false", _unpinned),
    Rule("kserve-batching", "high", "serve #2158, #1302",
         "serve a KServe envelope with batchSize 1 (model-config.yaml and models=)", _kserve_batch),
    Rule("max-request-size", "high", "docs/configuration.md (max_request_size)",
         "raise max_request_size (and max_response_size) above the largest body clients send", _request_size),
    Rule("archive-overrides-models", "medium", "serve #2365",
         "set the value in the archive's model-config.yaml (serving: in the spec), or drop it from models=",
         _archive_wins),
    Rule("models-not-applied", "medium", "docs/configuration.md (models)",
         "key models= by the served model name and the archive's version", _models_elsewhere),
    Rule("batch-delay-zero", "low", "ModelManager.createModel (0.12.0)",
         "set maxBatchDelay to the wait you mean, at least 1 ms", _delay_zero),
    Rule("unknown-key", "low", "ConfigManager (0.12.0)", "fix the key's spelling or remove it", _unknown_keys),
    Rule("allowed-urls-unset", "info", "TorchServe logs a warning for the open default",
         "set allowed_urls to the places your models come from", _urls_open_unused),
)


def lint(i: LintInput) -> tuple[Finding, ...]:
    """Every rule's findings, most severe first (rule order within a severity)."""
    found = []
    for rule in RULES:
        for key, value, message in rule.find(i):
            base = key.split(".", 1)[0]  # models.batchSize: the models= line
            where = i.props.where(base) if base in i.props.values else ""
            found.append(Finding(rule.id, rule.severity, key, value, message, rule.reference, rule.fix, where))
    return tuple(sorted(found, key=lambda f: SEVERITIES.index(f.severity)))


def failing(findings: tuple[Finding, ...], fail_on: tuple[str, ...]) -> tuple[Finding, ...]:
    return tuple(f for f in findings if f.severity in fail_on)


def check_severities(names) -> tuple[str, ...]:
    bad = [n for n in names if n not in SEVERITIES]
    if bad:
        raise ConfigError(f"unknown lint severit{'ies' if len(bad) > 1 else 'y'} {bad}; choose from {list(SEVERITIES)}")
    return tuple(names)
