// SPDX-License-Identifier: BSD-3-Clause
// CPU kernel of jtj_accumulate_: A += alpha JᵀJ (upper triangle by block rows, then mirrored), g += alpha Jᵀr.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>

#include "ops.h"
#include "syrk_on_gemm.h"

namespace marquardt {
namespace {

void jtj_accumulate_cpu(const at::Tensor& A, const at::Tensor& J, const std::optional<at::Tensor>& r,
                        const std::optional<at::Tensor>& g, double alpha) {
  check_jtj_accumulate_args(A, J, r, g);
  TORCH_INTERNAL_ASSERT(A.device().is_cpu());
  // BLAS reads a transposed operand as cheaply as a plain one, so the transpose of a contiguous matrix
  // (how the dual system passes 𝒥ᵀ to form 𝒥𝒥ᵀ) is used as it is instead of being copied.
  const at::Tensor Jc = J.t().is_contiguous() ? J : J.contiguous();  // [rows, n]
  // MKL runs thin-M float64 GEMMs well and square-ish float32 GEMMs best: on the 2-core dev machine
  // (rows=8192, n=2048) block rows of 256 won for float64 and recursion to 128 for float32 (BENCHMARKS.md).
  if (A.scalar_type() == at::kFloat) {
    syrk_upper_recursive(A, Jc, alpha, /*leaf=*/128);
  } else {
    syrk_upper_block_rows(A, Jc, alpha, /*width=*/256);
  }
  if (r.has_value()) g->addmv_(Jc.t(), *r, 1.0, alpha);
  mirror_upper(A, /*block=*/64);
}

}  // namespace

TORCH_LIBRARY_IMPL(marquardt, CPU, m) { m.impl("jtj_accumulate_", &jtj_accumulate_cpu); }

}  // namespace marquardt
