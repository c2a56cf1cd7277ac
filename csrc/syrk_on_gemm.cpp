// SPDX-License-Identifier: BSD-3-Clause
#include "syrk_on_gemm.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

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
  TORCH_INTERNAL_ASSERT(A.is_contiguous() && A.device().is_cpu());
  const int64_t n = A.size(0);
  const int64_t tiles = (n + block - 1) / block;
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "mirror_upper", [&] {
    scalar_t* a = A.data_ptr<scalar_t>();
    // Tile row t holds t + 1 tiles below the diagonal: interleaving short and long rows (0, T-1, 1, T-2, ...)
    // gives each thread's contiguous share of the range about the same work.
    at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
      constexpr int64_t kSub = 16;
      scalar_t buf[kSub][kSub];
      for (int64_t k = begin; k < end; ++k) {
        const int64_t t = (k % 2 == 0) ? k / 2 : tiles - 1 - k / 2;
        const int64_t i_end = std::min(n, (t + 1) * block);
        for (int64_t i0 = t * block; i0 < i_end; i0 += kSub) {
          const int64_t bi = std::min(kSub, n - i0);
          for (int64_t j0 = 0; j0 <= i0; j0 += kSub) {
            const int64_t bj = std::min(kSub, n - j0);
            // Through a small buffer: the upper block's rows are read contiguously, once. (Reading a column
            // directly strides by n, a power of two here, and thrashes one cache set.)
            for (int64_t jj = 0; jj < bj; ++jj) {
              const scalar_t* src = a + (j0 + jj) * n + i0;
              for (int64_t ii = 0; ii < bi; ++ii) buf[ii][jj] = src[ii];
            }
            // Below the diagonal only; diagonal blocks came from a full GEMM, whose rounding need not be
            // symmetric, so their lower half is overwritten too.
            for (int64_t ii = 0; ii < bi; ++ii) {
              scalar_t* dst = a + (i0 + ii) * n + j0;
              const int64_t jend = std::min(bj, i0 + ii - j0);
              for (int64_t jj = 0; jj < jend; ++jj) dst[jj] = buf[ii][jj];
            }
          }
        }
      }
    });
  });
}

}  // namespace marquardt
