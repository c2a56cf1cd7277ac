// SPDX-License-Identifier: BSD-3-Clause
// CUDA kernel of damped_cholesky_solve: W = A + lam diag(d) in one workspace, cuSOLVER potrf + potrs on the
// current stream, workspace from the caching allocator, info left on the device (no host sync here).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/cusolver_potrf.h"
#include "ops.h"

namespace marquardt {
namespace {

std::tuple<at::Tensor, at::Tensor> damped_cholesky_solve_cuda(const at::Tensor& A, const at::Tensor& d, double lam,
                                                              const at::Tensor& B) {
  check_damped_cholesky_solve_args(A, d, lam, B);
  TORCH_INTERNAL_ASSERT(A.device().is_cuda());
  const c10::cuda::OptionalCUDAGuard guard(A.device());
  const int64_t n = A.size(0);
  const int64_t k = B.dim() == 1 ? 1 : B.size(1);
  TORCH_CHECK(n <= INT32_MAX && k <= INT32_MAX, "marquardt::damped_cholesky_solve: n and k must fit in int32");

  at::Tensor W = A.clone(at::MemoryFormat::Contiguous);  // the one n x n workspace
  add_damping_(W.diagonal(), d, lam);
  // A copy even when B is already laid out right: B is an input and must not be overwritten.
  at::Tensor Xt = (B.dim() == 1 ? B.unsqueeze(0) : B.t()).clone(at::MemoryFormat::Contiguous);
  at::Tensor info = at::zeros({}, A.options().dtype(at::kInt));
  at::Tensor info_potrs = at::empty({}, A.options().dtype(at::kInt));
  potrf_upper_inplace_cuda(W, info);
  cusolverDnHandle_t handle = current_cusolver_handle();
  const int ni = static_cast<int>(n), ki = static_cast<int>(k);
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "damped_cholesky_solve_cuda", [&] {
    // potrs runs even when potrf failed (checking would need a sync); X is unspecified then, as documented.
    MARQUARDT_CUSOLVER_CHECK(Solver<scalar_t>::potrs(handle, CUBLAS_FILL_MODE_LOWER, ni, ki, W.const_data_ptr<scalar_t>(),
                                                     ni, Xt.data_ptr<scalar_t>(), ni, info_potrs.data_ptr<int>()));
  });
  at::Tensor X = B.dim() == 1 ? Xt.squeeze(0) : Xt.t().contiguous();
  return {X, info};
}

}  // namespace

TORCH_LIBRARY_IMPL(marquardt, CUDA, m) { m.impl("damped_cholesky_solve", &damped_cholesky_solve_cuda); }

}  // namespace marquardt
