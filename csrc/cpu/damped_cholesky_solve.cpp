// SPDX-License-Identifier: BSD-3-Clause
// CPU kernel of damped_cholesky_solve: one n x n workspace W = A + lam diag(d), factored in place by
// LAPACK potrf and used by potrs. ATen's linalg_cholesky + cholesky_solve would allocate the factor and
// then clone it again inside cholesky_solve (three n x n buffers); calling LAPACK directly keeps one.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <limits>

#include "cpu/lapack_cholesky.h"
#include "ops.h"

namespace marquardt {
namespace {

std::tuple<at::Tensor, at::Tensor> damped_cholesky_solve_cpu(const at::Tensor& A, const at::Tensor& d, double lam,
                                                             const at::Tensor& B) {
  check_damped_cholesky_solve_args(A, d, lam, B);
  TORCH_INTERNAL_ASSERT(A.device().is_cpu());
  const int64_t n = A.size(0);
  const int64_t k = B.dim() == 1 ? 1 : B.size(1);
  TORCH_CHECK(n <= INT32_MAX && k <= INT32_MAX, "marquardt::damped_cholesky_solve: n and k must fit in int32 for LAPACK");

  at::Tensor W = A.clone(at::MemoryFormat::Contiguous);  // the one n x n workspace
  add_damping_(W.diagonal(), d, lam);
  // A copy even when B is already laid out right: B is an input and must not be overwritten. X is stored
  // column-major ([k, n] row-major), as LAPACK wants the right-hand sides.
  at::Tensor Xt = (B.dim() == 1 ? B.unsqueeze(0) : B.t()).clone(at::MemoryFormat::Contiguous);
  int info = 0;
  if (lapack_cholesky_available(A.scalar_type())) {
    info = potrf_upper_inplace(W);
    if (info == 0) {
      potrs_upper(W, Xt);
    } else {
      Xt.fill_(std::numeric_limits<double>::quiet_NaN());
    }
  } else {
    // Fallback without exported LAPACK: ATen's factorisation (extra n x n buffers, same result).
    auto [L, info_t] = at::linalg_cholesky_ex(W.triu() + W.triu(1).t(), /*upper=*/false, /*check_errors=*/false);
    info = info_t.item<int>();
    Xt = info == 0 ? at::cholesky_solve(Xt.t(), L).t().contiguous() : Xt.fill_(NAN);
  }
  at::Tensor X = B.dim() == 1 ? Xt.squeeze(0) : Xt.t().contiguous();
  return {X, at::scalar_tensor(info, A.options().dtype(at::kInt))};
}

}  // namespace

TORCH_LIBRARY_IMPL(marquardt, CPU, m) { m.impl("damped_cholesky_solve", &damped_cholesky_solve_cpu); }

}  // namespace marquardt
