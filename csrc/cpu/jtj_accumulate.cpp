// SPDX-License-Identifier: BSD-3-Clause
// CPU kernel of jtj_accumulate_: A += alpha JᵀJ (upper triangle, then mirrored), g += alpha Jᵀr.
//
// Two ways to form the upper triangle, picked per call:
//  * "avx512" (default where the CPU has AVX-512): our packed register-tile SYRK (syrk_avx512.cpp), with the
//    columns of A split between threads into ranges of equal triangle area;
//  * "gemm": GEMMs on views through ATen, so torch's BLAS (syrk_on_gemm.cpp), the portable path.
// MARQUARDT_CPU_SYRK=auto|avx512|gemm overrides the choice (tests run both; benchmarks compare them).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "cpu/syrk_avx512.h"
#include "ops.h"
#include "syrk_on_gemm.h"

namespace marquardt {
namespace {

enum class SyrkPath { kAvx512, kGemm };

SyrkPath choose_syrk_path() {
  const char* env = std::getenv("MARQUARDT_CPU_SYRK");
  const bool have_avx512 = cpu::syrk_avx512_supported();
  if (env == nullptr || *env == '\0' || std::strcmp(env, "auto") == 0) {
    return have_avx512 ? SyrkPath::kAvx512 : SyrkPath::kGemm;
  }
  if (std::strcmp(env, "gemm") == 0) return SyrkPath::kGemm;
  TORCH_CHECK(std::strcmp(env, "avx512") == 0,
              "marquardt: the environment variable MARQUARDT_CPU_SYRK must be 'auto', 'avx512' or 'gemm', got '", env, "'");
  TORCH_CHECK(have_avx512, "marquardt: MARQUARDT_CPU_SYRK=avx512 but this CPU has no AVX-512 (use 'auto' or 'gemm')");
  return SyrkPath::kAvx512;
}

}  // namespace

std::string cpu_syrk_kernel() { return choose_syrk_path() == SyrkPath::kAvx512 ? "avx512" : "gemm"; }

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

// A's upper triangle += alpha JᵀJ and, when r is defined, g += alpha Jᵀr, in one pass over J.
void syrk_upper_avx512_parallel(const at::Tensor& A, const at::Tensor& J, const at::Tensor& r, const at::Tensor& g,
                                double alpha) {
  const int64_t rows = J.size(0), n = J.size(1);
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "jtj_accumulate_avx512", [&] {
    constexpr int64_t kTileCols = 64 / sizeof(scalar_t) * 3;  // the kernel's register tile width
    const double flops = static_cast<double>(rows) * static_cast<double>(n) * static_cast<double>(n);
    // One part per thread (parts of equal area, each a run of whole tiles). Waking the thread team costs
    // microseconds, what the kernel needs for ~1e6 flops, so small jobs stay on one thread; and a part needs
    // two tile columns at least, or the tile-aligned cuts leave the parts unequal (float32 1000 x 100 was
    // 1.4x slower on two threads than on one).
    const int64_t parts =
        flops < 1e6 ? 1 : std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n / (2 * kTileCols)));
    const std::vector<int64_t> cuts = equal_area_column_cuts(n, parts, kTileCols);
    const scalar_t* x = J.const_data_ptr<scalar_t>();
    scalar_t* a = A.mutable_data_ptr<scalar_t>();
    const scalar_t* rp = r.defined() ? r.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* gp = r.defined() ? g.mutable_data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        cpu::syrk_upper_avx512<scalar_t>(rows, x, J.stride(0), J.stride(1), a, n, rp, gp,
                                         static_cast<scalar_t>(alpha), cuts[t], cuts[t + 1]);
      }
    });
  });
}

void jtj_accumulate_cpu(const at::Tensor& A, const at::Tensor& J, const std::optional<at::Tensor>& r,
                        const std::optional<at::Tensor>& g, double alpha) {
  check_jtj_accumulate_args(A, J, r, g);
  TORCH_INTERNAL_ASSERT(A.device().is_cpu());
  // Both kernels read a transposed operand as cheaply as a plain one, so the transpose of a contiguous
  // matrix (how the dual system passes 𝒥ᵀ to form 𝒥𝒥ᵀ) is used as it is instead of being copied.
  const at::Tensor Jc = J.t().is_contiguous() ? J : J.contiguous();  // [rows, n]
  if (choose_syrk_path() == SyrkPath::kAvx512) {
    // Jᵀr comes from the packed panels, so J is read once.
    syrk_upper_avx512_parallel(A, Jc, r.has_value() ? r->contiguous() : at::Tensor(),
                               g.has_value() ? *g : at::Tensor(), alpha);
  } else {
    if (A.scalar_type() == at::kFloat) {
      // MKL runs thin-M float64 GEMMs well and square-ish float32 GEMMs best: on the 2-core dev machine
      // (rows=8192, n=2048) block rows of 256 won for float64 and recursion to 128 for float32 (BENCHMARKS.md).
      syrk_upper_recursive(A, Jc, alpha, /*leaf=*/128);
    } else {
      syrk_upper_block_rows(A, Jc, alpha, /*width=*/256);
    }
    if (r.has_value()) g->addmv_(Jc.t(), *r, 1.0, alpha);
  }
  mirror_upper(A, /*block=*/64);
}

}  // namespace

TORCH_LIBRARY_IMPL(marquardt, CPU, m) { m.impl("jtj_accumulate_", &jtj_accumulate_cpu); }

}  // namespace marquardt
