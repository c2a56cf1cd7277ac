#!/usr/bin/env bash
# CUDA compile, link and import check without a GPU: builds marquardt with MARQUARDT_WITH_CUDA=ON against a
# CUDA torch (torch==2.14.1, cu13) in its own venv with the machine's nvcc, then imports it and checks that
# the CUDA kernels are registered. Usage: bash .ci/cuda_compile_check.sh   (env CUDA_VENV overrides the venv)
set -euo pipefail
cd "$(dirname "$0")/.."
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
VENV=${CUDA_VENV:-$HOME/.cache/marquardt/cuda-venv}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch; assert torch.__version__.startswith('2.14.1')" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.14.1 numpy scikit-build-core ninja
fi
"$VENV/bin/python" -c "import tqdm" 2>/dev/null || "$VENV/bin/pip" install -q tqdm  # marquardt's one dependency
NV=$("$VENV/bin/python" -c "import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], 'cu13'))")
BUILD_DIR=${CUDA_BUILD_DIR:-build/cuda-check}
export CUDACXX="$CUDA_HOME/bin/nvcc"
"$VENV/bin/pip" install -q --no-build-isolation --no-deps --force-reinstall . \
  -Cbuild-dir="$BUILD_DIR" \
  -Ccmake.define.MARQUARDT_WITH_CUDA=ON \
  -Ccmake.define.CUDA_TOOLKIT_ROOT_DIR="$CUDA_HOME" \
  -Ccmake.define.CUDAToolkit_ROOT="$CUDA_HOME" \
  -Ccmake.define.CUDA_nvrtc_LIBRARY="$NV/lib/libnvrtc.so.13" \
  -Ccmake.define.TORCH_CUDA_ARCH_LIST=9.0 \
  -Ccmake.define.CMAKE_CXX_STANDARD=20 \
  -Ccmake.define.CMAKE_CUDA_FLAGS="-I$NV/include" \
  -Ccmake.define.CMAKE_CXX_FLAGS="-I$NV/include"
cd /tmp
"$VENV/bin/python" - <<'PY'
import torch
import marquardt
assert marquardt.WITH_CUDA, "marquardt was built without CUDA"
for op in ("jtj_accumulate_", "max_diag_update_", "damped_cholesky_solve", "damped_cholesky_factor"):
    packet = getattr(torch.ops.marquardt, op)
    assert torch._C._dispatch_has_kernel_for_dispatch_key(packet.default.name(), "CUDA"), op
    assert torch._C._dispatch_has_kernel_for_dispatch_key(packet.default.name(), "CPU"), op
print("CUDA compile/link/import check passed: torch", torch.__version__, "cuda", torch.version.cuda)
PY
