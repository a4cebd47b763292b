// R_ill and R_well (Zheng et al. 2025) and their analytic gradients on the CPU.
//
//   R_well(S) = lam_max^2 / 2 - ||S||_F^2 / (2k)       dR_well/dS = lam_max u u^T - S / k
//   R_ill(S)  = 1 / D,  D = max(||S||_F^2 / (2k) - lam_min^2 / 2, 64 eps ||S||_F^2 / (2k))
//                                                      dR_ill/dS = R_ill^2 (lam_min u u^T - S / k)
// lam and u come from extreme_eigh and are treated as functions of S (first-order
// perturbation: d lam = u^T dS u), so no eigendecomposition is differentiated.
// S: (d, d), lam: (), u: (d,). Forward: one pass over S (||S||_F^2 in float64, scaled when
// its squares would leave float64's range); backward: one fused pass writing
// a (b u u^T + c S) in float64 per entry.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "cpu/checks.h"
#include "solver_policy.h"

namespace condnum {
namespace {

// A 0-dim result in S's dtype; a value beyond its range becomes +-inf (never an error), so
// callers' non-finite safeguards see it.
at::Tensor scalar_like(double value, const at::Tensor& S) {
  return at::scalar_tensor(value, S.options().dtype(at::kDouble)).to(S.scalar_type());
}

// out = a (b u u^T + c S) (policy::rank_one_plus_scaled).
at::Tensor rank_one_plus_scaled(const at::Tensor& S, const at::Tensor& u,
                                const policy::RankOnePlusScaled& coef) {
  const auto Sc = S.contiguous();
  const auto uc = u.contiguous();
  auto out = at::empty_like(Sc);
  const int64_t d = Sc.size(0);
  AT_DISPATCH_FLOATING_TYPES(Sc.scalar_type(), "rank_one_plus_scaled", [&] {
    const scalar_t* s = Sc.const_data_ptr<scalar_t>();
    const scalar_t* v = uc.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, d, 16, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const double bi = coef.b * static_cast<double>(v[i]);
        for (int64_t j = 0; j < d; ++j)
          o[i * d + j] = static_cast<scalar_t>(policy::rank_one_plus_scaled(
              coef, bi, static_cast<double>(v[j]), static_cast<double>(s[i * d + j])));
      }
    });
  });
  return out;
}

// ||S||_F^2 as scale^2 * sum, refusing NaN/Inf.
SquaredNorm checked_squared_norm(const at::Tensor& S, const char* op) {
  const auto n = squared_norm(S);
  TORCH_CHECK_VALUE(n.finite, "condnum.", op, ": S contains NaN or Inf");
  return n;
}

// Values are formed in units of scale^2 (see SquaredNorm) and scaled back last, so they
// overflow to +inf (or underflow to 0) only when the true value does.
at::Tensor r_well_cpu(const at::Tensor& S, const at::Tensor& lam_max, const at::Tensor& u_max,
                      int64_t k) {
  check_spectral_operands(S, lam_max, u_max, k, "r_well", "lam_max", "u_max");
  const auto n = checked_squared_norm(S, "r_well");
  const double lam = lam_max.item<double>() / n.scale;
  return scalar_like((0.5 * lam * lam - n.sum / (2.0 * k)) * n.scale * n.scale, S);
}

at::Tensor r_well_backward_cpu(const at::Tensor& grad, const at::Tensor& S,
                               const at::Tensor& lam_max, const at::Tensor& u_max, int64_t k) {
  check_spectral_operands(S, lam_max, u_max, k, "_r_well_backward", "lam_max", "u_max");
  const auto coefficients = policy::well_backward(grad.item<double>(), lam_max.item<double>(), k);
  return rank_one_plus_scaled(S, u_max, coefficients);
}

at::Tensor r_ill_cpu(const at::Tensor& S, const at::Tensor& lam_min, const at::Tensor& u_min,
                     int64_t k) {
  check_spectral_operands(S, lam_min, u_min, k, "r_ill", "lam_min", "u_min");
  const auto n = checked_squared_norm(S, "r_ill");
  const double lam = lam_min.item<double>() / n.scale;
  const double half_mean_sq = n.sum / (2.0 * k);
  // D = 0 exactly when all k eigenvalues equal lam_min (kappa = 1), and lam_min from
  // outside the spectrum or k beyond the number of eigenvalues can make it negative: D is
  // floored at the rounding level of ||S||_F^2 / (2k), so R_ill stays finite (and large).
  const double D = policy::ill_denominator(half_mean_sq, lam, eps_of(S.scalar_type()));
  return scalar_like(1.0 / D / n.scale / n.scale, S);
}

// dR_ill/dS = grad R (R lam u u^T - (R / k) S): R^2 alone may overflow where the gradient
// does not.
at::Tensor r_ill_backward_cpu(const at::Tensor& grad, const at::Tensor& S, const at::Tensor& r,
                              const at::Tensor& lam_min, const at::Tensor& u_min, int64_t k) {
  check_spectral_operands(S, lam_min, u_min, k, "_r_ill_backward", "lam_min", "u_min");
  const double g = grad.item<double>();
  if (g == 0) return at::zeros_like(S);  // even where R = +inf (S = 0): no push, not NaN
  const double rv = r.item<double>();
  return rank_one_plus_scaled(S, u_min, policy::ill_backward(g, rv, lam_min.item<double>(), k));
}

}  // namespace

TORCH_LIBRARY_IMPL(condnum, CPU, m) {
  m.impl("r_well", &r_well_cpu);
  m.impl("_r_well_backward", &r_well_backward_cpu);
  m.impl("r_ill", &r_ill_cpu);
  m.impl("_r_ill_backward", &r_ill_backward_cpu);
}

}  // namespace condnum
