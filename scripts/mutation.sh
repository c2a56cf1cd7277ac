#!/usr/bin/env bash
# Mutation testing of the Python core with mutmut: seeds small mistakes into the package, one at a time, and
# reports which ones the tests do not notice.
#   bash scripts/mutation.sh                          # policy/, solve/, curvature/, optim/ (long: hours)
#   bash scripts/mutation.sh policy/lam.py optim/fit.py   # files or folders under python/marquardt
#   MUTATION_JOBS=2 ...                                # parallel test processes (default: the cores)
# It builds and installs the wheel (scripts/setup_env.sh), then mutates a copy of the package laid out at the
# top of build/mutation/ (mutmut names modules from their paths), with the compiled library copied beside it,
# in a venv of its own that does not hold marquardt (so that the mutated copy is the one imported).
# Afterwards: cd build/mutation && ../../.venv-mutation/bin/python -m mutmut browse   (or: results, show NAME)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/scripts/setup_env.sh"
INSTALLED=$("$VENV/bin/python" -c "import marquardt, os; print(os.path.dirname(marquardt.__file__))")

MVENV=${MUTATION_VENV:-$ROOT/.venv-mutation}
if [ ! -x "$MVENV/bin/python" ]; then python3 -m venv "$MVENV"; fi
"$MVENV/bin/python" -m pip install -q "$TORCH_PIN" numpy scipy tqdm "pytest>=7" hypothesis "mutmut==3.8.1"

WORK=$ROOT/build/mutation
rm -rf "$WORK" && mkdir -p "$WORK"
cp -r "$ROOT/python/marquardt" "$WORK/marquardt"
cp "$INSTALLED"/_C*.so "$INSTALLED/_build_info.py" "$WORK/marquardt/"
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
"$MVENV/bin/python" -m mutmut run --max-children "${MUTATION_JOBS:-$(nproc)}"
# The score: killed (or timed out: an endless loop is a caught mistake) over all mutants checked.
"$MVENV/bin/python" - <<'PY'
import json, pathlib
counts = {}
for meta in pathlib.Path("mutants").rglob("*.meta"):
    for name, code in json.loads(meta.read_text()).get("exit_code_by_key", {}).items():
        status = "killed" if code not in (0, None) else ("survived" if code == 0 else "not checked")
        module = str(meta.relative_to("mutants"))[: -len(".py.meta")]
        counts.setdefault(module, {}).setdefault(status, 0)
        counts[module][status] += 1
total = {"killed": 0, "survived": 0}
for module, c in sorted(counts.items()):
    k, s = c.get("killed", 0), c.get("survived", 0)
    total["killed"] += k; total["survived"] += s
    print(f"{module:40s} killed {k:4d}  survived {s:4d}  score {k / max(k + s, 1):.0%}")
k, s = total["killed"], total["survived"]
print(f"{'all':40s} killed {k:4d}  survived {s:4d}  score {k / max(k + s, 1):.0%}")
PY
echo "Survivors: cd build/mutation && $MVENV/bin/python -m mutmut results; show one with: mutmut show NAME"
