// SPDX-License-Identifier: BSD-3-Clause
// CPU kernel of jtj_accumulate_: A += alpha JᵀJ (upper triangle by block rows, then mirrored), g += alpha Jᵀr.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>

#include "ops.h"

namespace marquardt {
namespace {

// Width of a block row. Block row i computes A[i, i:] = J[:, i]ᵀ J[:, i:] as one GEMM, so the flops are
// rows * n * (n + T) / 2: the smaller T, the closer to half of JᵀJ, but GEMMs thinner than ~128 lose
// BLAS efficiency. 128 was the best measured trade-off on the 2-core dev machine (BENCHMARKS.md).
int64_t block_rows(int64_t n) { return n <= 256 ? n : 128; }

void jtj_accumulate_cpu(const at::Tensor& A, const at::Tensor& J, const std::optional<at::Tensor>& r,
                        const std::optional<at::Tensor>& g, double alpha) {
  check_jtj_accumulate_args(A, J, r, g);
  TORCH_INTERNAL_ASSERT(A.device().is_cpu());
  const at::Tensor Jc = J.contiguous();  // [rows, n]
  const int64_t n = A.size(0);
  const int64_t T = block_rows(n);
  for (int64_t i0 = 0; i0 < n; i0 += T) {
    const int64_t bi = std::min(T, n - i0);
    const at::Tensor Ji = Jc.narrow(1, i0, bi);  // [rows, bi]
    at::Tensor A_row = A.narrow(0, i0, bi).narrow(1, i0, n - i0);
    A_row.addmm_(Ji.t(), Jc.narrow(1, i0, n - i0), /*beta=*/1.0, /*alpha=*/alpha);
    if (r.has_value()) {
      // The panel J[:, i] was just streamed through the GEMM; the matching slice of Jᵀr uses it again.
      at::Tensor g_i = g->narrow(0, i0, bi);
      g_i.addmv_(Ji.t(), *r, 1.0, alpha);
    }
  }
  // Mirror: each strictly-lower block of a block row is the transpose of an upper block computed above.
  // Diagonal blocks were computed in full by BLAS, whose rounding need not be symmetric; copy their upper
  // triangle down so that A is exactly symmetric.
  for (int64_t i0 = 0; i0 < n; i0 += T) {
    const int64_t bi = std::min(T, n - i0);
    if (i0 > 0) {
      A.narrow(0, i0, bi).narrow(1, 0, i0).copy_(A.narrow(0, 0, i0).narrow(1, i0, bi).t());
    }
    at::Tensor D = A.narrow(0, i0, bi).narrow(1, i0, bi);
    if (bi > 1) {
      D.copy_(at::triu(D) + at::triu(D, 1).t());
    }
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(marquardt, CPU, m) { m.impl("jtj_accumulate_", &jtj_accumulate_cpu); }

}  // namespace marquardt
