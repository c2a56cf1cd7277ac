// SPDX-License-Identifier: BSD-3-Clause
// AVX-512 packed SYRK; see syrk_avx512.h for the why. Only the functions marked MQ_AVX512 use AVX-512
// instructions (the file is compiled for the baseline ISA, so nothing else in it, and no inline function it
// instantiates from a header, can fault on a CPU without AVX-512).
#include "syrk_avx512.h"

#include <stdexcept>

// GCC and Clang on x86-64 only (target attributes, __builtin_cpu_supports); elsewhere the GEMM path runs.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MQ_HAVE_AVX512_KERNEL 1
#else
#define MQ_HAVE_AVX512_KERNEL 0
#endif

#if MQ_HAVE_AVX512_KERNEL
#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <new>

#define MQ_AVX512 __attribute__((target("avx512f")))
#define MQ_AVX512_INLINE __attribute__((target("avx512f"), always_inline)) inline

namespace marquardt::cpu {
namespace {

// One 512-bit register of T, and the four operations the micro-kernel needs.
template <typename T>
struct Vec;

template <>
struct Vec<double> {
  using Reg = __m512d;
  static constexpr int kLanes = 8;
  static MQ_AVX512_INLINE Reg zero() { return _mm512_setzero_pd(); }
  static MQ_AVX512_INLINE Reg load(const double* p) { return _mm512_loadu_pd(p); }
  static MQ_AVX512_INLINE Reg broadcast(double v) { return _mm512_set1_pd(v); }
  static MQ_AVX512_INLINE Reg fma(Reg a, Reg b, Reg c) { return _mm512_fmadd_pd(a, b, c); }
  static MQ_AVX512_INLINE void store(double* p, Reg v) { _mm512_storeu_pd(p, v); }
};

template <>
struct Vec<float> {
  using Reg = __m512;
  static constexpr int kLanes = 16;
  static MQ_AVX512_INLINE Reg zero() { return _mm512_setzero_ps(); }
  static MQ_AVX512_INLINE Reg load(const float* p) { return _mm512_loadu_ps(p); }
  static MQ_AVX512_INLINE Reg broadcast(float v) { return _mm512_set1_ps(v); }
  static MQ_AVX512_INLINE Reg fma(Reg a, Reg b, Reg c) { return _mm512_fmadd_ps(a, b, c); }
  static MQ_AVX512_INLINE void store(float* p, Reg v) { _mm512_storeu_ps(p, v); }
};

// Register tile: kTileRows rows of C (broadcast operand) by kTileVecs vectors of columns (vector operand).
// 8 x 3 = 24 accumulators of the 32 zmm registers, 3 loads and 8 broadcasts per 24 FMAs: the FMA units,
// not the load ports, set the pace, and 24 independent chains hide the FMA latency.
constexpr int kTileRows = 8;
constexpr int kTileVecs = 3;

// Cache blocking (BLIS's loop nest, tuned on the 2-core Zen 5 dev machine, where the choice mattered by ~10%
// and kc from 128 to 512 or block sizes from 128 to 1024 by less than the noise):
//  * kDepth (kc) rows of X per packed block;
//  * kBlockRows rows of C per packed broadcast block (kc x 256: 512 KiB of doubles, in L2), whose 8-row
//    panels stream through the micro-kernel;
//  * kBlockCols columns of C per packed vector block (in L3); one of its panels (kc x tile columns) is reused
//    across the whole broadcast block.
template <typename T>
struct Blocking {
  static constexpr int64_t kTileCols = kTileVecs * Vec<T>::kLanes;  // 24 doubles or 48 floats
  static_assert(kTileCols == kSyrkAvx512TileCols<T>, "the header's tile width must match the kernel's");
  static constexpr int64_t kDepth = 256;
  static constexpr int64_t kBlockRows = 256;
  static constexpr int64_t kBlockCols = 4096;
};

// Packs X[p0 : p0 + depth, i0 : i0 + cols] into consecutive panels of `width` columns: panel k holds
// columns i0 + k * width + q (q < width, zero past the last column) as dst[k * depth * width + p * width + q].
template <typename T>
void pack_block(T* dst, const T* x, int64_t row_stride, int64_t col_stride, int64_t p0, int64_t depth,
                int64_t i0, int64_t cols, int64_t width) {
  if (col_stride == 1) {
    // Row-major X. A few rows at a time across every panel: the reads stay on a handful of pages and the
    // writes fill each panel contiguously. (One panel at a time walks `depth` rows that are a large, often
    // power-of-two stride apart: a TLB miss and a cache-set conflict per row; it cost a quarter of the time.)
    constexpr int64_t kRowGroup = 16;
    for (int64_t pg = 0; pg < depth; pg += kRowGroup) {
      const int64_t pg_end = std::min(depth, pg + kRowGroup);
      for (int64_t q0 = 0; q0 < cols; q0 += width) {
        const int64_t valid = std::min(width, cols - q0);
        T* panel = dst + q0 * depth;
        for (int64_t p = pg; p < pg_end; ++p) {
          const T* src = x + (p0 + p) * row_stride + i0 + q0;
          T* out = panel + p * width;
          if (valid == width) {
            for (int64_t q = 0; q < width; ++q) out[q] = src[q];
          } else {
            for (int64_t q = 0; q < valid; ++q) out[q] = src[q];
            for (int64_t q = valid; q < width; ++q) out[q] = T(0);
          }
        }
      }
    }
    return;
  }
  // Any other layout, in practice column-major X (the transpose of a contiguous matrix): each column is
  // contiguous in p, so read down columns.
  for (int64_t q0 = 0; q0 < cols; q0 += width) {
    T* panel = dst + q0 * depth;
    for (int64_t q = 0; q < width; ++q) {
      if (q0 + q < cols) {
        const T* src = x + p0 * row_stride + (i0 + q0 + q) * col_stride;
        for (int64_t p = 0; p < depth; ++p) panel[p * width + q] = src[p * row_stride];
      } else {
        for (int64_t p = 0; p < depth; ++p) panel[p * width + q] = T(0);
      }
    }
  }
}

// C[0:rows_valid, 0:cols_valid] += alpha * Aᵀ B for packed panels a (depth x kTileRows) and b (depth x
// kTileCols). The full-tile path updates C straight from the registers; edge tiles go through a buffer.
template <typename T>
MQ_AVX512 void micro_kernel(int64_t depth, const T* __restrict a, const T* __restrict b, T* __restrict c,
                            int64_t ldc, T alpha, int64_t rows_valid, int64_t cols_valid) {
  using V = Vec<T>;
  constexpr int L = V::kLanes;
  typename V::Reg acc[kTileRows][kTileVecs];
#pragma GCC unroll 8
  for (int i = 0; i < kTileRows; ++i) {
#pragma GCC unroll 3
    for (int v = 0; v < kTileVecs; ++v) acc[i][v] = V::zero();
  }
  for (int64_t p = 0; p < depth; ++p) {
    const typename V::Reg b0 = V::load(b), b1 = V::load(b + L), b2 = V::load(b + 2 * L);
#pragma GCC unroll 8
    for (int i = 0; i < kTileRows; ++i) {
      const typename V::Reg ai = V::broadcast(a[i]);
      acc[i][0] = V::fma(ai, b0, acc[i][0]);
      acc[i][1] = V::fma(ai, b1, acc[i][1]);
      acc[i][2] = V::fma(ai, b2, acc[i][2]);
    }
    a += kTileRows;
    b += kTileVecs * L;
  }
  const typename V::Reg va = V::broadcast(alpha);
  if (rows_valid == kTileRows && cols_valid == kTileVecs * L) {
#pragma GCC unroll 8
    for (int i = 0; i < kTileRows; ++i) {
#pragma GCC unroll 3
      for (int v = 0; v < kTileVecs; ++v) {
        T* ci = c + i * ldc + v * L;
        V::store(ci, V::fma(va, acc[i][v], V::load(ci)));
      }
    }
    return;
  }
  alignas(64) T tile[kTileRows][kTileVecs * L];
  for (int i = 0; i < kTileRows; ++i) {
    for (int v = 0; v < kTileVecs; ++v) V::store(&tile[i][v * L], acc[i][v]);
  }
  for (int64_t i = 0; i < rows_valid; ++i) {
    for (int64_t j = 0; j < cols_valid; ++j) c[i * ldc + j] += alpha * tile[i][j];
  }
}

// g[i0 + q] += alpha * sum_p r[p] X[p0 + p, i0 + q] from a packed vector block (the layout of pack_block
// with Width columns per panel). Every column of X passes through a vector block exactly once per depth
// step, so computing Jᵀr here reads J once for both products, from cache.
template <typename T, int64_t Width>
MQ_AVX512 void add_gradient(const T* block, int64_t depth, int64_t cols, const T* r, T alpha, T* g) {
  for (int64_t q0 = 0; q0 < cols; q0 += Width) {
    const T* panel = block + q0 * depth;
    T acc[Width] = {};
    for (int64_t p = 0; p < depth; ++p) {
      const T rp = r[p];
      for (int64_t q = 0; q < Width; ++q) acc[q] += rp * panel[p * Width + q];
    }
    const int64_t valid = std::min(Width, cols - q0);
    for (int64_t q = 0; q < valid; ++q) g[q0 + q] += alpha * acc[q];
  }
}

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

template <typename T>
std::unique_ptr<T, FreeDeleter> aligned_buffer(int64_t elements) {
  const size_t bytes = (sizeof(T) * static_cast<size_t>(elements) + 63) / 64 * 64;
  return std::unique_ptr<T, FreeDeleter>(static_cast<T*>(std::aligned_alloc(64, bytes)));
}

}  // namespace

bool syrk_avx512_supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f");
}

