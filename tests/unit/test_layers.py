"""The layer rules of STYLE.md, checked rather than remembered."""

import ast
from pathlib import Path

PIPELINE = Path(__file__).resolve().parents[2] / "pipeline"
ENTRY_POINTS = {"cli", "__main__", "bench"}  # may parse arguments, print and exit
ORCHESTRATOR = {"run"}
STAGES = {"baseline", "export", "archive", "serve", "replay", "compare", "gate", "report"}


def _modules():
    for path in sorted(PIPELINE.rglob("*.py")):
        yield path.stem, ast.parse(path.read_text())


def _imports(tree):
    """pipeline imports, except the type-only ones under ``if TYPE_CHECKING:``."""
    type_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                 and getattr(block.test, "id", "") == "TYPE_CHECKING" for n in ast.walk(block)}
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline"):
            yield node.module.split(".")[-1] if "." in node.module else node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("pipeline."):
                    yield a.name.split(".")[-1], []


def test_only_entry_points_import_cli_or_run_and_print():
    for name, tree in _modules():
        if name in ENTRY_POINTS:
            continue
        imported = {m for m, _ in _imports(tree)}
        assert "cli" not in imported, f"pipeline/{name}.py imports cli"
        if name not in ORCHESTRATOR:
            assert "run" not in imported, f"pipeline/{name}.py imports the orchestrator"
        prints = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "print"]
        assert not prints, f"pipeline/{name}.py prints at lines {prints}; use logging"


def test_stages_import_other_stages_only_for_result_types():
    allowed_suffixes = ("Result", "Outputs", "Comparison", "Check", "Run", "Handle", "Config")
    for name, tree in _modules():
        if name not in STAGES:
            continue
        for module, names in _imports(tree):
            if module in STAGES and module != name:
                bad = [n for n in names if not n.endswith(allowed_suffixes)]
                assert not bad, f"pipeline/{name}.py imports {bad} from stage {module}"
