#!/usr/bin/env bash
# Mutation testing of the Python core with mutmut: seeds small mistakes into the package, one at a time, and
# reports which ones the tests do not notice.
#   bash scripts/mutation.sh                          # policy/, solve/, curvature/, optim/ (long: hours)
#   bash scripts/mutation.sh policy/lam.py optim/fit.py   # files or folders under python/marquardt
#   MUTATION_JOBS=2 ...                                # parallel test processes (default: the cores)
# It builds the wheel (without installing it), then mutates a copy of the package laid out at the top of
# build/mutation/ (mutmut names modules from their paths), with the compiled library copied beside it, in a
# venv of its own that does not hold marquardt (so that the mutated copy is the one imported).
#   MUTATION_WORK=DIR (default build/mutation), MUTATION_MIN_SCORE=PERCENT (exit 1 below it; default 0)
# Afterwards: cd build/mutation && ../../.venv-mutation/bin/python -m mutmut browse   (or: results, show NAME)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TORCH_PIN=${TORCH_PIN:-torch==2.13.0}

MVENV=${MUTATION_VENV:-$ROOT/.venv-mutation}
if [ ! -x "$MVENV/bin/python" ]; then python3 -m venv "$MVENV"; fi
"$MVENV/bin/python" -m pip install -q "$TORCH_PIN" numpy scipy tqdm "pytest>=7" hypothesis "mutmut==3.8.1" \
    "scikit-build-core>=0.10" ninja

WORK=${MUTATION_WORK:-$ROOT/build/mutation}
rm -rf "$WORK" && mkdir -p "$WORK"
# The compiled library from a wheel built here (not installed anywhere: the development venv keeps its own).
"$MVENV/bin/python" -m pip wheel -q --no-build-isolation --no-deps -w "$WORK/wheel" "$ROOT"
"$MVENV/bin/python" -m zipfile -e "$WORK"/wheel/marquardt-*.whl "$WORK/wheel/unpacked"
cp -r "$ROOT/python/marquardt" "$WORK/marquardt"
cp "$WORK"/wheel/unpacked/marquardt/_C*.so "$WORK/wheel/unpacked/marquardt/_build_info.py" "$WORK/marquardt/"
cp -r "$ROOT/tests" "$ROOT/benchmarks" "$WORK/"

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(policy solve curvature optim)
sources=""
for t in "${targets[@]}"; do sources+="\"marquardt/${t%/}\", "; done
cat > "$WORK/pyproject.toml" <<TOML
[tool.mutmut]
source_paths = [${sources%, }]
also_copy = ["tests/", "benchmarks/", "marquardt/"]
# the unit tests of the core and the optimizer-level ones; mutmut runs, per mutant, the tests that reach it
pytest_add_cli_args_test_selection = ["tests/types", "tests/solve", "tests/curvature", "tests/policy", "tests/optim"]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]

[tool.pytest.ini_options]
testpaths = ["tests"]
TOML
cd "$WORK"
JOBS=${MUTATION_JOBS:-$(nproc)}  # (before OMP_NUM_THREADS is set below: GNU nproc reports it when it is set)
# One thread per test process: mutmut forks its workers from a process that has imported torch, and a forked
# child whose parent started an OpenMP pool spins in its first parallel op until the CPU limit kills it (every
# mutant reached by an optimizer step then "timed out", counted as caught). Parallelism comes from the workers.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
"$MVENV/bin/python" -m mutmut run --max-children "$JOBS"
"$MVENV/bin/python" "$ROOT/scripts/mutation_score.py" --equivalents "$ROOT/scripts/mutation_equivalents.txt" \
    --min-score "${MUTATION_MIN_SCORE:-0}"
echo "Survivors: cd build/mutation && $MVENV/bin/python -m mutmut results; show one with: mutmut show NAME"
