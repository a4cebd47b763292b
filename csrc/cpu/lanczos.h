// Lanczos with full reorthogonalisation for a symmetric operator on the CPU.
//
// From a unit start vector v_0, builds an orthonormal Krylov basis V = [v_0 .. v_{m-1}]
// (rows of a preallocated (max_steps + 1, d) buffer) and the tridiagonal T = V^T A V
// (alpha on the diagonal, beta off it). Each new direction w = A v_j loses the three-term
// recurrence's beta_{j-1} v_{j-1} + alpha_j v_j first, then is orthogonalised against the
// whole basis by classical Gram-Schmidt, with a second pass when the first removed more
// than half of ||w||^2 (DGKS criterion, "twice is enough"), so Ritz values do not repeat.
// Ritz pair i (theta_i, y_i = V^T s_i), i = 0 the smallest, comes from T by O(m)
// tridiagonal routines: theta_i by Sturm-sequence bisection (at the two ends of the
// spectrum, which the checks read at every step, Newton's method on det(x I - T) from
// outside the spectrum first, so that bisection has a few halvings left), s_i by inverse
// iteration. Its residual is r = ||A y_i - theta_i y_i|| = beta_m |s_i[m-1]|, and some
// eigenvalue of A lies within r of theta_i: r is the error bound used (ARPACK's test; the
// sharper r^2 / gap is unsafe while a cluster is unresolved, see ritz()), floored at the
// rounding of the products A v (policy::product_floor), below which r keeps falling.
// Cost per step: one operator application, O(d) for the recurrence, plus 4 m d flops (8 m d
// with the rare second pass) by gram_schmidt_pass (two gemv per pass on the contiguous
// basis, the product's kernel choice); a convergence check costs O(m) per Ritz value;
// memory (max_steps + 1) d, allocated once.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "cpu/matvec.h"

namespace condnum {

// ---------------------------------------------------------------- tridiagonal routines, O(m)
// T is m x m with diagonal alpha[0..m) and off-diagonal beta[0..m-1).
struct Tridiagonal {
  const double* alpha;
  const double* beta;
  int64_t m;
};
// Number of eigenvalues of T below x (Sturm sequence of the LDL^T pivots of T - x I).
int64_t sturm_count(const Tridiagonal& T, double x);
// What a Ritz value i was at an earlier check of the same Lanczos run, at the same end of
// the spectrum (i = 0, or the same offset from the top), with its error bound.
struct RitzHint {
  double value, bound;
};
// Ritz value i of T (0 = the smallest) to about machine precision: bisection in T's
// Gershgorin interval, or in the bracket a hint gives once two Sturm counts verify it, where
// the smallest and the largest are found by Newton's method on det(x I - T) first.
double ritz_value(const Tridiagonal& T, int64_t i, const RitzHint* hint);
// A unit eigenvector s (m,) of T for its eigenvalue theta, by inverse iteration (tridiagonal
// LU with partial pivoting). `work` is resized as needed.
void tridiagonal_eigenvector(const Tridiagonal& T, double theta, double* s,
                             std::vector<double>& work);

// ---------------------------------------------------------------- Lanczos
struct Ritz {
  int64_t index = -1;     // 0 = smallest Ritz value
  int64_t m = 0;          // basis size it was computed at
  double value = 0;       // theta_i
  double residual = 0;    // r = ||A y_i - theta_i y_i||
  double bound = 0;       // error bound on theta_i: the residual, at least
                          // policy::product_floor (S v's rounding)
  std::vector<double> s;  // (m,) eigenvector of T_m: y_i = V_m^T s
};

template <typename scalar_t>
class Lanczos {
 public:
  // w = A v for v, w: (d,) of scalar_t; w is a preallocated buffer written in place.
  using Operator = std::function<void(const at::Tensor& v, at::Tensor& w)>;
  // wa = A va and wb = A vb in one application (two runs in lockstep, step_pair).
  using PairOperator = std::function<void(const at::Tensor& va, const at::Tensor& vb,
                                          at::Tensor& wa, at::Tensor& wb)>;

