// SPDX-License-Identifier: BSD-3-Clause
// LAPACK Cholesky on a row-major symmetric matrix, shared by the CPU damped_cholesky_* ops.
// Row-major W read as column-major is Wᵀ = W, so LAPACK's column-major lower triangle is our upper one: after
// potrf_upper_inplace, the upper triangle of W holds U with (old W) = UᵀU.
#pragma once

#include <ATen/ATen.h>

namespace marquardt {

// True when libtorch exports LAPACK potrf/potrs for this dtype (MKL or OpenBLAS builds do).
bool lapack_cholesky_available(at::ScalarType dtype);
// Factors W in place (upper triangle read and written); returns LAPACK's info (0, or i > 0 for a failed minor).
// Where the AVX-512 SYRK runs and n > 384, blocked with the trailing updates on it; else LAPACK's potrf.
int potrf_upper_inplace(const at::Tensor& W);
// Solves UᵀU X = B in place for Xt = Xᵀ ([k, n] row-major, i.e. B column-major), U from potrf_upper_inplace.
void potrs_upper(const at::Tensor& U, const at::Tensor& Xt);

}  // namespace marquardt
