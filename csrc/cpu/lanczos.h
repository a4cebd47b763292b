// Lanczos with full reorthogonalisation for a symmetric operator on the CPU.
//
// From a unit start vector v_0, builds an orthonormal Krylov basis V = [v_0 .. v_{m-1}]
// and the tridiagonal T = V^T A V (alpha on the diagonal, beta off it). Each new
// direction is orthogonalised against the whole basis twice (classical Gram-Schmidt,
// "twice is enough"), so Ritz values do not repeat. Ritz pairs (theta_i, y_i = V s_i)
// come from eigh(T); ||A y_i - theta_i y_i|| = beta_m |s_{m-1,i}| is their residual.
// Cost per step: one operator application plus 4 m d flops; memory (m+1) d.
#pragma once
#include <ATen/ATen.h>

#include <functional>

namespace condnum {

struct RitzPairs {
  at::Tensor values;     // (m,) float64, ascending
  at::Tensor vectors;    // (m, m) float64, columns s_i (eigenvectors of T)
  at::Tensor residuals;  // (m,) float64, ||A y_i - theta_i y_i||
  int64_t m = 0;
  bool invariant = false;  // the Krylov space is A-invariant: Ritz pairs are exact

  // Error bound for Ritz value i: its residual norm.
  double error_bound(int64_t i) const;
  double value(int64_t i) const { return values[i].item<double>(); }
};

struct LanczosResult {
  RitzPairs ritz;
  at::Tensor basis;  // (m, d), rows v_j, in the operator's dtype
  // y_i = V^T s_i, a unit vector.
  at::Tensor ritz_vector(int64_t i) const;
};

using Operator = std::function<void(const at::Tensor& v, at::Tensor& w)>;  // w = A v
using Converged = std::function<bool(const RitzPairs&)>;

// Runs at most min(max_iters, d) steps from v0 (any nonzero vector), stopping early when
// `converged` says so (checked every few steps) or when the Krylov space becomes invariant.
LanczosResult lanczos(const Operator& apply, const at::Tensor& v0, int64_t max_iters,
                      const Converged& converged);

// A deterministic pseudo-random unit vector (splitmix64 of the index): no RNG state used.
at::Tensor pseudo_random_unit(int64_t d, const at::TensorOptions& options);

}  // namespace condnum
