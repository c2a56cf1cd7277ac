// SPDX-License-Identifier: BSD-3-Clause
// CPU kernel of damped_cholesky_solve: one n x n workspace W = A + lam diag(d), factored in place by
// LAPACK potrf and used by potrs. ATen's linalg_cholesky + cholesky_solve would allocate the factor and
// then clone it again inside cholesky_solve (three n x n buffers); calling LAPACK directly keeps one.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "ops.h"

// LAPACK as exported by libtorch_cpu (MKL or OpenBLAS). Declared weak so the module still loads against a
// torch that does not export them; the ATen fallback below is then used instead.
extern "C" {
void spotrf_(const char* uplo, const int* n, float* a, const int* lda, int* info) __attribute__((weak));
void dpotrf_(const char* uplo, const int* n, double* a, const int* lda, int* info) __attribute__((weak));
void spotrs_(const char* uplo, const int* n, const int* nrhs, const float* a, const int* lda, float* b,
             const int* ldb, int* info) __attribute__((weak));
void dpotrs_(const char* uplo, const int* n, const int* nrhs, const double* a, const int* lda, double* b,
             const int* ldb, int* info) __attribute__((weak));
}

namespace marquardt {
namespace {

template <typename T>
struct Lapack;
template <>
struct Lapack<float> {
  static bool available() { return spotrf_ != nullptr && spotrs_ != nullptr; }
  static void potrf(const char* u, const int* n, float* a, const int* lda, int* info) { spotrf_(u, n, a, lda, info); }
  static void potrs(const char* u, const int* n, const int* k, const float* a, const int* lda, float* b,
                    const int* ldb, int* info) {
    spotrs_(u, n, k, a, lda, b, ldb, info);
  }
};
template <>
struct Lapack<double> {
  static bool available() { return dpotrf_ != nullptr && dpotrs_ != nullptr; }
  static void potrf(const char* u, const int* n, double* a, const int* lda, int* info) { dpotrf_(u, n, a, lda, info); }
  static void potrs(const char* u, const int* n, const int* k, const double* a, const int* lda, double* b,
                    const int* ldb, int* info) {
    dpotrs_(u, n, k, a, lda, b, ldb, info);
  }
};

std::tuple<at::Tensor, at::Tensor> damped_cholesky_solve_cpu(const at::Tensor& A, const at::Tensor& d, double lam,
                                                             const at::Tensor& B) {
  check_damped_cholesky_solve_args(A, d, lam, B);
  TORCH_INTERNAL_ASSERT(A.device().is_cpu());
  const int64_t n = A.size(0);
  const int64_t k = B.dim() == 1 ? 1 : B.size(1);
  TORCH_CHECK(n <= INT32_MAX && k <= INT32_MAX, "marquardt::damped_cholesky_solve: n and k must fit in int32 for LAPACK");

  at::Tensor W = A.clone(at::MemoryFormat::Contiguous);  // the one n x n workspace
  W.diagonal().add_(d, lam);
  // X is stored column-major ([k, n] row-major), as LAPACK wants the right-hand sides.
  // A copy even when B is already laid out right: B is an input and must not be overwritten.
  at::Tensor Xt = (B.dim() == 1 ? B.unsqueeze(0) : B.t()).clone(at::MemoryFormat::Contiguous);
  int info = 0;
  bool lapack = false;
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "damped_cholesky_solve_cpu", [&] {
    if (!Lapack<scalar_t>::available()) return;
    lapack = true;
    // Row-major W read as column-major is Wᵀ = W; its column-major lower triangle is our upper triangle.
    const char uplo = 'L';
    const int ni = static_cast<int>(n), ki = static_cast<int>(k);
    Lapack<scalar_t>::potrf(&uplo, &ni, W.data_ptr<scalar_t>(), &ni, &info);
    if (info == 0) {
      int info2 = 0;
      Lapack<scalar_t>::potrs(&uplo, &ni, &ki, W.const_data_ptr<scalar_t>(), &ni, Xt.data_ptr<scalar_t>(), &ni, &info2);
      TORCH_CHECK(info2 == 0, "marquardt::damped_cholesky_solve: potrs failed with info=", info2);
    } else {
      Xt.fill_(std::numeric_limits<scalar_t>::quiet_NaN());
    }
  });
  if (!lapack) {
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
