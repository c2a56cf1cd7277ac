// SPDX-License-Identifier: BSD-3-Clause
// The upper triangle of A += alpha JᵀJ computed from GEMMs (ATen addmm_ on views, so BLAS on the CPU and
// cuBLAS on the GPU), with about rows * n * (n + b) / 2 flops instead of rows * n^2:
//  * block rows of width b: A[i, i:] += J[:, i]ᵀ J[:, i:], one wide GEMM per block row;
//  * recursive halving: A11 += J1ᵀJ1 and A22 += J2ᵀJ2 (recurse), A12 += J1ᵀJ2 (one large GEMM), with
//    leaf blocks of at most b columns done as full GEMMs (most flops then run in large square GEMMs).
// Diagonal blocks are computed in full, so callers mirror the upper triangle afterwards.
#pragma once

#include <ATen/ATen.h>

namespace marquardt {

void syrk_upper_block_rows(const at::Tensor& A, const at::Tensor& J, double alpha, int64_t width);
void syrk_upper_recursive(const at::Tensor& A, const at::Tensor& J, double alpha, int64_t leaf);
// Lower triangle := transpose of the upper one (contiguous CPU A), in square tiles of the given size.
void mirror_upper(const at::Tensor& A, int64_t block);

}  // namespace marquardt
