// SPDX-License-Identifier: BSD-3-Clause
// Argument validation shared by every backend. Messages name the op, the argument and what was expected.
#include <cmath>
#include <limits>

#include <ATen/MemoryOverlap.h>

#include "ops.h"

namespace marquardt {
namespace {

void check_float(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, "marquardt::", op, ": ", name,
              " must be float32 or float64 (got ", t.scalar_type(), ")");
}

void check_same(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                const at::Tensor& ref) {
  TORCH_CHECK(t.device() == ref.device(), "marquardt::", op, ": ", name, " and ", ref_name,
              " must be on the same device (got ", name, "=", t.device(), ", ", ref_name, "=", ref.device(), ")");
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "marquardt::", op, ": ", name, " and ", ref_name,
              " must have the same dtype (got ", name, "=", t.scalar_type(), ", ", ref_name, "=",
              ref.scalar_type(), ")");
}

// Outputs written in place must share no memory with any other argument: a kernel reading J while writing A
// (or g) would read values it has already changed.
void check_no_overlap(const char* op, const char* out_name, const at::Tensor& out, const char* in_name,
                      const at::Tensor& in) {
  // Tensors on different storages never overlap; on one storage, anything but proven disjointness is refused
  // (get_overlap_status cannot decide for strided views and says so).
  if (!out.has_storage() || !in.has_storage() || !out.storage().is_alias_of(in.storage())) {
    return;
  }
  TORCH_CHECK(at::get_overlap_status(out, in) == at::MemOverlapStatus::No, "marquardt::", op, ": ", out_name,
              " (written in place) must not share memory with ", in_name);
}

void check_square(const char* op, const char* name, const at::Tensor& A) {
  TORCH_CHECK(A.dim() == 2 && A.size(0) == A.size(1) && A.size(0) >= 1, "marquardt::", op, ": ", name,
              " must be a square matrix [n, n] with n >= 1 (got shape ", A.sizes(), ")");
}

}  // namespace

void check_jtj_accumulate_args(const at::Tensor& A, const at::Tensor& J, const std::optional<at::Tensor>& r,
                               const std::optional<at::Tensor>& g) {
  const char* op = "jtj_accumulate_";
  check_float(op, "A", A);
  check_square(op, "A", A);
  TORCH_CHECK(A.is_contiguous(), "marquardt::jtj_accumulate_: A must be contiguous (it is updated in place)");
  check_same(op, "J", J, "A", A);
  const int64_t n = A.size(0);
  TORCH_CHECK(J.dim() == 2 && J.size(1) == n && J.size(0) >= 1, "marquardt::jtj_accumulate_: J must have shape [rows, ",
              n, "] with rows >= 1 to match A (got shape ", J.sizes(), ")");
  TORCH_CHECK(r.has_value() == g.has_value(),
              "marquardt::jtj_accumulate_: r and g must be given together (got r=", r.has_value() ? "tensor" : "None",
              ", g=", g.has_value() ? "tensor" : "None", ")");
  if (r.has_value()) {
    check_same(op, "r", *r, "A", A);
    check_same(op, "g", *g, "A", A);
    TORCH_CHECK(r->dim() == 1 && r->size(0) == J.size(0), "marquardt::jtj_accumulate_: r must have shape [",
                J.size(0), "] (one entry per row of J; got shape ", r->sizes(), ")");
    TORCH_CHECK(g->dim() == 1 && g->size(0) == n, "marquardt::jtj_accumulate_: g must have shape [", n,
                "] (got shape ", g->sizes(), ")");
    TORCH_CHECK(g->is_contiguous(), "marquardt::jtj_accumulate_: g must be contiguous (it is updated in place)");
    check_no_overlap(op, "g", *g, "A", A);
    check_no_overlap(op, "g", *g, "J", J);
    check_no_overlap(op, "g", *g, "r", *r);
    check_no_overlap(op, "A", A, "r", *r);
  }
  check_no_overlap(op, "A", A, "J", J);
}

void check_max_diag_update_args(const at::Tensor& d, const at::Tensor& A, double floor) {
  const char* op = "max_diag_update_";
  check_float(op, "d", d);
  check_square(op, "A", A);
  check_same(op, "A", A, "d", d);
  TORCH_CHECK(d.dim() == 1 && d.size(0) == A.size(0), "marquardt::max_diag_update_: d must have shape [",
              A.size(0), "] to match A (got shape ", d.sizes(), ")");
  TORCH_CHECK(d.is_contiguous(), "marquardt::max_diag_update_: d must be contiguous (it is updated in place)");
  TORCH_CHECK(!std::isnan(floor), "marquardt::max_diag_update_: floor must not be NaN");
  check_no_overlap(op, "d", d, "A", A);
}

namespace {

void check_damped_matrix(const char* op, const at::Tensor& A, const at::Tensor& d, double lam) {
  check_float(op, "A", A);
  check_square(op, "A", A);
  check_same(op, "d", d, "A", A);
  const int64_t n = A.size(0);
  TORCH_CHECK(d.dim() == 1 && d.size(0) == n, "marquardt::", op, ": d must have shape [", n,
              "] to match A (got shape ", d.sizes(), ")");
  TORCH_CHECK(std::isfinite(lam) && lam >= 0.0, "marquardt::", op, ": lam must be finite and >= 0 (got ", lam, ")");
}

}  // namespace

void add_damping_(const at::Tensor& diag, const at::Tensor& d, double lam) {
  if (diag.scalar_type() == at::kFloat && lam > static_cast<double>(std::numeric_limits<float>::max())) {
    diag.add_(d.to(at::kDouble).mul(lam).to(at::kFloat));
  } else {
    diag.add_(d, lam);
  }
}

void check_damped_cholesky_factor_args(const at::Tensor& A, const at::Tensor& d, double lam) {
  check_damped_matrix("damped_cholesky_factor", A, d, lam);
}

void check_damped_cholesky_solve_args(const at::Tensor& A, const at::Tensor& d, double lam,
                                      const at::Tensor& B) {
  const char* op = "damped_cholesky_solve";
  check_damped_matrix(op, A, d, lam);
  check_same(op, "B", B, "A", A);
  const int64_t n = A.size(0);
  TORCH_CHECK((B.dim() == 1 || B.dim() == 2) && B.size(0) == n,
              "marquardt::damped_cholesky_solve: B must have shape [", n, "] or [", n, ", k] (got shape ",
              B.sizes(), ")");
}

}  // namespace marquardt
