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

bool use_avx512_syrk(bool single_precision, int64_t rows, int64_t n) {
  const bool tall_and_narrow_float = single_precision && n < kSyrkAvx512TileCols<float> && rows * n >= (1 << 20);
  return use_avx512_syrk() && !tall_and_narrow_float;
}

namespace {

// Tall and narrow J (too few tile columns to give every thread a column range): the rows are split instead.
// Each part accumulates its rows into a private n x n matrix (part 0 straight into C), and the parts are
// summed at the end, so the threads never write the same memory. The sums then depend on the number of
// parts, as any row-parallel reduction does; column splits do not change any entry's summation order.
template <typename T>
void syrk_split_rows(int64_t parts, int64_t rows, int64_t n, const T* x, int64_t row_stride, int64_t col_stride,
                     T* c, int64_t ldc, const T* r, T* g, T alpha) {
  std::vector<T> partial_c(static_cast<size_t>((parts - 1) * n * n), T(0));
  std::vector<T> partial_g(r != nullptr ? static_cast<size_t>((parts - 1) * n) : 0, T(0));
  at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t r0 = rows * t / parts, r1 = rows * (t + 1) / parts;
      T* ct = t == 0 ? c : partial_c.data() + (t - 1) * n * n;
      T* gt = r == nullptr ? nullptr : (t == 0 ? g : partial_g.data() + (t - 1) * n);
      syrk_upper_avx512<T>(r1 - r0, x + r0 * row_stride, row_stride, col_stride, ct, t == 0 ? ldc : n,
                           r == nullptr ? nullptr : r + r0, gt, alpha, 0, n);
    }
  });
  for (int64_t t = 1; t < parts; ++t) {
    const T* ct = partial_c.data() + (t - 1) * n * n;
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = i; j < n; ++j) c[i * ldc + j] += ct[i * n + j];
    }
    if (r != nullptr) {
      for (int64_t j = 0; j < n; ++j) g[j] += partial_g[(t - 1) * n + j];
    }
  }
}

}  // namespace

template <typename T>
void syrk_upper_avx512_threads(int64_t rows, int64_t n, const T* x, int64_t row_stride, int64_t col_stride, T* c,
                               int64_t ldc, const T* r, T* g, T alpha) {
  constexpr int64_t kTileCols = kSyrkAvx512TileCols<T>;
  const double flops = static_cast<double>(rows) * static_cast<double>(n) * static_cast<double>(n);
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  // Waking the thread team costs microseconds, what the kernel needs for ~1e6 flops: small jobs stay on one
  // thread. Otherwise one part per thread, by columns when there are at least two tile columns per part (with
  // fewer, the tile-aligned cuts leave the parts unequal: float32 1000 x 100 was 1.4x slower on two threads
  // than on one), else by rows when each part gets a few hundred rows and the private n x n sums stay small.
  const int64_t column_parts = std::max<int64_t>(1, std::min<int64_t>(threads, n / (2 * kTileCols)));
  const int64_t row_parts = std::min<int64_t>(threads, rows / 256);
  if (flops >= 1e6 && column_parts < threads && row_parts > column_parts && n <= 1024) {
    syrk_split_rows<T>(row_parts, rows, n, x, row_stride, col_stride, c, ldc, r, g, alpha);
    return;
  }
  const int64_t parts = flops < 1e6 ? 1 : column_parts;
  // Parts of equal triangle area, each a run of whole tiles.
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
