// SPDX-License-Identifier: BSD-3-Clause
// CPU kernel of damped_cholesky_factor: U with UᵀU = A + lam diag(d), A untouched, one n x n output.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cpu/lapack_cholesky.h"
#include "ops.h"

namespace marquardt {
namespace {

std::tuple<at::Tensor, at::Tensor> damped_cholesky_factor_cpu(const at::Tensor& A, const at::Tensor& d, double lam) {
  check_damped_cholesky_factor_args(A, d, lam);
  TORCH_INTERNAL_ASSERT(A.device().is_cpu());
  TORCH_CHECK(A.size(0) <= INT32_MAX, "marquardt::damped_cholesky_factor: n must fit in int32 for LAPACK");
  at::Tensor U = A.clone(at::MemoryFormat::Contiguous);
  add_damping_(U.diagonal(), d, lam);
  int info = 0;
  if (lapack_cholesky_available(A.scalar_type())) {
    info = potrf_upper_inplace(U);
    U.triu_();  // the strictly lower part still holds A's entries
  } else {
    auto [R, info_t] = at::linalg_cholesky_ex(U.triu() + U.triu(1).t(), /*upper=*/true, /*check_errors=*/false);
    info = info_t.item<int>();
    U = R;
  }
  return {U, at::scalar_tensor(info, A.options().dtype(at::kInt))};
}

}  // namespace

TORCH_LIBRARY_IMPL(marquardt, CPU, m) { m.impl("damped_cholesky_factor", &damped_cholesky_factor_cpu); }

}  // namespace marquardt
