// extreme_eigh(S): the extreme eigenpairs of a symmetric PSD S on the CPU.
//
//   lam_max = max eig(S),  lam_min = min { lam in eig(S) : lam > rtol * lam_max }
//   S: (d, d) float32/float64 -> lam_min, lam_max: () and u_min, u_max: (d,), dtype of S.
//
// 1. Lanczos on S itself (dtype of S) from the warm-start vectors (or a fixed
//    pseudo-random one) gives lam_max and, when S is well conditioned, lam_min.
// 2. Otherwise (the bottom Ritz value has not converged, sits below the numerical-range
//    threshold, or S is ill-conditioned) the bottom end comes from shift-and-invert in
//    float64: Lanczos on (S + tau I)^{-1} through a Cholesky factor, tau = max(rtol,
//    8 d eps64) lam_max. Eigenvalues below the threshold map to the top of that
//    spectrum, (1/(2 tau), 1/tau], so the wanted one is the largest Ritz value whose
//    lam = 1/theta - tau exceeds rtol * lam_max; relative accuracy does not degrade
//    with kappa.
// Convergence: a Ritz value is accepted when its residual norm r (|lam - theta| <= r) is below
// tol * |lam|. Cost: O(m d^2) for step 1; d^3/3 (Cholesky) + O(m d^2) for step 2.
// Eigenvector signs: the component of largest magnitude is positive.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "cpu/checks.h"
#include "cpu/lanczos.h"

