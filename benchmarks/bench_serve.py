r"""Load test of ``ssfilter serve`` on loopback: N concurrent clients x M requests per back end.

Each back end (a run folder through PyTorch, an ``.onnx`` file through ONNX Runtime, an OpenVINO ``.xml``)
is served by a real ``ssfilter serve`` process on a free loopback port; N client threads each send M
``POST /predict`` requests with one image of the pool (raw bytes) and time them. Reported per back end:
p50 / p95 / p99 latency, throughput, errors (any non-200 answer or failed connection) and the server
process's peak resident memory (``VmHWM``). Bounded in count (``--clients`` x ``--requests``) and in time
(``--timeout`` per back end: unanswered requests then count as errors).

    python -m benchmarks.bench_serve --run RUN [--onnx FILE] [--openvino FILE] --images DIR \\
        [--clients 8] [--requests 50] [--out table.md]
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["LoadResult", "free_port", "load_test", "main", "serve_process"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: Raw image bytes as the request body (the server decodes any supported format).
RAW_BODY = {"Content-Type": "application/octet-stream"}


@dataclass
class LoadResult:
    """What one back end did under load."""

    backend: str
    clients: int
    requests: int
    latencies: list[float]
    errors: int
    seconds: float
    peak_rss_mib: float | None

    def row(self) -> dict[str, str]:
        """The Markdown table row of this result."""
        lat = np.asarray(self.latencies) * 1000.0
        pct = (lambda q: f"{np.percentile(lat, q):.0f}") if lat.size else (lambda q: "-")
        done = len(self.latencies)
        return {
            "backend": self.backend,
            "clients x requests": f"{self.clients} x {self.requests}",
            "ok": str(done),
            "errors": str(self.errors),
            "p50 ms": pct(50),
            "p95 ms": pct(95),
            "p99 ms": pct(99),
            "img/s": f"{done / self.seconds:.2f}" if self.seconds > 0 else "-",
            "server peak RSS MiB": f"{self.peak_rss_mib:.0f}" if self.peak_rss_mib is not None else "-",
        }


def free_port() -> int:
    """A free TCP port on loopback (for one server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _peak_rss_mib(pid: int) -> float | None:
    """``VmHWM`` of a process in MiB (Linux), ``None`` where /proc has no such field."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def serve_process(option: str, source: str, port: int, startup_timeout: float = 600.0) -> subprocess.Popen:
    """Start ``ssfilter serve OPTION SOURCE`` on loopback and wait until ``/health`` answers.

    Raises:
        RuntimeError: the server exited or did not answer within ``startup_timeout`` seconds.
    """
    cmd = [sys.executable, "-m", "ssfilter", "-q", "serve", option, source, "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--queue", "64"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"the server on port {port} did not answer /health within {startup_timeout:.0f}s")


def load_test(
    port: int, images: Sequence[bytes], clients: int, requests: int, timeout: float
) -> tuple[list[float], int, float]:
    """``clients`` threads x ``requests`` POSTs of pool images; ``(latencies, errors, seconds)``."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + timeout

    def client(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=max(1.0, timeout))
        for k in range(requests):
            if time.monotonic() > stop_at:
                with lock:
                    errors[0] += requests - k
                return
            body = images[(index * requests + k) % len(images)]
            t0 = time.perf_counter()
            try:
                conn.request(
                    "POST", "/predict", body=body, headers={"Content-Type": "application/octet-stream"}
                )
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except OSError:
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=max(1.0, timeout))
            elapsed = time.perf_counter() - t0
            with lock:
                if ok:
                    latencies.append(elapsed)
                else:
                    errors[0] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t_start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors[0], time.perf_counter() - t_start


def run_backend(
    name: str, option: str, source: str, images: Sequence[bytes], clients: int, requests: int, timeout: float
) -> LoadResult:
    """Serve ``source`` with ``option``, load it, stop it; the result."""
    port = free_port()
    proc = serve_process(option, source, port)
    try:
        latencies, errors, seconds = load_test(port, images, clients, requests, timeout)
        peak = _peak_rss_mib(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return LoadResult(name, clients, requests, latencies, errors, seconds, peak)


def _image_pool(folder: Path, limit: int = 32) -> list[bytes]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not files:
        raise SystemExit(f"no images under {folder}")
    return [p.read_bytes() for p in files]


def render(results: Sequence[LoadResult]) -> str:
    """A Markdown table of the results."""
    rows = [r.row() for r in results]
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row[k] for k in header) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; prints the table (and writes it to ``--out``)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_serve", description=__doc__)
    parser.add_argument("--run", default=None, help="run folder (PyTorch back end)")
    parser.add_argument("--onnx", default=None, help="exported .onnx file (ONNX Runtime back end)")
    parser.add_argument("--openvino", default=None, help="exported .xml file (OpenVINO back end)")
    parser.add_argument("--images", type=Path, required=True, help="folder of request images (up to 32 used)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=50, help="requests per client")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per back end")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    images = _image_pool(args.images)
    chosen = [
        (n, f"--{n}", s) for n, s in (("run", args.run), ("onnx", args.onnx), ("openvino", args.openvino))
    ]
    results = []
    for name, option, source in chosen:
        if source is None:
            continue
        label = "torch" if name == "run" else name
        print(f"serving {label}: {source}", file=sys.stderr, flush=True)
        results.append(run_backend(label, option, source, images, args.clients, args.requests, args.timeout))
    if not results:
        parser.error("give at least one of --run, --onnx, --openvino")
    table = render(results)
    print(table)
    if args.out is not None:
        args.out.write_text(table, encoding="utf-8")
    return 0 if all(r.errors == 0 for r in results) else 1


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
