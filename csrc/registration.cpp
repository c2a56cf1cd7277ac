// SPDX-License-Identifier: BSD-3-Clause
// Every schema of the marquardt op library, in one place. Backends add kernels with TORCH_LIBRARY_IMPL in
// their own translation units (csrc/cpu, csrc/cuda); fake kernels for tracing live in marquardt/_meta.py.
#include <Python.h>
#include <torch/library.h>

#include "ops.h"

extern "C" {
// Importing marquardt._C loads this shared object, which runs the static TORCH_LIBRARY initialisers
// below. The module itself is empty: all ops are reached through torch.ops.marquardt.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(marquardt, m) {
  m.set_python_module("marquardt._meta");
  m.def("jtj_accumulate_(Tensor(a!) A, Tensor J, Tensor? r=None, Tensor(b!)? g=None, float alpha=1.0) -> ()");
  m.def("max_diag_update_(Tensor(a!) d, Tensor A, float floor=0.0) -> ()");
  m.def("damped_cholesky_solve(Tensor A, Tensor d, float lam, Tensor B) -> (Tensor X, Tensor info)");
  m.def("damped_cholesky_factor(Tensor A, Tensor d, float lam) -> (Tensor U, Tensor info)");
  // Which kernel jtj_accumulate_ runs on CPU tensors now ("avx512" or "gemm"); no tensors, so no dispatch.
  m.def("cpu_syrk_kernel() -> str", &marquardt::cpu_syrk_kernel);
}
