// SPDX-License-Identifier: BSD-3-Clause
// CUDA kernel of jtj_accumulate_: our own SYRK-style tiled kernel. Only tiles (bi, bj) with bi <= bj of
// A += alpha JᵀJ are computed (about half the flops of a GEMM); a second small kernel mirrors the upper
// triangle into the lower one. Both operands of a tile are row panels of J itself (column blocks bi and bj),
// so every global load is a coalesced vector load of one row of J and no transposition is needed.
// float64 goes through cuBLAS GEMM tiles by default instead (see jtj_accumulate_cuda).
//
// Tiling: 256 threads compute a BM x BM tile (BM = 128 for float, 64 for double), each thread a
// 2V x 2V sub-tile (V = elements per 16-byte vector), over row slabs of depth 8 double-buffered in shared
// memory (one __syncthreads per slab). When there are too few tiles to fill the GPU (small n), the rows
// are split across blocks and the partial tiles are added with atomics.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>

#include "ops.h"
#include "syrk_on_gemm.h"

namespace marquardt {
namespace {

template <typename T>
struct Vec;
template <>
struct Vec<float> {
  using type = float4;
  static constexpr int width = 4;
};
template <>
struct Vec<double> {
  using type = double2;
  static constexpr int width = 2;
};

constexpr int kThreads = 256;
constexpr int kLoadRows = kThreads / 32;  // rows of a slab loaded in one pass (32 threads per row)

template <typename T>
__device__ __forceinline__ void load_panel(T (&dst)[Vec<T>::width], const T* __restrict__ J, int64_t k, int64_t k_end,
                                           int col, int n, bool vec_ok) {
  constexpr int V = Vec<T>::width;
  if (k < k_end && vec_ok && col + V <= n) {
    const auto v = *reinterpret_cast<const typename Vec<T>::type*>(J + k * n + col);
    *reinterpret_cast<typename Vec<T>::type*>(dst) = v;
  } else {
#pragma unroll
    for (int v = 0; v < V; ++v) dst[v] = (k < k_end && col + v < n) ? J[k * n + col + v] : T(0);
  }
}

// kSlab: rows of J per shared-memory slab (8 or 16); kMinBlocks: blocks per SM the registers must allow.
template <typename T, int kMinBlocks, int kSlab>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    syrk_upper_kernel(T* __restrict__ A, const T* __restrict__ J, const T* __restrict__ r, T* __restrict__ g,
                      int64_t rows, int n, int nb, int64_t rows_per_split, T alpha, bool atomic, bool vec_ok) {
  constexpr int V = Vec<T>::width;
  constexpr int BM = 32 * V;
  constexpr int TM = 2 * V;
  using VT = typename Vec<T>::type;

  // Linear block index -> upper-triangle tile (bi, bj); block row bi holds nb - bi tiles.
  int t = blockIdx.x, bi = 0;
  while (t >= nb - bi) {
    t -= nb - bi;
    ++bi;
  }
  const int bj = bi + t;
  const bool diag = bi == bj;
  const bool want_g = g != nullptr && diag;
  const int64_t k_begin = static_cast<int64_t>(blockIdx.y) * rows_per_split;
  const int64_t k_end = min(rows, k_begin + rows_per_split);
  if (k_begin >= k_end) return;

  __shared__ __align__(16) T As[2][kSlab][BM];
  __shared__ __align__(16) T Bs[2][kSlab][BM];
  __shared__ T Rs[2][kSlab];
  // On a diagonal tile both operands are the same panel: load it once.
  T(*Bsrc)[kSlab][BM] = diag ? As : Bs;

  const int tid = threadIdx.x;
  const int ty = tid / 16, tx = tid % 16;
  const int load_row = tid / 32;
  const int load_col = (tid % 32) * V;
  const int colA = bi * BM + load_col, colB = bj * BM + load_col;

  T acc[TM][TM];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TM; ++j) acc[i][j] = T(0);
  T g_acc = T(0);

  constexpr int kLoads = kSlab / kLoadRows;
  T ra[kLoads][V], rb[kLoads][V];
  T rr = T(0);
  auto fetch = [&](int64_t k0) {
#pragma unroll
    for (int l = 0; l < kLoads; ++l) {
      load_panel<T>(ra[l], J, k0 + load_row + l * kLoadRows, k_end, colA, n, vec_ok);
      if (!diag) load_panel<T>(rb[l], J, k0 + load_row + l * kLoadRows, k_end, colB, n, vec_ok);
    }
    if (want_g && tid < kSlab) rr = (k0 + tid < k_end) ? r[k0 + tid] : T(0);
  };
  auto stash = [&](int buf) {
#pragma unroll
    for (int l = 0; l < kLoads; ++l) {
      *reinterpret_cast<VT*>(&As[buf][load_row + l * kLoadRows][load_col]) = *reinterpret_cast<VT*>(ra[l]);
      if (!diag) *reinterpret_cast<VT*>(&Bs[buf][load_row + l * kLoadRows][load_col]) = *reinterpret_cast<VT*>(rb[l]);
    }
    if (want_g && tid < kSlab) Rs[buf][tid] = rr;
  };