template <typename T>
void syrk_upper_avx512(int64_t rows, const T* x, int64_t row_stride, int64_t col_stride, T* c, int64_t ldc,
                       const T* r, T* g, T alpha, int64_t col_begin, int64_t col_end) {
  using B = Blocking<T>;
  if (col_begin >= col_end || rows <= 0) return;
  auto vector_block = aligned_buffer<T>((std::min(B::kBlockCols, col_end - col_begin) + B::kTileCols) * B::kDepth);
  auto broadcast_block = aligned_buffer<T>((B::kBlockRows + kTileRows) * B::kDepth);
  if (!vector_block || !broadcast_block) throw std::bad_alloc();
  for (int64_t jc = col_begin; jc < col_end; jc += B::kBlockCols) {
    const int64_t nc = std::min(B::kBlockCols, col_end - jc);
    for (int64_t pc = 0; pc < rows; pc += B::kDepth) {
      const int64_t kc = std::min(B::kDepth, rows - pc);
      pack_block(vector_block.get(), x, row_stride, col_stride, pc, kc, jc, nc, B::kTileCols);
      if (r != nullptr) add_gradient<T, B::kTileCols>(vector_block.get(), kc, nc, r + pc, alpha, g + jc);
      // Rows of C that meet these columns in the upper triangle: i < jc + nc.
      for (int64_t ic = 0; ic < jc + nc; ic += B::kBlockRows) {
        const int64_t mb = std::min(B::kBlockRows, jc + nc - ic);
        pack_block(broadcast_block.get(), x, row_stride, col_stride, pc, kc, ic, mb, kTileRows);
        for (int64_t jr = 0; jr < nc; jr += B::kTileCols) {
          const int64_t j0 = jc + jr;
          const int64_t cols_valid = std::min(B::kTileCols, nc - jr);
          for (int64_t ir = 0; ir < mb; ir += kTileRows) {
            const int64_t i0 = ic + ir;
            if (i0 >= j0 + cols_valid) break;  // this and later tiles lie wholly below the diagonal
            micro_kernel<T>(kc, broadcast_block.get() + ir * kc, vector_block.get() + jr * kc, c + i0 * ldc + j0,
                            ldc, alpha, std::min<int64_t>(kTileRows, mb - ir), cols_valid);
          }
        }
      }
    }
  }
}

#else  // !MQ_HAVE_AVX512_KERNEL

namespace marquardt::cpu {

bool syrk_avx512_supported() { return false; }

template <typename T>
void syrk_upper_avx512(int64_t, const T*, int64_t, int64_t, T*, int64_t, const T*, T*, T, int64_t, int64_t) {
  throw std::logic_error("marquardt: the AVX-512 SYRK kernel is not built for this platform");
}

#endif  // MQ_HAVE_AVX512_KERNEL

template void syrk_upper_avx512<float>(int64_t, const float*, int64_t, int64_t, float*, int64_t, const float*,
                                       float*, float, int64_t, int64_t);
template void syrk_upper_avx512<double>(int64_t, const double*, int64_t, int64_t, double*, int64_t, const double*,
                                        double*, double, int64_t, int64_t);

}  // namespace marquardt::cpu
