#!/usr/bin/env bash
# Install lmforge with every extra (data, train, serve, ray, dev) into ./.venv, creating it if needed.
#
# It prefers what is already there: a torch that imports is kept as it is. Otherwise it asks
# for torch==2.13.0 explicitly (a CPU build of it lies on the lmforge developer machines'
# disk) before installing lmforge, because a bare `torch` requirement with no torch present
# would pull a multi-GB CUDA build. Set LMFORGE_TORCH to choose another torch requirement.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  .venv/bin/python -m pip install --quiet "${LMFORGE_TORCH:-torch==2.13.0}"
fi
.venv/bin/python -m pip install --quiet -e ".[all,dev]"
.venv/bin/python -c "import lmforge, torch; print(f'lmforge {lmforge.__version__} installed (torch {torch.__version__})')"
