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
# Browser tests (the `ssfilter serve` page and the HTML reports) drive Debian's chromium; install it when
# missing and we are root with apt. Best effort: without it those tests skip with the reason.
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing chromium (apt-get) for the browser tests"
        if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
            && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } \
            >/tmp/ssfilter-setup-chromium.log 2>&1; then
            echo "setup: note: chromium could not be installed (see /tmp/ssfilter-setup-chromium.log); browser tests will skip" >&2
        fi
    else
        echo "setup: note: no chromium and not root with apt-get; browser tests will skip (apt-get install chromium)" >&2
    fi
fi
.venv/bin/python -c "import ssfilter, torch, torchvision, timm; print('ssfilter', ssfilter.__version__, '| torch', torch.__version__)"
