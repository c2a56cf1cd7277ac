// SPDX-License-Identifier: BSD-3-Clause
// cuSOLVER potrf/potrs for float and double behind one template, shared by the CUDA damped_cholesky_* ops.
// A row-major symmetric matrix read column-major is itself, so CUBLAS_FILL_MODE_LOWER there is our upper
// triangle: after potrf the row-major upper triangle holds U with A = UᵀU.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <algorithm>

#include "cuda/cusolver_handle.h"

namespace marquardt {

template <typename T>
struct Solver;
template <>
struct Solver<float> {
  static cusolverStatus_t buffer(cusolverDnHandle_t h, cublasFillMode_t u, int n, float* a, int lda, int* lw) {
    return cusolverDnSpotrf_bufferSize(h, u, n, a, lda, lw);
  }
  static cusolverStatus_t potrf(cusolverDnHandle_t h, cublasFillMode_t u, int n, float* a, int lda, float* w,
                                int lw, int* info) {
    return cusolverDnSpotrf(h, u, n, a, lda, w, lw, info);
  }
  static cusolverStatus_t potrs(cusolverDnHandle_t h, cublasFillMode_t u, int n, int k, const float* a, int lda,
                                float* b, int ldb, int* info) {
    return cusolverDnSpotrs(h, u, n, k, a, lda, b, ldb, info);
  }
};
template <>
struct Solver<double> {
  static cusolverStatus_t buffer(cusolverDnHandle_t h, cublasFillMode_t u, int n, double* a, int lda, int* lw) {
    return cusolverDnDpotrf_bufferSize(h, u, n, a, lda, lw);
  }
  static cusolverStatus_t potrf(cusolverDnHandle_t h, cublasFillMode_t u, int n, double* a, int lda, double* w,
                                int lw, int* info) {
    return cusolverDnDpotrf(h, u, n, a, lda, w, lw, info);
  }
  static cusolverStatus_t potrs(cusolverDnHandle_t h, cublasFillMode_t u, int n, int k, const double* a, int lda,
                                double* b, int ldb, int* info) {
    return cusolverDnDpotrs(h, u, n, k, a, lda, b, ldb, info);
  }
};

// Factors W in place on the current stream; info (int32, on the device) receives potrf's info, no sync.
inline void potrf_upper_inplace_cuda(const at::Tensor& W, const at::Tensor& info) {
  cusolverDnHandle_t handle = current_cusolver_handle();
  const int n = static_cast<int>(W.size(0));
  AT_DISPATCH_FLOATING_TYPES(W.scalar_type(), "potrf_upper_inplace_cuda", [&] {
    int lwork = 0;
    MARQUARDT_CUSOLVER_CHECK(Solver<scalar_t>::buffer(handle, CUBLAS_FILL_MODE_LOWER, n, W.data_ptr<scalar_t>(), n, &lwork));
    at::Tensor work = at::empty({std::max(lwork, 1)}, W.options());  // from the caching allocator
    MARQUARDT_CUSOLVER_CHECK(Solver<scalar_t>::potrf(handle, CUBLAS_FILL_MODE_LOWER, n, W.data_ptr<scalar_t>(), n,
                                                     work.data_ptr<scalar_t>(), lwork, info.data_ptr<int>()));
  });
  // As on the CPU: the first non-finite pivot before the one potrf failed on (an infinite pivot can leave an
  // infinite factor behind info = 0). Device-side tensor ops, no sync.
  const at::Tensor bad = W.diagonal().isfinite().logical_not();
  const at::Tensor first = at::where(bad.any(), bad.to(at::kInt).argmax().to(at::kInt) + 1, at::zeros_like(info));
  const at::Tensor earlier = first.gt(0).logical_and(info.eq(0).logical_or(first.lt(info)));
  info.copy_(at::where(earlier, first, info));
}

}  // namespace marquardt
