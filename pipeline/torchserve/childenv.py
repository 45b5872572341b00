"""The environment of every child process that runs user code: the caller's, minus its secrets.

TorchServe (its launcher, Java and every worker) and the handled stage's child run the
archive's handler, which can read and print ``os.environ``; what they print lands in the run
folder that CI uploads. So they inherit the caller's environment without:

- ``$PACKAGE_VALIDATE_TOKEN`` (the token of an ``--endpoint`` server; the tool alone uses it),
- the names the spec lists in ``serving.secret_env`` (exact names, e.g. ``DATABASE_URL``),
- names that look like secrets (case-insensitive): containing ``TOKEN``, ``SECRET``,
  ``PASSWORD``, ``PASSWD``, ``CREDENTIAL`` or ``APIKEY``, or ``KEY`` as a whole ``_``-separated
  word (``API_KEY``, ``AWS_ACCESS_KEY_ID``, ``KEY``; not ``MONKEY`` or ``KEYBOARD``). The
  ``KEY`` and ``CREDENTIAL`` rules catch the usual cloud names (``*_API_KEY``,
  ``GOOGLE_APPLICATION_CREDENTIALS``); a public ``*_GPG_KEY`` fingerprint is withheld too,
  which costs nothing. A secret under another name (a URL with a password in it) belongs in
  ``serving.secret_env``.

The values the spec sets in ``serving.env`` always arrive in TorchServe, whatever their names:
the user wrote them there for it (and the spec, with them, is in the report anyway). A
name withheld is withheld as the caller's value only; the report lists the names, never values.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Iterable, Mapping

TOKEN_ENV = "PACKAGE_VALIDATE_TOKEN"  # the inference token of an --endpoint server
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|APIKEY|(?:^|_)KEY(?:_|$)", re.IGNORECASE)


@dataclass(frozen=True)
class ChildEnv:
    """A child's environment and the caller's variables left out of it (sorted names)."""

    env: dict[str, str]
    withheld: tuple[str, ...]


def is_secret_name(name: str, secret_env: Iterable[str] = ()) -> bool:
    """Whether the caller's variable ``name`` stays with the tool (see the module's rules)."""
    return name == TOKEN_ENV or name in set(secret_env) or bool(SECRET_NAME.search(name))


def withheld_names(secret_env: Iterable[str] = (), base: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The names of ``base`` (default ``os.environ``) that no child process inherits."""
    listed = set(secret_env)
    base = os.environ if base is None else base
    return tuple(sorted(n for n in base if is_secret_name(n, listed)))


def child_env(secret_env: Iterable[str], overrides: Mapping[str, str],
              base: Mapping[str, str] | None = None) -> ChildEnv:
    """The environment of a child that runs user code: ``base`` (default ``os.environ``) minus its
    secrets, then ``overrides`` (the tool's own settings and the spec's ``serving.env``) on top.

    Every child process the tool starts to run user code gets its environment from here.
    """
    base = os.environ if base is None else base
    withheld = withheld_names(secret_env, base)
    hidden = set(withheld)
    env = {k: v for k, v in base.items() if k not in hidden}
    env.update(overrides)
    return ChildEnv(env=env, withheld=withheld)
