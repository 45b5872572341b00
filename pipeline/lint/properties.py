"""TorchServe's config.properties, read as Java's ``java.util.Properties.load`` reads it.

ISO-8859-1 text; a line whose first non-blank character is ``#`` or ``!`` is a comment; the
key ends at the first unescaped ``=``, ``:`` or blank, then blanks and one ``=`` or ``:`` are
skipped; a line ending in an odd number of backslashes continues on the next line (its leading
blanks dropped); ``\\t \\n \\r \\f \\uXXXX`` are escapes and a backslash before any other
character keeps that character. The last occurrence of a key wins, as in Java. ``models=`` is a
JSON value (TorchServe's per-model settings), read by ``models_setting``.

Only the standard library is imported here: ``package-validate lint`` must start in well under
a second.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import ConfigError

_BLANK = " \t\f"
_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


@dataclass(frozen=True)
class Properties:
    """A parsed config.properties: each key's value and the line it starts on (1-based)."""

    values: dict[str, str]
    lines: dict[str, int] = field(default_factory=dict)
    source: str = "config.properties"

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.values.get(key, default)

    def flag(self, key: str, default: bool = False) -> bool:
        """A boolean as Java's ``Boolean.parseBoolean`` reads it: only 'true' (any case) is true."""
        v = self.values.get(key)
        return default if v is None else v.strip().lower() == "true"

    def where(self, key: str) -> str:
        return f"{self.source}:{self.lines[key]}" if key in self.lines else self.source


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Each logical line (continuations joined) with the number of its first physical line."""
    out: list[tuple[int, str]] = []
    physical = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    i = 0
    while i < len(physical):
        start, line = i + 1, physical[i].lstrip(_BLANK)
        i += 1
        if not line or line[0] in "#!":
            continue
        while _continues(line) and i < len(physical):
            line = line[:-1] + physical[i].lstrip(_BLANK)
            i += 1
        if _continues(line):  # a continuation on the last line: Java drops the backslash
            line = line[:-1]
        out.append((start, line))
    return out


def _continues(line: str) -> bool:
    n = len(line) - len(line.rstrip("\\"))
    return n % 2 == 1


def _unescape(s: str, where: str) -> str:
    out, i = [], 0
    while i < len(s):
        ch = s[i]
        if ch != "\\" or i + 1 >= len(s):
            out.append(ch)
            i += 1
            continue
        nxt = s[i + 1]
        if nxt == "u":
            digits = s[i + 2:i + 6]
            if len(digits) != 4 or any(c not in "0123456789abcdefABCDEF" for c in digits):
                raise ConfigError(f"{where}: malformed \\uXXXX escape {s[i:i + 6]!r}; Java refuses the whole file. "
                                  "Write four hex digits after \\u, or double the backslash.")
            out.append(chr(int(digits, 16)))
            i += 6
            continue
        out.append(_ESCAPES.get(nxt, nxt))
        i += 2
    # \uXXXX pairs of UTF-16 surrogates make one character, as Java's String does
    return "".join(out).encode("utf-16", "surrogatepass").decode("utf-16")


def _split(line: str) -> tuple[str, str]:
    i = 0
    while i < len(line):
        ch = line[i]
        if ch == "\\":
            i += 2
            continue
        if ch in "=:" or ch in _BLANK:
            break
        i += 1
    key, rest = line[:i], line[i:]
    rest = rest.lstrip(_BLANK)
    if rest[:1] in ("=", ":"):
        rest = rest[1:].lstrip(_BLANK)
    return key, rest


def parse_properties(text: str, source: str = "config.properties") -> Properties:
    """The keys and values of a properties text (see the module's docstring for the rules).

    Raises:
        ConfigError: a malformed ``\\uXXXX`` escape (Java refuses the file too).
    """
    values: dict[str, str] = {}
    lines: dict[str, int] = {}
    for n, line in _logical_lines(text):
        raw_key, raw_value = _split(line)
        where = f"{source}:{n}"
        key = _unescape(raw_key, where)
        values[key] = _unescape(raw_value, where)
        lines[key] = n
    return Properties(values=values, lines=lines, source=source)


def load_properties(path: Path) -> Properties:
    """A config.properties file, read as ISO-8859-1 like Java does.

    Raises:
        ConfigError: the file is missing or unreadable, or has a malformed escape.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"TorchServe config {path}: cannot be read ({e.strerror or e}). Pass the path of your "
                          "config.properties (--ts-config or serving.ts_config, relative to the spec).") from e
    if b"\0" in data:
        raise ConfigError(f"TorchServe config {path}: a binary file, not a config.properties. Pass the text file "
                          "TorchServe reads with --ts-config.")
    return parse_properties(data.decode("latin-1"), source=str(path))


def models_setting(props: Properties) -> dict[str, dict[str, dict]]:
    """``models=``: model name -> version -> settings (batchSize, maxBatchDelay, minWorkers, ...).

    Raises:
        ConfigError: the value is not a JSON object of objects of objects (TorchServe fails to start).
    """
    raw = props.get("models")
    if raw is None or not raw.strip():
        return {}
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise ConfigError(f"{props.where('models')}: models= is not valid JSON ({e}); TorchServe fails to start on "
                          'it. Write models={"NAME": {"1.0": {"batchSize": 4, ...}}}, each line but the last '
                          "ending in a backslash.") from e
    ok = isinstance(doc, dict) and all(isinstance(v, dict) and all(isinstance(s, dict) for s in v.values())
                                       for v in doc.values())
    if not ok:
        raise ConfigError(f"{props.where('models')}: models= must map each model name to versions and each version "
                          'to its settings, e.g. {"NAME": {"1.0": {"batchSize": 4}}}; got '
                          f"{raw.strip()[:80]!r}.")
    return doc


def model_settings(props: Properties, model: str, version: str | None = None) -> tuple[str | None, dict]:
    """The ``models=`` settings TorchServe applies to ``model``: (version used, settings), or (None, {}).

    TorchServe looks up the model name, then the archive's version; without a version given, the
    entry marked ``defaultVersion`` (else the only one) is taken."""
    versions = models_setting(props).get(model) or {}
    if version is not None and version in versions:
        return version, versions[version]
    if version is None:
        marked = [v for v, s in versions.items() if s.get("defaultVersion") is True]
        if marked or len(versions) == 1:
            v = (marked or list(versions))[0]
            return v, versions[v]
    return None, {}
