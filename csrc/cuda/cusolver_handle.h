// SPDX-License-Identifier: BSD-3-Clause
#pragma once

#include <cusolverDn.h>

namespace marquardt {

// A cuSOLVER dense handle for the current device and thread, bound to the current CUDA stream.
// torch does not export at::cuda::getCurrentCUDASolverDnHandle from every build (2.14 does not), so we
// keep our own: one handle per (thread, device), created on first use and reused afterwards.
cusolverDnHandle_t current_cusolver_handle();

// Turns a cuSOLVER status into a RuntimeError that names the call.
#define MARQUARDT_CUSOLVER_CHECK(EXPR)                                                            \
  do {                                                                                            \
    cusolverStatus_t _status = (EXPR);                                                            \
    TORCH_CHECK(_status == CUSOLVER_STATUS_SUCCESS, "marquardt: cuSOLVER call ", #EXPR,          \
                " failed with status ", static_cast<int>(_status));                               \
  } while (0)

}  // namespace marquardt