namespace condnum {
namespace {

// Above this kappa estimate plain Lanczos is not asked for the bottom end.
constexpr double kPlainKappaLimit = 1e3;
constexpr int kCholeskyRetries = 4;  // tau grows 10x per retry (rounding made S indefinite)

at::Tensor unit_or_none(const std::optional<at::Tensor>& v, const at::Tensor& S,
                        const char* arg) {
  if (!v.has_value()) return {};
  const auto& t = *v;
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == S.size(0), "condnum.extreme_eigh: ", arg,
                    " must have shape (", S.size(0), ",), got ", t.sizes());
  check_same(t, S, "extreme_eigh", arg, "S");
  const double n = t.norm().item<double>();
  TORCH_CHECK_VALUE(std::isfinite(n) && n > 0, "condnum.extreme_eigh: ", arg,
                    " must be finite and nonzero, got norm ", n);
  return t / n;
}

// Start vector: sum of the normalised warm starts plus a pseudo-random component, so
// that no eigenvector is missed when a warm start is orthogonal to it.
at::Tensor start_vector(const at::Tensor& a, const at::Tensor& b, const at::Tensor& random) {
  auto v = random.clone();
  if (a.defined()) v = v + a;
  if (b.defined()) v = v + b;
  return v;
}

at::Tensor with_sign_convention(at::Tensor u) {
  const auto i = u.abs().argmax().item<int64_t>();
  return u[i].item<double>() < 0 ? -u : u;
}

struct Bottom {
  double lam;
  at::Tensor u;    // float64
  double rel_err;  // error bound of lam, relative
};

// Bottom of the numerical range by shift-and-invert Lanczos (float64).
Bottom shift_invert_bottom(const at::Tensor& W, double lam_max, double rtol, double tol,
                           int64_t num_iters, const at::Tensor& start) {
  const int64_t d = W.size(0);
  const auto W64 = W.to(at::kDouble);
  const double eps64 = std::numeric_limits<double>::epsilon();
  double tau = std::max(rtol, 8.0 * d * eps64) * lam_max;
  at::Tensor L;
  for (int attempt = 0;; ++attempt, tau *= 10) {
    auto shifted = W64.clone();
    shifted.diagonal().add_(tau);
    auto [factor, info] = at::linalg_cholesky_ex(shifted);
    if (info.item<int64_t>() == 0) {
      L = factor;
      break;
    }
    TORCH_CHECK_VALUE(attempt < kCholeskyRetries, "condnum.extreme_eigh: S must be positive ",
                      "semi-definite, but the Cholesky factorisation of S + tau*I failed for tau ",
                      "up to ", tau, " (lam_max = ", lam_max, ")");
  }
  const double threshold = rtol * lam_max;
  auto col = at::empty({d, 1}, W64.options());
  const Operator apply = [&](const at::Tensor& v, at::Tensor& w) {
    col.select(1, 0).copy_(v);
    w.copy_(at::cholesky_solve(col, L).select(1, 0));
  };
  // theta = 1 / (lam + tau); the wanted Ritz value is the largest one above threshold.
  auto wanted = [&](const RitzPairs& r) -> int64_t {
    for (int64_t i = r.m - 1; i >= 0; --i) {
      const double theta = r.value(i);
      if (theta > 0 && 1.0 / theta - tau > threshold) return i;
    }
    return -1;
  };
  auto accurate = [&](const RitzPairs& r, int64_t i) {
    const double theta = r.value(i), lam = 1.0 / theta - tau;
    // |d lam| = |d theta| / theta^2
    return r.invariant || r.error_bound(i) / (theta * theta) <= tol * lam;
  };
  const auto result = lanczos(apply, start.to(at::kDouble), num_iters, [&](const RitzPairs& r) {
    const int64_t i = wanted(r);
    return i >= 0 && accurate(r, i);
  });
  const int64_t i = wanted(result.ritz);
  TORCH_CHECK_VALUE(i >= 0, "condnum.extreme_eigh: found no eigenvalue above rtol * lam_max = ",
                    threshold, " in ", result.ritz.m, " shift-and-invert Lanczos steps; S is ",
                    "numerically zero or rtol is too large");
  const double theta = result.ritz.value(i), lam = 1.0 / theta - tau;
  const double err = result.ritz.invariant ? 0.0 : result.ritz.error_bound(i) / (theta * theta * lam);
  return {lam, result.ritz_vector(i), err};
}

void check_budget(int64_t num_iters, double tol, const char* op) {
  TORCH_CHECK_VALUE(num_iters >= 1, "condnum.", op, ": num_iters must be >= 1, got ", num_iters);
  TORCH_CHECK_VALUE(tol > 0 && tol < 1, "condnum.", op, ": tol must be in (0, 1), got ", tol);
}

// Step 1: Lanczos on S (W, its symmetrised copy). Stops when lam_max has converged and,
// if `want_bottom`, when the bottom Ritz value has converged above rtol * lam_max or
// is clearly too ill-conditioned for plain Lanczos. Sets `bottom_converged`.
LanczosResult plain_lanczos(const at::Tensor& W, const at::Tensor& start, int64_t num_iters,
                            double tol, double rtol, bool want_bottom, bool& bottom_converged,
                            const char* op) {
  bottom_converged = false;
  const double eps = W.scalar_type() == at::kFloat ? std::numeric_limits<float>::epsilon()
                                                   : std::numeric_limits<double>::epsilon();
  // Lanczos in the working precision resolves eigenvalues to ~eps * lam_max absolutely,
  // so it can deliver relative accuracy tol only for bottom >= (10 eps / tol) * lam_max.
  const double resolvable = std::max(rtol, 10 * eps / tol);
  const Operator apply = [&](const at::Tensor& v, at::Tensor& w) { at::mv_out(w, W, v); };
  auto result = lanczos(apply, start, num_iters, [&](const RitzPairs& r) {
    const double top = r.value(r.m - 1), bottom = r.value(0);
    if (r.error_bound(r.m - 1) > tol * std::abs(top)) return false;
    if (!want_bottom) return true;
    bottom_converged = bottom > resolvable * top && r.error_bound(0) <= tol * bottom;
    return bottom_converged || bottom * kPlainKappaLimit < top;
  });
  const auto& ritz = result.ritz;
  const double top = ritz.value(ritz.m - 1), bottom = ritz.value(0);
  // Ritz values bound the spectrum from inside, so a clearly negative one proves S indefinite.
  TORCH_CHECK_VALUE(bottom >= -std::sqrt(eps) * std::abs(top), "condnum.", op,
                    ": S must be positive semi-definite, but it has an eigenvalue ", bottom,
                    " < 0 (lam_max = ", top, ")");
  if (ritz.invariant) bottom_converged = bottom > resolvable * top;
  return result;
}

// Relative error bound of the top Ritz value (0 for an invariant Krylov space).
double top_error(const RitzPairs& r) {
  const double top = std::abs(r.value(r.m - 1));
  return top > 0 ? r.error_bound(r.m - 1) / top : 0.0;
}

at::Tensor as_error(double err) { return at::scalar_tensor(err, at::kDouble); }

std::tuple<at::Tensor, at::Tensor, at::Tensor> top_eigh_cpu(const at::Tensor& S, int64_t num_iters,
                                                double tol, const std::optional<at::Tensor>& v0) {
  check_square(S, "top_eigh", "S");
  check_budget(num_iters, tol, "top_eigh");
  const auto a = unit_or_none(v0, S, "v0");
  const auto W = symmetrized(S, "top_eigh", "S", S.scalar_type());
  bool unused;
  const auto plain = plain_lanczos(W, start_vector(a, {}, pseudo_random_unit(W.size(0), W.options())),
                                   num_iters, tol, 0.0, false, unused, "top_eigh");
  const int64_t top = plain.ritz.m - 1;
  return {at::scalar_tensor(plain.ritz.value(top), S.options()),
          with_sign_convention(plain.ritz_vector(top)), as_error(top_error(plain.ritz))};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> extreme_eigh_cpu(
    const at::Tensor& S, int64_t num_iters, double rtol, double tol,
    const std::optional<at::Tensor>& v0_min, const std::optional<at::Tensor>& v0_max) {
  check_square(S, "extreme_eigh", "S");
  check_budget(num_iters, tol, "extreme_eigh");
  TORCH_CHECK_VALUE(rtol >= 0 && rtol < 1, "condnum.extreme_eigh: rtol must be in [0, 1), got ",
                    rtol);
  const auto a = unit_or_none(v0_max, S, "v0_max");
  const auto b = unit_or_none(v0_min, S, "v0_min");
  const auto W = symmetrized(S, "extreme_eigh", "S", S.scalar_type());
  const auto random = pseudo_random_unit(W.size(0), W.options());

  // 1. Both ends from one Krylov space of S.
  bool bottom_converged;
  const auto plain = plain_lanczos(W, start_vector(a, b, random), num_iters, tol, rtol, true,
                                   bottom_converged, "extreme_eigh");
  const auto& ritz = plain.ritz;
  const double lam_max = ritz.value(ritz.m - 1);
  auto u_max = with_sign_convention(plain.ritz_vector(ritz.m - 1));
  const auto opts = S.options();
  if (lam_max <= 0) {  // S == 0: every unit vector is an eigenvector of eigenvalue 0
    auto zero = at::zeros({}, opts);
    return {zero, zero.clone(), u_max.clone(), u_max, as_error(0.0)};
  }

  // 2. The bottom end, by shift-and-invert unless plain Lanczos already has it.
  double lam_min, err = top_error(ritz);
  at::Tensor u_min;
  if (bottom_converged) {
    lam_min = ritz.value(0);
    u_min = plain.ritz_vector(0);
    err = std::max(err, ritz.error_bound(0) / lam_min);
  } else {
    const auto start =
        b.defined() ? start_vector(b, {}, random) : plain.ritz_vector(0) + random;
    auto r = shift_invert_bottom(W, lam_max, rtol, tol, num_iters, start);
    lam_min = r.lam;
    u_min = r.u.to(S.scalar_type());
    err = std::max(err, r.rel_err);
  }
  return {at::scalar_tensor(lam_min, opts), at::scalar_tensor(lam_max, opts),
          with_sign_convention(u_min), u_max, as_error(err)};
}

}  // namespace

TORCH_LIBRARY_IMPL(condnum, CPU, m) {
  m.impl("extreme_eigh", &extreme_eigh_cpu);
  m.impl("top_eigh", &top_eigh_cpu);
}

}  // namespace condnum
