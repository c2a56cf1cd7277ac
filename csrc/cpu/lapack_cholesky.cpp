// SPDX-License-Identifier: BSD-3-Clause
#include "cpu/lapack_cholesky.h"

#include <ATen/Dispatch.h>

#include <algorithm>
#include <cmath>

#include "cpu/syrk_dispatch.h"

// LAPACK as exported by libtorch_cpu (MKL or OpenBLAS). Declared weak so the module still loads against a
// torch that does not export them; the ATen fallback below is then used instead.
extern "C" {
void spotrf_(const char* uplo, const int* n, float* a, const int* lda, int* info) __attribute__((weak));
void dpotrf_(const char* uplo, const int* n, double* a, const int* lda, int* info) __attribute__((weak));
void spotrs_(const char* uplo, const int* n, const int* nrhs, const float* a, const int* lda, float* b,
             const int* ldb, int* info) __attribute__((weak));
void dpotrs_(const char* uplo, const int* n, const int* nrhs, const double* a, const int* lda, double* b,
             const int* ldb, int* info) __attribute__((weak));
void strsm_(const char* side, const char* uplo, const char* transa, const char* diag, const int* m, const int* n,
            const float* alpha, const float* a, const int* lda, float* b, const int* ldb) __attribute__((weak));
void dtrsm_(const char* side, const char* uplo, const char* transa, const char* diag, const int* m, const int* n,
            const double* alpha, const double* a, const int* lda, double* b, const int* ldb) __attribute__((weak));
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
  static bool has_trsm() { return strsm_ != nullptr; }
  static void trsm(const char* side, const char* uplo, const char* ta, const char* diag, const int* m, const int* n,
                   const float* alpha, const float* a, const int* lda, float* b, const int* ldb) {
    strsm_(side, uplo, ta, diag, m, n, alpha, a, lda, b, ldb);
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
  static bool has_trsm() { return dtrsm_ != nullptr; }
  static void trsm(const char* side, const char* uplo, const char* ta, const char* diag, const int* m, const int* n,
                   const double* alpha, const double* a, const int* lda, double* b, const int* ldb) {
    dtrsm_(side, uplo, ta, diag, m, n, alpha, a, lda, b, ldb);
  }
};

// Depth of the blocked factorisation: each step's trailing update is a SYRK of this many rows. Larger blocks
// move flops from our SYRK into MKL's TRSM and diagonal potrf; smaller ones run the SYRK at a lower rate. On
// the dev machine 192 and 256 were best, 128, 384 and 512 slower (BENCHMARKS.md §1).
constexpr int kCholeskyBlock = 192;

// Right-looking blocked Cholesky, LAPACK's own algorithm (dpotrf with uplo 'L', column-major), except that
// the trailing update A22 -= A21 A21ᵀ runs on our AVX-512 SYRK instead of the BLAS: torch's MKL runs its
// AVX2 code on AMD CPUs, at half the cores' FMA rate, and the update is almost all of the n³/3 flops.
// In our row-major terms (W read column-major is Wᵀ = W) the step at k is
//   U11 = chol(W11);  U12 = U11⁻ᵀ W12 (TRSM);  W22 -= U12ᵀ U12 (SYRK over the b rows of U12),
// on the upper triangle only. Returns LAPACK's info: 0, or k + i for the failed leading minor of order k + i.
template <typename T>
int potrf_upper_blocked(T* w, int n) {
  const char lower = 'L', right = 'R', transpose = 'T', non_unit = 'N';
  const T one = 1;
  for (int k = 0; k < n; k += kCholeskyBlock) {
    const int b = std::min(kCholeskyBlock, n - k);
    T* w11 = w + static_cast<int64_t>(k) * n + k;
    int info = 0;
    Lapack<T>::potrf(&lower, &b, w11, &n, &info);
    if (info != 0) return k + info;
    const int m = n - k - b;
    if (m == 0) break;
    T* w12 = w11 + b;  // row-major rows [k, k + b), columns [k + b, n)
    Lapack<T>::trsm(&right, &lower, &transpose, &non_unit, &m, &b, &one, w11, &n, w12, &n);
    cpu::syrk_upper_avx512_threads<T>(b, m, w12, n, 1, w12 + static_cast<int64_t>(b) * n, n, nullptr, nullptr,
                                      T(-1));
  }
  return 0;
}

}  // namespace

bool lapack_cholesky_available(at::ScalarType dtype) {
  return dtype == at::kFloat ? Lapack<float>::available() : Lapack<double>::available();
}

int potrf_upper_inplace(const at::Tensor& W) {
  const char uplo = 'L';
  const int n = static_cast<int>(W.size(0));
  int info = 0;
  AT_DISPATCH_FLOATING_TYPES(W.scalar_type(), "potrf_upper_inplace", [&] {
    // Below two blocks the trailing updates are too small to pay off (n = 256: LAPACK 5% faster in float32).
    if (n > 2 * kCholeskyBlock && Lapack<scalar_t>::has_trsm() && cpu::use_avx512_syrk()) {
      info = potrf_upper_blocked<scalar_t>(W.data_ptr<scalar_t>(), n);
    } else {
      Lapack<scalar_t>::potrf(&uplo, &n, W.data_ptr<scalar_t>(), &n, &info);
    }
    // LAPACK fails only on a pivot <= 0 or NaN; an infinite pivot (a damped diagonal past the dtype's range)
    // can leave an infinite factor behind info = 0, or fail a later pivot. Both paths report the first
    // non-finite pivot before the one that failed, so that blocked and unblocked agree.
    const scalar_t* w = W.const_data_ptr<scalar_t>();
    const int factored = info > 0 ? info - 1 : n;
    for (int j = 0; j < factored; ++j) {
      if (!std::isfinite(w[static_cast<int64_t>(j) * (n + 1)])) {
        info = j + 1;
        break;
      }
    }
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
