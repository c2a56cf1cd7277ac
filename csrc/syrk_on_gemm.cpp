// SPDX-License-Identifier: BSD-3-Clause
#include "syrk_on_gemm.h"

#include <algorithm>

namespace marquardt {
namespace {

void recurse(const at::Tensor& A, const at::Tensor& J, int64_t i0, int64_t m, double alpha, int64_t leaf) {
  if (m <= leaf) {
    const at::Tensor Ji = J.narrow(1, i0, m);
    A.narrow(0, i0, m).narrow(1, i0, m).addmm_(Ji.t(), Ji, /*beta=*/1.0, /*alpha=*/alpha);
    return;
  }
  // Split on a multiple of 64 so the sub-blocks stay aligned for the vectorised GEMM kernels.
  const int64_t h = std::max<int64_t>(64, (m / 2 + 63) / 64 * 64);
  recurse(A, J, i0, h, alpha, leaf);
  recurse(A, J, i0 + h, m - h, alpha, leaf);
  A.narrow(0, i0, h).narrow(1, i0 + h, m - h).addmm_(J.narrow(1, i0, h).t(), J.narrow(1, i0 + h, m - h), 1.0, alpha);
}

}  // namespace

void syrk_upper_block_rows(const at::Tensor& A, const at::Tensor& J, double alpha, int64_t width) {
  const int64_t n = A.size(0);
  for (int64_t i0 = 0; i0 < n; i0 += width) {
    const int64_t b = std::min(width, n - i0);
    A.narrow(0, i0, b).narrow(1, i0, n - i0).addmm_(J.narrow(1, i0, b).t(), J.narrow(1, i0, n - i0), 1.0, alpha);
  }
}

void syrk_upper_recursive(const at::Tensor& A, const at::Tensor& J, double alpha, int64_t leaf) {
  recurse(A, J, 0, A.size(0), alpha, leaf);
}

void mirror_upper(const at::Tensor& A, int64_t block) {
  const int64_t n = A.size(0);
  for (int64_t i0 = 0; i0 < n; i0 += block) {
    const int64_t bi = std::min(block, n - i0);
    if (i0 > 0) A.narrow(0, i0, bi).narrow(1, 0, i0).copy_(A.narrow(0, 0, i0).narrow(1, i0, bi).t());
    // Diagonal blocks came from a full GEMM, whose rounding need not be symmetric.
    at::Tensor D = A.narrow(0, i0, bi).narrow(1, i0, bi);
    if (bi > 1) D.copy_(at::triu(D) + at::triu(D, 1).t());
  }
}

}  // namespace marquardt
