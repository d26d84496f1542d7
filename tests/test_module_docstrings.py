"""Every module opens with a one-line docstring saying what it is for (STYLE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("medkfp", "components", "pipelines", "serving", "tests", "bench")
LINE_LENGTH = 110  # ruff's, pyproject.toml


def modules() -> list[Path]:
    """Every Python file of the project but empty package markers."""
    files = [f for d in PACKAGES for f in sorted((ROOT / d).rglob("*.py"))]
    return [f for f in files if f.name != "__init__.py" or f.read_text().strip()]


def summary_problem(path: Path) -> str | None:
    """Why the module's docstring does not open with a one-line summary, or None."""
    doc = ast.get_docstring(ast.parse(path.read_text()), clean=False)
    if doc is None:
        return "no module docstring"
    lines = doc.strip("\n").split("\n")
    if len(lines) > 1 and lines[1].strip():
        return "the summary runs over more than one line (a blank line must follow it)"
    if len(lines[0]) + len('"""') > LINE_LENGTH:
        return f"the summary line is longer than {LINE_LENGTH} characters"
    return None


def test_every_module_opens_with_a_one_line_summary():
    problems = [f"{f.relative_to(ROOT)}: {p}" for f in modules() if (p := summary_problem(f))]
    assert not problems, "\n".join(problems)


def test_the_check_sees_a_two_line_summary(tmp_path):
    two_lines = tmp_path / "two.py"
    two_lines.write_text('"""Runs over\ntwo lines."""\n')
    one_line = tmp_path / "one.py"
    one_line.write_text('"""One line.\n\nThen the body.\n"""\n')
    no_docstring = tmp_path / "none.py"
    no_docstring.write_text("x = 1\n")
    assert summary_problem(two_lines) and summary_problem(no_docstring)
    assert summary_problem(one_line) is None
