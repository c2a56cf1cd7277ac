#!/usr/bin/env bash
# Sets up .venv (pinned CPU torch), builds and installs the marquardt wheel, then runs the main demo: the
# noisy-sine regression with LM against L-BFGS, Hessian-free, K-FAC, Adam and SGD (a table, and a figure in results/sine/).
#   bash scripts/demo.sh [--width 64] [--iterations 100]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
"$VENV/bin/python" benchmarks/paper/sine.py "$@"
