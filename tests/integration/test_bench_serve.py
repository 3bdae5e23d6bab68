"""The serve load test (benchmarks/bench_serve.py) on a tiny run: real server process, real HTTP, counted."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from benchmarks import bench_serve  # noqa: E402
from ssfilter.api import Detector  # noqa: E402


def test_load_test_counts_every_request(
    tmp_path: Path, synthetic_mvtec: Path, make_tiny_config, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = make_tiny_config()
    cfg.train.method = "dinomaly"
    run = tmp_path / "run"
    Detector(cfg).fit(synthetic_mvtec, run, progress=False)
    out = tmp_path / "load.md"
    status = bench_serve.main(
        ["--run", str(run), "--images", str(synthetic_mvtec / "test"), "--clients", "3", "--requests", "4"]
        + ["--out", str(out), "--timeout", "300"]
    )
    assert status == 0
    table = out.read_text()
    row = next(line for line in table.splitlines() if line.startswith("| torch"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "3 x 4" and cells[2] == "12" and cells[3] == "0"  # 12 answered, no error
    assert float(cells[7]) > 0 and float(cells[8]) > 0  # throughput and the server's peak memory
    assert table in capsys.readouterr().out


def test_unanswered_requests_are_errors() -> None:
    # nothing listens on this port: every request fails and is counted
    port = bench_serve.free_port()
    latencies, errors, _ = bench_serve.load_test(port, [b"x"], clients=2, requests=3, timeout=5)
    assert latencies == [] and errors == 6
