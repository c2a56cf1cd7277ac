// SPDX-License-Identifier: BSD-3-Clause
// CUDA kernel of max_diag_update_: d = max(d, diag(A), floor), NaN diagonal entries ignored.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "ops.h"

namespace marquardt {
namespace {

template <typename T>
__global__ void max_diag_update_kernel(T* __restrict__ d, const T* __restrict__ A, int64_t n, int64_t diag_stride,
                                       T floor) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  T v = d[i];
  const T a = A[i * diag_stride];
  if (a > v) v = a;  // false for NaN
  if (floor > v) v = floor;
  d[i] = v;
}

void max_diag_update_cuda(const at::Tensor& d, const at::Tensor& A, double floor) {
  check_max_diag_update_args(d, A, floor);
  TORCH_INTERNAL_ASSERT(d.device().is_cuda());
  const c10::cuda::OptionalCUDAGuard guard(d.device());
  const int64_t n = d.size(0);
  const int threads = 256;
  const int64_t blocks = (n + threads - 1) / threads;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(d.scalar_type(), "max_diag_update_cuda", [&] {
    max_diag_update_kernel<scalar_t><<<blocks, threads, 0, stream>>>(
        d.data_ptr<scalar_t>(), A.const_data_ptr<scalar_t>(), n, A.stride(0) + A.stride(1), static_cast<scalar_t>(floor));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(marquardt, CUDA, m) { m.impl("max_diag_update_", &max_diag_update_cuda); }

}  // namespace marquardt
