// SPDX-License-Identifier: BSD-3-Clause
#include "cuda/cusolver_handle.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAStream.h>

#include <unordered_map>

namespace marquardt {

cusolverDnHandle_t current_cusolver_handle() {
  // Handles live as long as their thread; cuSOLVER handles are not safe to share between threads that
  // may run concurrently, and creating one is expensive (milliseconds), hence the per-thread cache.
  thread_local std::unordered_map<int, cusolverDnHandle_t> handles;
  const int device = c10::cuda::current_device();
  auto it = handles.find(device);
  if (it == handles.end()) {
    cusolverDnHandle_t handle = nullptr;
    MARQUARDT_CUSOLVER_CHECK(cusolverDnCreate(&handle));
    it = handles.emplace(device, handle).first;
  }
  MARQUARDT_CUSOLVER_CHECK(cusolverDnSetStream(it->second, c10::cuda::getCurrentCUDAStream().stream()));
  return it->second;
}

}  // namespace marquardt
