#!/usr/bin/env bash
# Creates (or reuses) the virtual environment .venv with the pinned CPU torch and the build/test tools,
# then builds marquardt as a wheel against that torch and installs the wheel (not the source tree).
# Sourced by scripts/test.sh and scripts/demo.sh; VENV overrides the location.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
TORCH_PIN=${TORCH_PIN:-torch==2.13.0}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '${TORCH_PIN#torch==}' else 1)" 2>/dev/null; then
  "${PIP[@]}" install -q "$TORCH_PIN"
fi
"${PIP[@]}" install -q numpy "scikit-build-core>=0.10" ninja "pytest>=7" "pytest-benchmark>=4" hypothesis tqdm matplotlib scipy mypy==2.4.1

# Build the wheel users get, against the installed torch, and install it.
rm -rf "$ROOT/dist"
(cd "$ROOT" && "${PIP[@]}" wheel -q --no-build-isolation --no-deps -w dist .)
"${PIP[@]}" install -q --force-reinstall --no-deps "$ROOT"/dist/marquardt-*.whl
export PATH="$VENV/bin:$PATH"
