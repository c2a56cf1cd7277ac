// SPDX-License-Identifier: BSD-3-Clause
// CPU kernel of max_diag_update_: d = max(d, diag(A), floor), NaN diagonal entries ignored.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "ops.h"

namespace marquardt {
namespace {

void max_diag_update_cpu(const at::Tensor& d, const at::Tensor& A, double floor) {
  check_max_diag_update_args(d, A, floor);
  TORCH_INTERNAL_ASSERT(d.device().is_cpu());
  const int64_t n = d.size(0);
  const int64_t diag_stride = A.stride(0) + A.stride(1);
  AT_DISPATCH_FLOATING_TYPES(d.scalar_type(), "max_diag_update_cpu", [&] {
    scalar_t* dp = d.data_ptr<scalar_t>();
    const scalar_t* ap = A.const_data_ptr<scalar_t>();
    const scalar_t f = static_cast<scalar_t>(floor);
    for (int64_t i = 0; i < n; ++i) {
      scalar_t v = dp[i];
      const scalar_t a = ap[i * diag_stride];
      if (a > v) v = a;  // false for NaN: a NaN diagonal never enters d
      if (f > v) v = f;
      dp[i] = v;
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(marquardt, CPU, m) { m.impl("max_diag_update_", &max_diag_update_cpu); }

}  // namespace marquardt
