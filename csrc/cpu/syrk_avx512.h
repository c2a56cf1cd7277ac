// SPDX-License-Identifier: BSD-3-Clause
// A packed SYRK (upper triangle of C += alpha XᵀX) with AVX-512 register tiles, for CPUs that have AVX-512.
//
// Why our own kernel: the BLAS that torch's CPU wheels ship (MKL) runs AVX2 code on AMD CPUs (measured: 38%
// of the AVX-512 FMA rate on the Zen 5 dev machine), and a GEMM-based SYRK wastes flops on the diagonal
// blocks (BENCHMARKS.md §1). This kernel follows the BLIS design: operands are packed into
// contiguous panels sized for the caches, and an 8 x (3 vectors) register tile accumulates a rank-kc update
// with one FMA per broadcast element and vector. Tiles that lie wholly below the diagonal are skipped, so the
// flops are rows * n * (n + tile) / 2 instead of rows * n^2.
//
// This header has no torch dependency. syrk_dispatch.h decides when it runs and splits the columns between
// torch's threads; its callers are jtj_accumulate_ and the blocked Cholesky (lapack_cholesky.cpp).
#pragma once

#include <cstdint>

namespace marquardt::cpu {

// True when the CPU (and OS) can run the AVX-512 kernel below.
bool syrk_avx512_supported();

// Width of the kernel's register tile in columns (3 zmm vectors: 24 doubles or 48 floats). Column ranges
// cut on multiples of it split no tile.
template <typename T>
inline constexpr int64_t kSyrkAvx512TileCols = 3 * 64 / static_cast<int64_t>(sizeof(T));

// For the columns j in [col_begin, col_end) of C: C[i, j] += alpha * sum_p X[p, i] X[p, j] for every
// i <= j (some entries just below the diagonal may be updated too, with their correct values; callers
// mirror the upper triangle afterwards), and, when r is not null, g[j] += alpha * sum_p X[p, j] r[p].
// X[p, i] is x[p * row_stride + i * col_stride]; C is row-major with leading dimension ldc; r (length rows)
// and g (length n, indexed by column) are contiguous. Single-threaded: callers run disjoint column ranges in
// parallel.
template <typename T>
void syrk_upper_avx512(int64_t rows, const T* x, int64_t row_stride, int64_t col_stride, T* c, int64_t ldc,
                       const T* r, T* g, T alpha, int64_t col_begin, int64_t col_end);

}  // namespace marquardt::cpu
