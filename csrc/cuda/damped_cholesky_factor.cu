// SPDX-License-Identifier: BSD-3-Clause
// CUDA kernel of damped_cholesky_factor: U with UᵀU = A + lam diag(d) by cuSOLVER potrf, info on the device.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/cusolver_potrf.h"
#include "ops.h"

namespace marquardt {
namespace {

std::tuple<at::Tensor, at::Tensor> damped_cholesky_factor_cuda(const at::Tensor& A, const at::Tensor& d, double lam) {
  check_damped_cholesky_factor_args(A, d, lam);
  TORCH_INTERNAL_ASSERT(A.device().is_cuda());
  const c10::cuda::OptionalCUDAGuard guard(A.device());
  TORCH_CHECK(A.size(0) <= INT32_MAX, "marquardt::damped_cholesky_factor: n must fit in int32");
  at::Tensor U = A.clone(at::MemoryFormat::Contiguous);
  add_damping_(U.diagonal(), d, lam);
  at::Tensor info = at::zeros({}, A.options().dtype(at::kInt));
  potrf_upper_inplace_cuda(U, info);
  U.triu_();  // the strictly lower part still holds A's entries
  return {U, info};
}

}  // namespace

TORCH_LIBRARY_IMPL(marquardt, CUDA, m) { m.impl("damped_cholesky_factor", &damped_cholesky_factor_cuda); }

}  // namespace marquardt
