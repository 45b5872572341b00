"""The layout's rules, checked rather than remembered: import-linter contracts and who may print."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRINTING = {"cli.py", "bench.py", "bench_scale.py", "__main__.py"}  # the edge: parses arguments, prints, exits


def test_import_linter_contracts_are_kept():
    lint = Path(sys.executable).parent / "lint-imports"
    res = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "0 broken" in res.stdout


def test_only_the_edge_prints():
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        if path.name in PRINTING or "worker_site" in path.parts:
            continue
        tree = ast.parse(path.read_text())
        prints = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "print"]
        assert not prints, f"{path.relative_to(ROOT)} prints at lines {prints}; use logging (or the console, at the edge)"
