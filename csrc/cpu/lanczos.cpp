#include "cpu/lanczos.h"

#include <cmath>
#include <limits>
#include <vector>

namespace condnum {
namespace {

// Ritz pairs of the m x m tridiagonal T(alpha, beta[0..m-2]); beta[m-1] is the
// residual coupling to the next (unbuilt) basis vector.
RitzPairs ritz_pairs(const std::vector<double>& alpha, const std::vector<double>& beta,
                     bool invariant) {
  const int64_t m = static_cast<int64_t>(alpha.size());
  auto T = at::zeros({m, m}, at::kDouble);
  double* t = T.mutable_data_ptr<double>();
  for (int64_t i = 0; i < m; ++i) {
    t[i * m + i] = alpha[i];
    if (i + 1 < m) t[i * m + i + 1] = t[(i + 1) * m + i] = beta[i];
  }
  auto [values, vectors] = at::linalg_eigh(T);
  const double beta_m = invariant ? 0.0 : beta[m - 1];
  RitzPairs r;
  r.values = values;
  r.vectors = vectors;
  r.residuals = vectors[m - 1].abs() * beta_m;
  r.m = m;
  r.invariant = invariant;
  return r;
}

// Steps at which convergence is tested: every 4 after the first 8 (eigh(T) is cheap
// but not free).
bool is_check_step(int64_t m) { return m >= 8 && m % 4 == 0; }

}  // namespace

double RitzPairs::error_bound(int64_t i) const {
  // The residual bounds the distance to the nearest eigenvalue (|lam - theta| <= r).
  // The sharper r^2/gap needs the gap to the rest of the true spectrum; the gap between
  // Ritz values overestimates it while a cluster is unresolved, and accepted a Ritz
  // value of the second eigenvalue (0.9967 for 1.0) in a test.
  return residuals[i].item<double>();
}

at::Tensor LanczosResult::ritz_vector(int64_t i) const {
  auto y = at::mv(basis.t(), ritz.vectors.select(1, i).to(basis.scalar_type()));
  return y / y.norm();
}

LanczosResult lanczos(const Operator& apply, const at::Tensor& v0, int64_t max_iters,
                      const Converged& converged) {
  const int64_t d = v0.size(0);
  const int64_t steps = std::min(max_iters, d);
  const double eps = v0.scalar_type() == at::kFloat ? std::numeric_limits<float>::epsilon()
                                                    : std::numeric_limits<double>::epsilon();
  auto V = at::empty({steps + 1, d}, v0.options());
  auto w = at::empty({d}, v0.options());
  auto h = at::empty({steps + 1}, v0.options());
  V[0].copy_(v0 / v0.norm());

  std::vector<double> alpha, beta;
  double scale = 0.0;  // running estimate of ||A|| on the Krylov space
  bool invariant = false;
  RitzPairs ritz;
  for (int64_t j = 0; j < steps; ++j) {
    const auto vj = V[j];
    apply(vj, w);
    alpha.push_back(at::dot(vj, w).item<double>());
    const auto Vj = V.narrow(0, 0, j + 1);
    auto hj = h.narrow(0, 0, j + 1);
    for (int pass = 0; pass < 2; ++pass) {
      at::mv_out(hj, Vj, w);
      w.addmv_(Vj.t(), hj, /*beta=*/1, /*alpha=*/-1);
    }
    const double b = w.norm().item<double>();
    scale = std::max({scale, std::abs(alpha.back()), b});
    beta.push_back(b);
    // A breakdown means V spans an invariant subspace: its Ritz pairs are exact.
    invariant = b <= 10.0 * std::sqrt(static_cast<double>(d)) * eps * scale || j + 1 == d;
    if (invariant) break;
    auto next = V[j + 1];
    at::div_out(next, w, b);
    if (is_check_step(j + 1) || j + 1 == steps) {
      ritz = ritz_pairs(alpha, beta, false);
      if (converged(ritz)) break;
    }
  }
  const int64_t m = static_cast<int64_t>(alpha.size());
  if (ritz.m != m || invariant) ritz = ritz_pairs(alpha, beta, invariant);
  return {ritz, V.narrow(0, 0, m)};
}

at::Tensor pseudo_random_unit(int64_t d, const at::TensorOptions& options) {
  auto v = at::empty({d}, options.dtype(at::kDouble));
  double* p = v.mutable_data_ptr<double>();
  for (int64_t i = 0; i < d; ++i) {
    uint64_t z = static_cast<uint64_t>(i) + 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    p[i] = static_cast<double>(z >> 11) * (2.0 / 9007199254740992.0) - 1.0;  // [-1, 1)
  }
  return (v / v.norm()).to(options.dtype());
}

}  // namespace condnum
