// SPDX-License-Identifier: BSD-3-Clause
#include "cpu/lapack_cholesky.h"

#include <ATen/Dispatch.h>

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

}  // namespace

bool lapack_cholesky_available(at::ScalarType dtype) {
  return dtype == at::kFloat ? Lapack<float>::available() : Lapack<double>::available();
}

int potrf_upper_inplace(const at::Tensor& W) {
  const char uplo = 'L';
  const int n = static_cast<int>(W.size(0));
  int info = 0;
  AT_DISPATCH_FLOATING_TYPES(W.scalar_type(), "potrf_upper_inplace", [&] {
    Lapack<scalar_t>::potrf(&uplo, &n, W.data_ptr<scalar_t>(), &n, &info);
  });
  return info;
}

void potrs_upper(const at::Tensor& U, const at::Tensor& Xt) {
  const char uplo = 'L';
  const int n = static_cast<int>(U.size(0));
  const int k = static_cast<int>(Xt.size(0));
  int info = 0;
  AT_DISPATCH_FLOATING_TYPES(U.scalar_type(), "potrs_upper", [&] {
    Lapack<scalar_t>::potrs(&uplo, &n, &k, U.const_data_ptr<scalar_t>(), &n, Xt.data_ptr<scalar_t>(), &n, &info);
  });
  TORCH_CHECK(info == 0, "marquardt: LAPACK potrs failed with info=", info);
}

}  // namespace marquardt
