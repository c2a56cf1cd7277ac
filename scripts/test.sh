#!/usr/bin/env bash
# Sets up .venv (pinned CPU torch), builds and installs the marquardt wheel, checks that the wheel installs
# and imports in a fresh venv holding only torch, then runs the test suite against the installed wheel.
#   bash scripts/test.sh [pytest args]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/scripts/setup_env.sh"

# The wheel in a venv with nothing but torch (what a user who runs 'pip install marquardt-*.whl' has).
CLEAN=${CLEAN_VENV:-$ROOT/.venv-wheel}
if [ ! -x "$CLEAN/bin/python" ]; then python3 -m venv "$CLEAN"; fi
"$CLEAN/bin/python" -c "import torch" 2>/dev/null || "$CLEAN/bin/python" -m pip install -q "$TORCH_PIN"
"$CLEAN/bin/python" -m pip install -q "$ROOT"/dist/marquardt-*.whl  # its dependencies (torch is there already)
"$CLEAN/bin/python" -m pip install -q --force-reinstall --no-deps "$ROOT"/dist/marquardt-*.whl
(cd /tmp && "$CLEAN/bin/python" -c "
import torch, marquardt
from marquardt import ops
A = torch.zeros(3, 3); ops.jtj_accumulate_(A, torch.eye(3))
assert torch.equal(A, torch.eye(3))
print('wheel imports and runs in a torch-only venv:', marquardt.__file__)
")

cd "$ROOT"
"$VENV/bin/python" -m pytest -q tests "$@"
