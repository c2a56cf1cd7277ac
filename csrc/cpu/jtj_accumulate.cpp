// SPDX-License-Identifier: BSD-3-Clause
// CPU kernel of jtj_accumulate_: A += alpha JᵀJ (upper triangle by block rows, then mirrored), g += alpha Jᵀr.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>

#include "ops.h"

namespace marquardt {
namespace {

// Two ways to compute the upper triangle of JᵀJ from BLAS GEMMs (ATen addmm_ on views), both with about
// rows * n * (n + b) / 2 flops instead of rows * n^2:
//  * block rows of width b: A[i, i:] += J[:, i]ᵀ J[:, i:], one wide GEMM per block row;
//  * recursive halving: A11 += J1ᵀJ1 and A22 += J2ᵀJ2 (recurse), A12 += J1ᵀJ2 (one large GEMM), with leaf
//    blocks of at most b columns done as full GEMMs.
// MKL runs thin-M float64 GEMMs well and square-ish float32 GEMMs best, so on the 2-core dev machine
// (rows=8192, n=2048) block rows of 256 won for float64 and recursion to 128 for float32 (BENCHMARKS.md).
constexpr int64_t kBlockRows = 256;
constexpr int64_t kRecursiveLeaf = 128;

void syrk_upper_block_rows(const at::Tensor& A, const at::Tensor& J, double alpha) {
  const int64_t n = A.size(0);
  for (int64_t i0 = 0; i0 < n; i0 += kBlockRows) {
    const int64_t b = std::min(kBlockRows, n - i0);
    A.narrow(0, i0, b).narrow(1, i0, n - i0).addmm_(J.narrow(1, i0, b).t(), J.narrow(1, i0, n - i0), 1.0, alpha);
  }
}

void syrk_upper_recursive(const at::Tensor& A, const at::Tensor& J, int64_t i0, int64_t m, double alpha) {
  if (m <= kRecursiveLeaf) {
    const at::Tensor Ji = J.narrow(1, i0, m);
    A.narrow(0, i0, m).narrow(1, i0, m).addmm_(Ji.t(), Ji, /*beta=*/1.0, /*alpha=*/alpha);
    return;
  }
  // Split on a multiple of 64 so the sub-blocks stay aligned for the vectorised GEMM kernels.
  const int64_t h = std::max<int64_t>(64, (m / 2 + 63) / 64 * 64);
  syrk_upper_recursive(A, J, i0, h, alpha);
  syrk_upper_recursive(A, J, i0 + h, m - h, alpha);
  A.narrow(0, i0, h).narrow(1, i0 + h, m - h).addmm_(J.narrow(1, i0, h).t(), J.narrow(1, i0 + h, m - h), 1.0, alpha);
}

// Lower triangle := transpose of the upper one, block row by block row (no n x n temporary). Diagonal
// blocks were computed in full by BLAS, whose rounding need not be symmetric, so they are mirrored too.
void mirror_upper(const at::Tensor& A) {
  const int64_t n = A.size(0);
  for (int64_t i0 = 0; i0 < n; i0 += kBlockRows) {
    const int64_t bi = std::min(kBlockRows, n - i0);
    if (i0 > 0) A.narrow(0, i0, bi).narrow(1, 0, i0).copy_(A.narrow(0, 0, i0).narrow(1, i0, bi).t());
    at::Tensor D = A.narrow(0, i0, bi).narrow(1, i0, bi);
    if (bi > 1) D.copy_(at::triu(D) + at::triu(D, 1).t());
  }
}

void jtj_accumulate_cpu(const at::Tensor& A, const at::Tensor& J, const std::optional<at::Tensor>& r,
                        const std::optional<at::Tensor>& g, double alpha) {
  check_jtj_accumulate_args(A, J, r, g);
  TORCH_INTERNAL_ASSERT(A.device().is_cpu());
  const at::Tensor Jc = J.contiguous();  // [rows, n]
  if (A.scalar_type() == at::kFloat) {
    syrk_upper_recursive(A, Jc, 0, A.size(0), alpha);
  } else {
    syrk_upper_block_rows(A, Jc, alpha);
  }
  if (r.has_value()) g->addmv_(Jc.t(), *r, 1.0, alpha);
  mirror_upper(A);
}

}  // namespace

TORCH_LIBRARY_IMPL(marquardt, CPU, m) { m.impl("jtj_accumulate_", &jtj_accumulate_cpu); }

}  // namespace marquardt
