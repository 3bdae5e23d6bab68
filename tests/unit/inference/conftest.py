"""Fixtures shared by the inference tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[3] / "src"


@pytest.fixture
def run_script() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run a Python script in a fresh interpreter with ``src`` importable (e.g. without torch)."""

    def run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
        cmd = [sys.executable, "-c", script, *args]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)

    return run
