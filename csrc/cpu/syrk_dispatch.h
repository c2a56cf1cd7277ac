// SPDX-License-Identifier: BSD-3-Clause
// Which CPU SYRK kernel runs (our AVX-512 one or GEMMs through torch's BLAS), and the AVX-512 kernel on
// torch's thread team. Used by jtj_accumulate_ and by the blocked Cholesky behind the damped solves.
#pragma once

#include <cstdint>

namespace marquardt::cpu {

// True when the AVX-512 kernel should run: the CPU has AVX-512 and MARQUARDT_CPU_SYRK is unset, "auto" or
// "avx512". Read at every call; a bad value, or "avx512" on a CPU without it, raises (naming the variable).
bool use_avx512_syrk();

// use_avx512_syrk() for one product XᵀX of a rows x n X, with the one shape where MKL's GEMM wins anyway: a
// tall float32 X narrower than the 48-column register tile, which pads most of every tile (1e6 x 10: 13.8
// against 17.6 ms on the dev machine). Small X still take the kernel, so its narrow-tile paths stay exercised.
bool use_avx512_syrk(bool single_precision, int64_t rows, int64_t n);

// C[i, j] += alpha * sum_p X[p, i] X[p, j] for i <= j < n (C row-major, leading dimension ldc; entries just
// below the diagonal may be updated too) and, when r is not null, g[j] += alpha * sum_p X[p, j] r[p]. X[p, i]
// is x[p * row_stride + i * col_stride]. Work is split between torch's intra-op threads into column ranges
// of equal triangle area (c_t = n sqrt(t / T), rounded to whole tiles) or, for a tall X with too few tile
// columns, into row ranges summed at the end.
template <typename T>
void syrk_upper_avx512_threads(int64_t rows, int64_t n, const T* x, int64_t row_stride, int64_t col_stride, T* c,
                               int64_t ldc, const T* r, T* g, T alpha);

}  // namespace marquardt::cpu
