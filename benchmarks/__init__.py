"""ssfilter's benchmark suite: speed and memory ratios measured side by side in one run.

Run everything with ``python -m benchmarks [--quick] [--device cpu|cuda] [--out FILE.md]``; see
``benchmarks/README.md`` for the sections and the latest measured table. ``benchmarks/gpu_check.sh`` is the
GPU acceptance check (training + FPS next to the paper's Table 3); its FPS part is :mod:`benchmarks.fps`.
"""
