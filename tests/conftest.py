import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


import signal as _signal

import pytest as _pytest


@_pytest.fixture(autouse=True)
def _signal_handlers_restored():
    """Each test starts with the handlers the one before it found: a test that stops a run half way
    (``runner._disarm`` outside ``_guarded``) must not leave a Ctrl-C that only logs to the next one."""
    watched = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGALRM)
    before = {sig: _signal.getsignal(sig) for sig in watched}
    yield
    _signal.setitimer(_signal.ITIMER_REAL, 0)
    for sig, handler in before.items():
        _signal.signal(sig, handler if handler is not None else _signal.SIG_DFL)
