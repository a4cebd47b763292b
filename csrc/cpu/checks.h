// Validation shared by the CPU kernels. Every message names the op, the argument
// and what was received; condnum/_ops.py's fake kernels check shapes and dtypes in
// the same order.
#pragma once
#include <ATen/ATen.h>

#include <limits>

#include "solver_policy.h"

namespace condnum {

// Machine epsilon of the working dtype (float32 or float64).
inline double eps_of(at::ScalarType t) {
  return t == at::kFloat ? std::numeric_limits<float>::epsilon()
                         : std::numeric_limits<double>::epsilon();
}

inline void check_matrix(const at::Tensor& t, const char* op, const char* arg,
                         bool allow_half = false) {
  TORCH_CHECK_VALUE(t.dim() == 2, "condnum.", op, ": ", arg, " must be a 2-D matrix, got a ",
                    t.dim(), "-D tensor of shape ", t.sizes());
  TORCH_CHECK_VALUE(t.numel() > 0, "condnum.", op, ": ", arg, " must not be empty, got shape ",
                    t.sizes());
  const auto st = t.scalar_type();
  const bool ok = st == at::kFloat || st == at::kDouble ||
                  (allow_half && (st == at::kHalf || st == at::kBFloat16));
  TORCH_CHECK_VALUE(ok, "condnum.", op, ": ", arg, " must be ",
                    allow_half ? "float16, bfloat16, float32 or float64" : "float32 or float64",
                    ", got ", st);
}

inline void check_square(const at::Tensor& S, const char* op, const char* arg) {
  check_matrix(S, op, arg);
  TORCH_CHECK_VALUE(S.size(0) == S.size(1), "condnum.", op, ": ", arg,
                    " must be square, got shape ", S.sizes());
}

inline void check_same(const at::Tensor& a, const at::Tensor& b, const char* op,
                       const char* arg_a, const char* arg_b) {
  TORCH_CHECK_VALUE(a.device() == b.device(), "condnum.", op, ": ", arg_a, " and ", arg_b,
                    " must be on the same device, got ", a.device(), " and ", b.device());
  TORCH_CHECK_VALUE(a.scalar_type() == b.scalar_type(), "condnum.", op, ": ", arg_a, " and ",
                    arg_b, " must have the same dtype, got ", a.scalar_type(), " and ",
                    b.scalar_type());
}

inline void check_k(int64_t k, const char* op) {
  TORCH_CHECK_VALUE(k > 0, "condnum.", op, ": k must be positive, got ", k);
}

// A vector argument (warm start, eigenvector) of shape (d,) matching S's dtype and device.
inline void check_vector_for(const at::Tensor& v, const at::Tensor& S, const char* op,
                             const char* arg) {
  TORCH_CHECK_VALUE(v.dim() == 1 && v.size(0) == S.size(0), "condnum.", op, ": ", arg,
                    " must have shape (", S.size(0), ",), got ", v.sizes());
  check_same(v, S, op, arg, "S");
}

// A kernel test op's operands: A (rows, cols), square if `square`, and v of shape (cols,), or
// (2, cols) for two vectors as rows.
inline void check_one_or_two_vectors(const at::Tensor& A, const at::Tensor& v, bool square,
                                     const char* op, const char* a_name, const char* v_name) {
  const char* n = square ? "d" : "cols";
  TORCH_CHECK_VALUE(A.dim() == 2 && (!square || A.size(0) == A.size(1)) &&
                        (v.dim() == 1 || (v.dim() == 2 && v.size(0) == 2)) &&
                        v.size(-1) == A.size(1),
                    "condnum.", op, ": ", a_name, " must be ", square ? "(d, d)" : "(rows, cols)",
                    " and ", v_name, " (", n, ",) or (2, ", n, "), got ", A.sizes(), " and ",
                    v.sizes());
}

// A kernel test op's two operands: both float32 or both float64.
inline void check_same_float(const at::Tensor& a, const at::Tensor& b, const char* op,
                             const char* a_name, const char* b_name) {
  TORCH_CHECK_VALUE(a.scalar_type() == b.scalar_type() &&
                        (a.scalar_type() == at::kFloat || a.scalar_type() == at::kDouble),
                    "condnum.", op, ": ", a_name, " and ", b_name,
                    " must both be float32 or both float64");
}

// The eigen-solvers' budget and accuracy arguments.
inline void check_budget(int64_t num_iters, double tol, const char* op) {
  TORCH_CHECK_VALUE(num_iters >= 1, "condnum.", op, ": num_iters must be >= 1, got ", num_iters);
  TORCH_CHECK_VALUE(tol != 0, "condnum.", op,
                    ": tol = 0 (a fixed budget of num_iters steps) is a mode of the portable "
                    "backend: use condnum.backend(\"portable\")");
  TORCH_CHECK_VALUE(tol > 0 && tol < 1, "condnum.", op, ": tol must be in (0, 1), got ", tol);
}

inline void check_rtol(double rtol, const char* op) {
  TORCH_CHECK_VALUE(rtol >= 0 && rtol < 1, "condnum.", op, ": rtol must be in [0, 1), got ",
                    rtol);
}

// The regularizers' operands: S (d, d), a 0-dim eigenvalue and its (d,) eigenvector.
inline void check_spectral_operands(const at::Tensor& S, const at::Tensor& lam,
                                    const at::Tensor& u, int64_t k, const char* op,
                                    const char* lam_arg, const char* u_arg) {
  check_square(S, op, "S");
  check_k(k, op);
  TORCH_CHECK_VALUE(lam.dim() == 0, "condnum.", op, ": ", lam_arg, " must be 0-dim, got shape ",
                    lam.sizes());
  check_vector_for(u, S, op, u_arg);
  check_same(S, lam, op, "S", lam_arg);
}

// Symmetric matrices are accepted up to rounding: |S_ij - S_ji| <= sqrt(eps) * max|S|.
template <typename scalar_t>
constexpr double symmetry_rtol() {
  return policy::symmetry_rtol(std::is_same_v<scalar_t, float>);
}

struct Symmetrized {
  at::Tensor W;        // (S + S^T) / 2
  double max_abs = 0;  // max |S_ij|
};

// Checks S (d x d, float32/float64) is finite and symmetric, and returns W = (S + S^T) / 2
// in `work_dtype`: S itself (no copy) when it is already exactly symmetric in that dtype,
// else a contiguous symmetrised copy. Callers only read W.
Symmetrized symmetrized(const at::Tensor& S, const char* op, const char* arg,
                        at::ScalarType work_dtype);

// A power of two p such that max|S / p| is in [0.5, 1) when max_abs lies outside the range in
// which the solvers' float arithmetic on S (squared norms of S v in S's dtype) can neither
// overflow nor underflow; 1 inside it. Scaling by p is exact.
double range_scale(double max_abs, at::ScalarType dtype);

// ||S||_F^2 = scale^2 * sum, accumulated in float64 row by row in index order, so the
// result is the same bit for bit for any memory layout of S. scale is a power of two, 1
// unless float64 squares of S's entries would overflow or underflow.
struct SquaredNorm {
  double scale = 1, sum = 0;
  bool finite = true;  // false when S contains NaN or Inf
};
SquaredNorm squared_norm(const at::Tensor& S);

}  // namespace condnum