  fetch(k_begin);
  stash(0);
  __syncthreads();
  int buf = 0;
  for (int64_t k0 = k_begin; k0 < k_end; k0 += kSlab) {
    const bool has_next = k0 + kSlab < k_end;
    if (has_next) fetch(k0 + kSlab);  // global loads in flight while this slab is multiplied
#pragma unroll
    for (int kk = 0; kk < kSlab; ++kk) {
      T a[TM], b[TM];
      *reinterpret_cast<VT*>(&a[0]) = *reinterpret_cast<const VT*>(&As[buf][kk][ty * V]);
      *reinterpret_cast<VT*>(&a[V]) = *reinterpret_cast<const VT*>(&As[buf][kk][BM / 2 + ty * V]);
      *reinterpret_cast<VT*>(&b[0]) = *reinterpret_cast<const VT*>(&Bsrc[buf][kk][tx * V]);
      *reinterpret_cast<VT*>(&b[V]) = *reinterpret_cast<const VT*>(&Bsrc[buf][kk][BM / 2 + tx * V]);
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TM; ++j) acc[i][j] = fma(a[i], b[j], acc[i][j]);
    }
    if (want_g && tid < BM) {
#pragma unroll
      for (int kk = 0; kk < kSlab; ++kk) g_acc = fma(As[buf][kk][tid], Rs[buf][kk], g_acc);
    }
    if (has_next) stash(buf ^ 1);
    __syncthreads();
    buf ^= 1;
  }

#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t gr = static_cast<int64_t>(bi) * BM + (i < V ? ty * V + i : BM / 2 + ty * V + i - V);
    if (gr >= n) continue;
#pragma unroll
    for (int j = 0; j < TM; ++j) {
      const int64_t gc = static_cast<int64_t>(bj) * BM + (j < V ? tx * V + j : BM / 2 + tx * V + j - V);
      if (gc >= n || (diag && gr > gc)) continue;
      const T v = alpha * acc[i][j];
      if (atomic) {
        atomicAdd(&A[gr * n + gc], v);
      } else {
        A[gr * n + gc] += v;
      }
    }
  }
  if (want_g && tid < BM) {
    const int64_t gi = static_cast<int64_t>(bi) * BM + tid;
    if (gi < n) {
      if (atomic) {
        atomicAdd(&g[gi], alpha * g_acc);
      } else {
        g[gi] += alpha * g_acc;
      }
    }
  }
}

// A[r, c] = A[c, r] for r > c, through a padded shared-memory tile so reads and writes stay coalesced.
template <typename T>
__global__ void mirror_upper_kernel(T* __restrict__ A, int n) {
  __shared__ T tile[32][33];
  const int bx = blockIdx.x, by = blockIdx.y;
  if (by < bx) return;  // (by, bx) is a lower tile; its source is the upper tile (bx, by)
  const int c_src = by * 32 + threadIdx.x;
  for (int i = threadIdx.y; i < 32; i += blockDim.y) {
    const int r_src = bx * 32 + i;
    if (r_src < n && c_src < n) tile[i][threadIdx.x] = A[static_cast<int64_t>(r_src) * n + c_src];
  }
  __syncthreads();
  const int c_dst = bx * 32 + threadIdx.x;
  for (int i = threadIdx.y; i < 32; i += blockDim.y) {
    const int r_dst = by * 32 + i;
    if (r_dst < n && c_dst < n && r_dst > c_dst) A[static_cast<int64_t>(r_dst) * n + c_dst] = tile[threadIdx.x][i];
  }
}

// Kernel variants, selectable for tuning on a new GPU (benchmarks/gpu_check.sh times them side by side):
//   MARQUARDT_SYRK_BLOCKS_PER_SM=1|2 (default 2): two blocks per SM cap the float kernel at 128 registers
//     (a few bytes spill); one block per SM keeps everything in registers at half the occupancy.
//   MARQUARDT_SYRK_SLAB=8|16 (default 8): rows of J per shared-memory slab (fewer barriers with 16).
//   MARQUARDT_SYRK_F64=cublas|own (default cublas): float64 through cuBLAS DGEMM tiles or our kernel.
struct SyrkConfig {
  int blocks_per_sm = 2;
  int slab = 8;
  bool f64_on_cublas = true;
};

