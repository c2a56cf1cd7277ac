// SPDX-License-Identifier: BSD-3-Clause
#include "cpu/syrk_dispatch.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cpu/syrk_avx512.h"
#include "ops.h"

namespace marquardt {
namespace cpu {
namespace {

// Column boundaries c_0 = 0 < ... < c_parts = n such that each range [c_t, c_t+1) holds the same share of
// the upper triangle (column j has j + 1 entries on or above the diagonal): c_t = n sqrt(t / parts).
// Boundaries are rounded to multiples of `align` (the kernel's tile width) so no tile is split.
std::vector<int64_t> equal_area_column_cuts(int64_t n, int64_t parts, int64_t align) {
  std::vector<int64_t> cuts(parts + 1, n);
  cuts[0] = 0;
  for (int64_t t = 1; t < parts; ++t) {
    const double c = static_cast<double>(n) * std::sqrt(static_cast<double>(t) / static_cast<double>(parts));
    cuts[t] = std::clamp<int64_t>(std::llround(c / align) * align, cuts[t - 1], n);
  }
  return cuts;
}

}  // namespace

bool use_avx512_syrk() {
  const char* env = std::getenv("MARQUARDT_CPU_SYRK");
  const bool have_avx512 = syrk_avx512_supported();
  if (env == nullptr || *env == '\0' || std::strcmp(env, "auto") == 0) return have_avx512;
  if (std::strcmp(env, "gemm") == 0) return false;
  TORCH_CHECK(std::strcmp(env, "avx512") == 0,
              "marquardt: the environment variable MARQUARDT_CPU_SYRK must be 'auto', 'avx512' or 'gemm', got '", env,
              "'");
  TORCH_CHECK(have_avx512, "marquardt: MARQUARDT_CPU_SYRK=avx512 but this CPU has no AVX-512 (use 'auto' or 'gemm')");
  return true;
}

template <typename T>
void syrk_upper_avx512_threads(int64_t rows, int64_t n, const T* x, int64_t row_stride, int64_t col_stride, T* c,
                               int64_t ldc, const T* r, T* g, T alpha) {
  constexpr int64_t kTileCols = 64 / sizeof(T) * 3;  // the kernel's register tile width
  const double flops = static_cast<double>(rows) * static_cast<double>(n) * static_cast<double>(n);
  // One part per thread (parts of equal area, each a run of whole tiles). Waking the thread team costs
  // microseconds, what the kernel needs for ~1e6 flops, so small jobs stay on one thread; and a part needs
  // two tile columns at least, or the tile-aligned cuts leave the parts unequal (float32 1000 x 100 was
  // 1.4x slower on two threads than on one).
  const int64_t parts =
      flops < 1e6 ? 1 : std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n / (2 * kTileCols)));
  const std::vector<int64_t> cuts = equal_area_column_cuts(n, parts, kTileCols);
  at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      syrk_upper_avx512<T>(rows, x, row_stride, col_stride, c, ldc, r, g, alpha, cuts[t], cuts[t + 1]);
    }
  });
}

template void syrk_upper_avx512_threads<float>(int64_t, int64_t, const float*, int64_t, int64_t, float*, int64_t,
                                               const float*, float*, float);
template void syrk_upper_avx512_threads<double>(int64_t, int64_t, const double*, int64_t, int64_t, double*, int64_t,
                                                const double*, double*, double);

}  // namespace cpu

std::string cpu_syrk_kernel() { return cpu::use_avx512_syrk() ? "avx512" : "gemm"; }

}  // namespace marquardt
