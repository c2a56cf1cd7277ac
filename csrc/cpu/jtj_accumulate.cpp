// SPDX-License-Identifier: BSD-3-Clause
// CPU kernel of jtj_accumulate_: A += alpha JᵀJ (upper triangle, then mirrored), g += alpha Jᵀr.
//
// Two ways to form the upper triangle, picked per call (cpu/syrk_dispatch.h):
//  * "avx512" (default where the CPU has AVX-512): our packed register-tile SYRK (syrk_avx512.cpp), with the
//    columns of A split between threads into ranges of equal triangle area;
//  * "gemm": GEMMs on views through ATen, so torch's BLAS (syrk_on_gemm.cpp), the portable path.
// MARQUARDT_CPU_SYRK=auto|avx512|gemm overrides the choice (tests run both; benchmarks compare them).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <optional>

#include "cpu/syrk_dispatch.h"
#include "ops.h"
#include "syrk_on_gemm.h"

namespace marquardt {
namespace {

void jtj_accumulate_cpu(const at::Tensor& A, const at::Tensor& J, const std::optional<at::Tensor>& r,
                        const std::optional<at::Tensor>& g, double alpha) {
  check_jtj_accumulate_args(A, J, r, g);
  TORCH_INTERNAL_ASSERT(A.device().is_cpu());
  // Both kernels read a transposed operand as cheaply as a plain one, so the transpose of a contiguous
  // matrix (how the dual system passes 𝒥ᵀ to form 𝒥𝒥ᵀ) is used as it is instead of being copied.
  const at::Tensor Jc = J.t().is_contiguous() ? J : J.contiguous();  // [rows, n]
  if (cpu::use_avx512_syrk(A.scalar_type() == at::kFloat, Jc.size(0), Jc.size(1))) {
    // Jᵀr comes from the packed panels, so J is read once.
    const at::Tensor rc = r.has_value() ? r->contiguous() : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "jtj_accumulate_avx512", [&] {
      cpu::syrk_upper_avx512_threads<scalar_t>(
          Jc.size(0), Jc.size(1), Jc.const_data_ptr<scalar_t>(), Jc.stride(0), Jc.stride(1),
          A.mutable_data_ptr<scalar_t>(), A.size(0), rc.defined() ? rc.const_data_ptr<scalar_t>() : nullptr,
          rc.defined() ? g->mutable_data_ptr<scalar_t>() : nullptr, static_cast<scalar_t>(alpha));
    });
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
