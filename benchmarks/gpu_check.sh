#!/usr/bin/env bash
# The one script to run on a lent GPU (H100/H200): builds marquardt with CUDA, runs the CUDA tests (and
# compute-sanitizer memcheck on the op tests), then the GPU microbenchmarks, and prints a table last.
# Budget: under 8 minutes. Logs and JSON go to $OUT (the device tool's output folder) or ./gpu-out.
#   bash benchmarks/gpu_check.sh            # full
#   GPU_CHECK_QUICK=1 bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
status=0
step() { echo; echo "=== $* ($(date +%T))"; }

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"

step "build (MARQUARDT_WITH_CUDA=ON)"
NVRTC=$($PY - <<'PY'
import glob, os, torch
site = os.path.dirname(os.path.dirname(torch.__file__))
hits = sorted(glob.glob(os.path.join(site, "nvidia", "*", "lib", "libnvrtc.so*")))
print(hits[0] if hits else "")
PY
)
extra=()
[ -n "$NVRTC" ] && extra+=(-Ccmake.define.CUDA_nvrtc_LIBRARY="$NVRTC")
if ! MARQUARDT_WITH_CUDA=ON $PY -m pip install --no-build-isolation --no-deps --force-reinstall -q . \
    -Cbuild-dir=build/gpu -Ccmake.define.TORCH_CUDA_ARCH_LIST=9.0 "${extra[@]}" >"$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
fi
tail -3 "$OUT/build.log"

step "tests (CUDA device parametrisations included)"
(cd /tmp && $PY -c "import marquardt; assert marquardt.WITH_CUDA; print('marquardt', marquardt.__file__)") || status=1
timeout 240 $PY -m pytest -q -x tests ${GPU_TEST_ARGS:-} -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" | tail -15
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

if command -v compute-sanitizer >/dev/null && [ -z "${GPU_CHECK_QUICK:-}" ]; then
  step "compute-sanitizer memcheck on the CUDA op tests"
  timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 $PY -m pytest -q -p no:cacheprovider tests/ops \
    -k "cuda and not opcheck" 2>&1 | tail -6 | tee "$OUT/memcheck.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "MEMCHECK FAILED"; status=1; }
fi

if [ -n "${GPU_EXTRA:-}" ]; then
  step "extra: $GPU_EXTRA"
  timeout 200 bash -c "$GPU_EXTRA" 2>&1 | tee "$OUT/extra.log" | tail -30
fi

step "the whole LM step on the GPU: CPU agreement, host syncs, MNIST iteration and time to 90% vs Adam"
mnist_dir=()
[ -d data/mnist ] && mnist_dir=(--data-dir data/mnist)   # carry data/mnist (the IDX files) to the device
timeout 200 $PY benchmarks/gpu_end_to_end.py --device cuda "${mnist_dir[@]}" ${GPU_CHECK_QUICK:+--quick} \
  --json "$OUT/end_to_end.json" 2>&1 | tee "$OUT/end_to_end.log" | tail -12
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

step "SYRK kernel variants (quick sweep; default: 2 blocks/SM, slab 8, float64 on cuBLAS tiles)"
for variant in "MARQUARDT_SYRK_BLOCKS_PER_SM=1" "MARQUARDT_SYRK_SLAB=16" "MARQUARDT_SYRK_BLOCKS_PER_SM=1 MARQUARDT_SYRK_SLAB=16" "MARQUARDT_SYRK_F64=own"; do
  echo "--- $variant"
  env $variant timeout 100 $PY benchmarks/compare_ops.py --device cuda --quick --repeats 3 --jtj-only 2>&1 \
    | grep -E "jtj_accumulate_|J.T @ J  " | tee -a "$OUT/variants.log"
done

step "microbenchmarks: ours vs cuBLAS/cuSOLVER"
quick=()
[ -n "${GPU_CHECK_QUICK:-}" ] && quick=(--quick)
timeout 240 $PY benchmarks/compare_ops.py --device cuda --check "${quick[@]}" --json "$OUT/ops_gpu.json" \
  2>&1 | tee "$OUT/ops_gpu.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
echo "gpu_check status: $status"
exit $status
