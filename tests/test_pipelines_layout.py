"""No pipeline imports another: what they share lives in shared modules of ``pipelines/``."""
import ast
from pathlib import Path

from jobs import cli

PIPELINES = Path(__file__).parent.parent / "pipelines"


def imported_modules(path):
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_pipeline_imports_another():
    pipelines = {module for module, _ in cli.COMMANDS.values() if module.startswith("pipelines.")}
    assert {"pipelines.build_memory", "pipelines.make_train_shards"} <= pipelines
    for module in sorted(pipelines):
        path = PIPELINES / f"{module.split('.', 1)[1]}.py"
        assert imported_modules(path) & (pipelines - {module}) == set(), module
