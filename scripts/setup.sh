#!/usr/bin/env bash
# Create .venv (if missing) and install dreambot into it: torch first (the local CPU
# wheel, pinned, so pip never pulls a multi-GB CUDA build), then the project with all
# extras. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EXTRAS=${DREAMBOT_EXTRAS:-all,dev}
TORCH=${DREAMBOT_TORCH:-torch==2.13.0}

if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
  .venv/bin/pip install --quiet --upgrade pip
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install --quiet "$TORCH"
fi
.venv/bin/pip install --quiet -e ".[${EXTRAS}]"
