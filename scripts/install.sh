#!/usr/bin/env bash
# Install lmforge with every extra (data, train, serve, ray, dev) into ./.venv, creating it if needed.
#
#   bash scripts/install.sh            # lmforge[all,dev]: the library, the CLI and the tests
#   bash scripts/install.sh --bench    # also the peer tools the benchmarks compare against (lmforge[bench])
#   bash scripts/install.sh --dry-run  # print the commands instead of running them
#
# It prefers what is already there: a torch that imports is kept as it is. Otherwise it asks
# for torch==2.13.0 explicitly (a CPU build of it lies on the lmforge developer machines'
# disk) before installing lmforge, because a bare `torch` requirement with no torch present
# would pull a multi-GB CUDA build. Set LMFORGE_TORCH to choose another torch requirement.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="all,dev"
DRY=0
for arg in "$@"; do
  case "$arg" in
    --bench) EXTRAS="all,dev,bench" ;;
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown option '$arg' (allowed: --bench, --dry-run, --help)" >&2; exit 2 ;;
  esac
done
run() { if [ "$DRY" = 1 ]; then echo "+ $*"; else "$@"; fi; }

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  run "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  run .venv/bin/python -m pip install --quiet "${LMFORGE_TORCH:-torch==2.13.0}"
fi
run .venv/bin/python -m pip install --quiet -e ".[$EXTRAS]"
run .venv/bin/python -c "import lmforge, torch; print(f'lmforge {lmforge.__version__} installed (torch {torch.__version__})')"
