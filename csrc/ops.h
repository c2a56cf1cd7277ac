// SPDX-License-Identifier: BSD-3-Clause
// Contracts of the marquardt native ops. The schemas live in registration.cpp; every backend
// (cpu/*.cpp, cuda/*.cu) implements exactly these semantics and validates its arguments with the
// shared checks below, so a bad call fails the same way on every device.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>

namespace marquardt {

// jtj_accumulate_(A, J, r=None, g=None, alpha=1.0)
//   A: [n, n] float32/float64, contiguous, symmetric on entry; updated in place.
//   J: [rows, n], rows >= 1, same dtype and device as A (any strides; copied if not contiguous).
//   r: [rows] or None;  g: [n] contiguous or None; r and g are given together or not at all.
//   Effect: A += alpha * Jᵀ J and, when given, g += alpha * Jᵀ r.
//   Only the upper triangle of A is read and computed (SYRK-style, about half the flops of Jᵀ J);
//   the strictly lower triangle is then overwritten with the mirror of the upper one, so A is exactly
//   symmetric on return. Calling it once per row chunk of a Jacobian gives the same A as one call on the
//   whole Jacobian (up to rounding), which is how callers stream Jacobians they never hold in full.
void check_jtj_accumulate_args(const at::Tensor& A, const at::Tensor& J, const std::optional<at::Tensor>& r,
                               const std::optional<at::Tensor>& g);

// cpu_syrk_kernel() -> str
//   The kernel jtj_accumulate_ uses for CPU tensors, as chosen now: "avx512" (our packed SYRK, the default on
//   CPUs with AVX-512; the CPU damped_cholesky_* ops then factor n > 384 in blocks whose trailing updates run
//   on it) or "gemm" (GEMMs on views through torch's BLAS; LAPACK's potrf). The environment variable
//   MARQUARDT_CPU_SYRK=auto|avx512|gemm, read at each call, overrides the choice; a bad value, or avx512 on a
//   CPU without it, raises.
std::string cpu_syrk_kernel();

// max_diag_update_(d, A, floor=0.0)
//   d: [n] contiguous, A: [n, n] (any strides), same dtype and device.
//   Effect: d[i] = max(d[i], A[i, i], floor) in place. A NaN diagonal entry is ignored (d stays finite
//   if it was), because a poisoned Jacobian must not poison the running damping.
void check_max_diag_update_args(const at::Tensor& d, const at::Tensor& A, double floor);

// damped_cholesky_solve(A, d, lam, B) -> (X, info)
//   A: [n, n] symmetric (only its upper triangle is read), d: [n], lam >= 0 finite, B: [n] or [n, k].
//   Returns X with B's shape solving (A + lam * diag(d)) X = B, and info, an int32 tensor of shape [] on
//   A's device: 0 on success, i > 0 when the leading i x i minor of the damped matrix is not positive
//   definite (X is then unspecified). A is never modified; the op uses one n x n workspace. A failed
//   factorisation is a normal outcome (the caller raises lam), never an exception.
void check_damped_cholesky_solve_args(const at::Tensor& A, const at::Tensor& d, double lam,
                                      const at::Tensor& B);

// damped_cholesky_factor(A, d, lam) -> (U, info)
//   The factorisation behind damped_cholesky_solve, for callers that solve several right-hand sides they
//   only learn one after the other (LM's geodesic correction). U is upper triangular (zeros below the
//   diagonal) with UᵀU = A + lam * diag(d); solve with torch.cholesky_solve(B, U, upper=True). info as for
//   damped_cholesky_solve (U is unspecified when info > 0). A is never modified.
void check_damped_cholesky_factor_args(const at::Tensor& A, const at::Tensor& d, double lam);

// diag += lam * d for the damped matrix, with any finite lam >= 0: a float32 matrix and a lam beyond the float32
// range (which an alpha Scalar could not take) gets lam * d formed in float64 and rounded, inf where it
// overflows; the factorisation then reports that pivot through info.
void add_damping_(const at::Tensor& diag, const at::Tensor& d, double lam);

}  // namespace marquardt