const SyrkConfig& syrk_config() {
  static const SyrkConfig config = [] {
    SyrkConfig c;
    auto env = [](const char* name) { const char* v = std::getenv(name); return std::string(v ? v : ""); };
    if (env("MARQUARDT_SYRK_BLOCKS_PER_SM") == "1") c.blocks_per_sm = 1;
    if (env("MARQUARDT_SYRK_SLAB") == "16") c.slab = 16;
    if (env("MARQUARDT_SYRK_F64") == "own") c.f64_on_cublas = false;
    return c;
  }();
  return config;
}

template <typename T>
auto pick_kernel(const SyrkConfig& c) {
  if (c.blocks_per_sm == 1) return c.slab == 16 ? syrk_upper_kernel<T, 1, 16> : syrk_upper_kernel<T, 1, 8>;
  return c.slab == 16 ? syrk_upper_kernel<T, 2, 16> : syrk_upper_kernel<T, 2, 8>;
}

template <typename T>
void launch_mirror(const at::Tensor& A, cudaStream_t stream) {
  const int n = static_cast<int>(A.size(0));
  const int nt = (n + 31) / 32;
  mirror_upper_kernel<T><<<dim3(nt, nt), dim3(32, 8), 0, stream>>>(A.data_ptr<T>(), n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void jtj_accumulate_cuda(const at::Tensor& A, const at::Tensor& J, const std::optional<at::Tensor>& r,
                         const std::optional<at::Tensor>& g, double alpha) {
  check_jtj_accumulate_args(A, J, r, g);
  TORCH_INTERNAL_ASSERT(A.device().is_cuda());
  const c10::cuda::OptionalCUDAGuard guard(A.device());
  const at::Tensor Jc = J.contiguous();
  const at::Tensor rc = r.has_value() ? r->contiguous() : at::Tensor();
  const int64_t rows = Jc.size(0);
  TORCH_CHECK(A.size(0) <= INT32_MAX, "marquardt::jtj_accumulate_: n must fit in int32");
  const int n = static_cast<int>(A.size(0));
  auto stream = at::cuda::getCurrentCUDAStream();
  const SyrkConfig& config = syrk_config();

  if (A.scalar_type() == at::kDouble && config.f64_on_cublas) {
    // H100-class GPUs run float64 GEMMs on tensor cores (DMMA), which only cuBLAS reaches here; our FFMA
    // kernel managed about half of cuBLAS's DGEMM rate (BENCHMARKS.md). So for float64 the triangle is
    // formed from cuBLAS GEMM tiles (recursive halving, leaves of 512), then mirrored by our kernel.
    syrk_upper_recursive(A, Jc, alpha, /*leaf=*/512);
    if (r.has_value()) g->addmv_(Jc.t(), rc, 1.0, alpha);
    launch_mirror<double>(A, stream);
    return;
  }

  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "jtj_accumulate_cuda", [&] {
    constexpr int BM = 32 * Vec<scalar_t>::width;
    const int nb = (n + BM - 1) / BM;
    const int64_t tiles = static_cast<int64_t>(nb) * (nb + 1) / 2;
    // Split the rows when the tiles alone cannot fill two blocks per SM, keeping >= 512 rows per split.
    int64_t splits = std::max<int64_t>(1, (2 * sms + tiles - 1) / tiles);
    splits = std::min<int64_t>(splits, std::max<int64_t>(1, rows / 512));
    splits = std::min<int64_t>(splits, 65535);
    int64_t rows_per_split = (rows + splits - 1) / splits;
    rows_per_split = (rows_per_split + config.slab - 1) / config.slab * config.slab;
    splits = (rows + rows_per_split - 1) / rows_per_split;
    const bool vec_ok = n % Vec<scalar_t>::width == 0 &&
                        reinterpret_cast<uintptr_t>(Jc.const_data_ptr()) % 16 == 0;
    const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(splits));
    pick_kernel<scalar_t>(config)<<<grid, kThreads, 0, stream>>>(
        A.data_ptr<scalar_t>(), Jc.const_data_ptr<scalar_t>(), r.has_value() ? rc.const_data_ptr<scalar_t>() : nullptr,
        g.has_value() ? g->data_ptr<scalar_t>() : nullptr, rows, n, nb, rows_per_split, static_cast<scalar_t>(alpha),
        splits > 1, vec_ok);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    launch_mirror<scalar_t>(A, stream);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(marquardt, CUDA, m) { m.impl("jtj_accumulate_", &jtj_accumulate_cuda); }

}  // namespace marquardt
