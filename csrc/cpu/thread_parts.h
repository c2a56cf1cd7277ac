// SPDX-License-Identifier: BSD-3-Clause
// Runs work(part) for part in [0, parts) on `parts` threads (the calling thread takes part 0).
//
// Why not at::parallel_for: with torch's OpenMP backend its body is a `#pragma omp parallel` compiled into
// *our* translation unit, so it runs serially unless the extension itself is built with -fopenmp, and linking
// a second OpenMP runtime beside the one torch bundles is worse. The kernels that use this split their work
// into a handful of equal, long-running parts, so a thread per part costs microseconds against milliseconds.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <exception>
#include <thread>
#include <vector>

namespace marquardt::cpu {

// How many parts to split a job into: torch's intra-op thread count (so torch.set_num_threads governs our
// kernels too), but one when the job is too small to pay for a thread (`worth_threads` false, a caller's
// estimate) or when already inside a parallel region, and never more than `max_parts`.
inline int64_t parts_for(bool worth_threads, int64_t max_parts) {
  if (!worth_threads || at::in_parallel_region()) return 1;
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), max_parts));
}

template <typename Work>
void run_parts(int64_t parts, const Work& work) {
  if (parts <= 1) {
    work(int64_t{0});
    return;
  }
  std::vector<std::exception_ptr> errors(parts);
  std::vector<std::thread> threads;
  threads.reserve(parts - 1);
  for (int64_t p = 1; p < parts; ++p) {
    threads.emplace_back([&, p] {
      try {
        work(p);
      } catch (...) {
        errors[p] = std::current_exception();
      }
    });
  }
  try {
    work(int64_t{0});
  } catch (...) {
    errors[0] = std::current_exception();
  }
  for (auto& t : threads) t.join();
  for (auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

}  // namespace marquardt::cpu
