#!/usr/bin/env bash
# One-step set-up on a fresh machine: a virtual environment in .venv with ssfilter and its test tools.
# Safe to run again (pip skips what is installed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
# Some package mirrors print one harmless warning per missing index folder; hide only those lines.
set +eo pipefail
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]" 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory"
status=${PIPESTATUS[0]}
set -eo pipefail
if [ "$status" -ne 0 ]; then
    echo "setup: pip install failed (exit $status)" >&2
    exit "$status"
fi
.venv/bin/python -c "import ssfilter, torch, torchvision, timm; print('ssfilter', ssfilter.__version__, '| torch', torch.__version__)"
