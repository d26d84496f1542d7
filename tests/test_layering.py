"""The import rules that keep the layers apart: a step never imports another step."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPONENTS = ROOT / "components"
STEPS = sorted(p.name for p in COMPONENTS.iterdir() if (p / "__init__.py").exists())


def imported_modules(path: Path, package: list[str] | None = None) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a file, function-level ones included.

    `package`: the file's package as name parts (default: from its place under components/),
    which relative imports start from.
    """
    package = package or ["medkfp", "components", *path.relative_to(COMPONENTS).parent.parts]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def step_of(module: str) -> str | None:
    """The step package a module name belongs to, or None."""
    for prefix in ("medkfp.components.", "components."):
        if module.startswith(prefix):
            step = module[len(prefix) :].split(".")[0]
            return step if step in STEPS else None
    return None


def test_the_steps_are_found():
    assert {"ingest", "preprocess", "balance", "train", "evaluate", "push"} <= set(STEPS)


def test_no_step_imports_another_step():
    crossings = []
    for step in STEPS:
        for path in sorted((COMPONENTS / step).rglob("*.py")):
            for line, module in imported_modules(path):
                other = step_of(module)
                if other is not None and other != step:
                    crossings.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not crossings, "steps import the shared library (medkfp/), never another step:\n" + "\n".join(
        sorted(set(crossings))
    )


def test_the_check_sees_a_crossing(tmp_path):
    """The walker finds absolute, relative and function-level imports of another step."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from medkfp.components.evaluate import logic\n"
        "def f():\n    from ..train.logic import train\n"
        "import medkfp.components.ingest.logic\n"
        "from medkfp import vocab\n"
    )
    found = {step_of(m) for _, m in imported_modules(probe, ["medkfp", "components", "push"])}
    assert found == {"evaluate", "train", "ingest", None}
