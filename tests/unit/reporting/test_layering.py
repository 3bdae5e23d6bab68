from __future__ import annotations

import ast
from pathlib import Path

import ssfilter.reporting


def test_reporting_imports_nothing_above_it() -> None:
    """reporting/ sits below the pipelines (benchmark, demo), api and cli: it must not import them."""
    above = (
        "ssfilter.api",
        "ssfilter.cli",
        "ssfilter.demo",
        "ssfilter.pipelines",
        "ssfilter.evaluation.benchmark",
    )
    folder = Path(ssfilter.reporting.__file__).parent
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            for name in names:
                assert not any(name == m or name.startswith(m + ".") for m in above), (path.name, name)
