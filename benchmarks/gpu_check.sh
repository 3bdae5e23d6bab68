#!/usr/bin/env bash
# GPU acceptance check: train ViT-S (random weights) at the paper's main setting, then measure inference
# FPS of both presets next to the paper's Table 3. Fits in 10 minutes on one GPU.
#
#   bash benchmarks/gpu_check.sh            # on a CUDA machine
#   bash benchmarks/gpu_check.sh --smoke    # the same code path on the CPU in seconds (tiny sizes)
#
# Environment: PYTHON (default: python) is the interpreter with ssfilter installed; ITERS overrides the
# number of training iterations (default 300); KEEP=1 keeps the work folder.
#
# Steps:
#   1. generate a synthetic MVTec-layout category (no data download);
#   2. `ssfilter train --method ssfilter --preset paper-448-392 --set model.random_init=true` at batch 32
#      (filter cold start shortened to 100 iterations so the regular filter phase runs too), bf16 autocast
#      + TF32 on CUDA as the trainer always does there; prints s/iter and images/s from train_log.csv;
#   3. `python -m benchmarks.fps` at batch 16 for paper-256-224 and paper-448-392 (bf16 autocast + TF32),
#      printed next to the paper's 638 / 202 FPS on an RTX 3090.
set -euo pipefail

SMOKE=0
for arg in "$@"; do
    case "$arg" in
        --smoke) SMOKE=1 ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument '$arg' (use --smoke or --help)" >&2; exit 2 ;;
    esac
done

PY="${PYTHON:-python}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"   # `python -m benchmarks.fps` needs the repository root on the path
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/ssfilter_gpu_check.XXXXXX")"
cleanup() { if [ "${KEEP:-0}" = "1" ]; then echo "work folder kept: $WORK"; else rm -rf "$WORK"; fi; }
trap cleanup EXIT

if [ "$SMOKE" = "1" ]; then
    DEVICE=cpu
    N_TRAIN=4; SIZE=64
    ITERS="${ITERS:-2}"
    TRAIN_SET=(--batch-size 4 --set data.resize=64 --set data.crop=56 --set filter.mc_passes=2
               --set batch_filter.cold_start_iters=1 --set train.warmup_iters=1 --set train.checkpoint_every=2)
    FPS_ARGS=(--device cpu --batch 2 --warmup 0 --iters 1 --set data.resize=64 --set data.crop=56)
else
    if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu_check.sh: no CUDA GPU visible to torch; use --smoke to exercise the code path on the CPU" >&2
        exit 2
    fi
    DEVICE=cuda
    N_TRAIN=64; SIZE=448
    ITERS="${ITERS:-300}"
    TRAIN_SET=(--batch-size 32 --set batch_filter.cold_start_iters=100 --set train.checkpoint_every=100)
    FPS_ARGS=(--device cuda --batch 16 --warmup 5 --iters 50)
fi

echo "== gpu_check: device $DEVICE, $ITERS training iterations, work folder $WORK"

echo "== 1. synthetic data ($N_TRAIN training images, ${SIZE}px)"
"$PY" -c "
from ssfilter.data.synthetic import make_synthetic_category
make_synthetic_category('$WORK/data', n_train_good=$N_TRAIN, n_test_good=2, n_test_defect=2, size=$SIZE, seed=0)
"

echo "== 2. train: ssfilter, paper-448-392, ViT-S random weights"
START=$(date +%s)
"$PY" -m ssfilter -q train --data "$WORK/data" --out "$WORK/run" --method ssfilter --preset paper-448-392 \
    --set model.random_init=true --iters "$ITERS" --device "$DEVICE" "${TRAIN_SET[@]}"
END=$(date +%s)
"$PY" - "$WORK/run/train_log.csv" "$((END - START))" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
secs = [float(r["seconds"]) for r in rows]
steady = secs[len(secs) // 10 :] or secs  # skip the first 10%: compilation of kernels, feature caching
med = statistics.median(steady)
batch = int(rows[-1]["batch"])
print(
    f"TRAIN paper-448-392 ssfilter: {len(rows)} iterations in {sys.argv[2]} s wall "
    f"(incl. start-up and checkpoints); median {med:.3f} s/iter = {batch / med:.1f} images/s at batch {batch}; "
    f"final loss {float(rows[-1]['loss']):.4f}"
)
EOF

echo "== 3. inference FPS (paper Table 3: 638 FPS at 256-224, 202 FPS at 448-392 on an RTX 3090)"
"$PY" -m benchmarks.fps "${FPS_ARGS[@]}"

echo "== gpu_check done"