  // Preallocates the basis for min(max_steps, d) steps. `opts` gives the device (CPU).
  // Each step is a profiler range named `step_name` (torch.profiler; free when not profiling).
  Lanczos(int64_t d, int64_t max_steps, Operator apply, const at::TensorOptions& opts,
          const char* step_name);

  // Starts from v0 (any nonzero vector of shape (d,), converted to scalar_t).
  void start(const at::Tensor& v0);
  // One step: extends the basis by A v_{m-1}. Returns false once the basis is full or
  // A-invariant (then no further step is taken; the Ritz residuals are below the breakdown
  // level).
  bool step();
  // The same step in two halves, for runs that share one application of the operator
  // (step_pair): the vector it applies A to, the buffer for A v, then the rest of the step.
  at::Tensor operand() const { return V_.select(0, m_); }
  at::Tensor& product() { return w_; }
  void finish_step();

  int64_t size() const { return m_; }
  int64_t max_steps() const { return steps_; }
  bool invariant() const { return invariant_; }
  bool can_step() const { return !invariant_ && m_ < steps_; }
  // Running max of |alpha|, beta: an estimate of ||A|| on the Krylov space.
  double scale() const { return scale_; }

  // Ritz value i of T_m (0 = smallest), O(m) by bisection, or as ritz() found it at this size.
  double value(int64_t i) const;
  // The largest Ritz magnitude, max(|theta_0|, |theta_{m-1}|).
  double max_abs_value() const;
  // Number of Ritz values below x.
  int64_t count_below(double x) const;
  // Ritz pair i with residual and error bound: O(m) (bisection, bracketed by the previous
  // check at the same end, after Newton's method for the smallest and largest, and inverse
  // iteration for s_i).
  Ritz ritz(int64_t i);
  // The same into r, reusing its storage (no allocation once r.s has capacity max_steps()).
  void ritz(int64_t i, Ritz& r);
  // y_i = V^T s_i (unit, float64 accumulation) for a pair computed at this or a smaller size.
  at::Tensor ritz_vector(const Ritz& r, at::ScalarType dtype) const;

 private:
  Tridiagonal tridiagonal() const { return {alpha_.data(), beta_.data(), m_}; }

  // The last check at each end (the bottom, and a fixed offset from the top): a bracket
  // for the next one.
  struct End {
    double value = 0, bound = 0;
    int64_t m = 0, from_top = -1;
  };

  Operator apply_;
  const char* step_name_;
  int64_t d_, steps_, m_ = 0;
  End bottom_, top_;
  at::Tensor V_;  // (steps + 1, d), rows v_j
  at::Tensor w_;  // (d,) the new direction
  at::Tensor h_;  // (steps + 1,) Gram-Schmidt coefficients
  std::vector<double> alpha_, beta_, work_;
  double scale_ = 0, eps_;
  Matvec kernel_;  // of the Gram-Schmidt passes: CONDNUM_MATVEC's choice when constructed
  bool invariant_ = false;
};

extern template class Lanczos<float>;
extern template class Lanczos<double>;

// One step of each run that is `on` and can step: both through one application of `apply`
// when both do (a profiler range named pair_name), else the one alone (its own range). A
// paired step costs about one step where the operator streams A from cache or memory (a
// product read once for two vectors, a triangular solve with two right-hand sides).
// Returns false when neither stepped.
template <typename scalar_t>
bool step_pair(Lanczos<scalar_t>& a, bool a_on, Lanczos<scalar_t>& b, bool b_on,
               const typename Lanczos<scalar_t>::PairOperator& apply, const char* pair_name);

// A deterministic pseudo-random unit vector (splitmix64 of index + (stream + 1) * golden
// gamma): no RNG state used. Streams are independent draws; stream 0 starts every solve.
at::Tensor pseudo_random_unit(int64_t d, const at::TensorOptions& options, uint64_t stream = 0);

}  // namespace condnum
