import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import leftover_processes

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None):
    """Run the real CLI in a subprocess; return the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd or ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture
def no_leftovers(tmp_path):
    """Fails the test if any TorchServe, Java or worker process of its runs is still alive."""
    yield tmp_path
    left = leftover_processes(tmp_path)
    assert not left, f"processes left running: {left}"
