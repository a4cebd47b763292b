// extreme_eigh(S): the extreme eigenpairs of a symmetric PSD S on the CPU.
//
//   lam_max = max eig(S),  lam_min = min { lam in eig(S) : lam > rtol * lam_max }
//   S: (d, d) float32/float64 -> lam_min, lam_max: () and u_min, u_max: (d,), dtype of S;
//   err: () float64, the larger relative error bound of the two eigenvalues (the Python
//   wrappers warn when it exceeds tol; top_eigh returns lam_max, u_max, err).
//
// 1. Lanczos on S itself (dtype of S; S is read in place when exactly symmetric) from the
//    warm-start vectors (or a fixed pseudo-random one) until lam_max has converged. The
//    bottom Ritz value comes from the same Krylov space; Lanczos goes on for it only while
//    its error bound keeps falling fast enough to beat step 2 (a ski-rental budget of a
//    fraction of step 2's estimated cost) and S is not too ill-conditioned for the bottom
//    end in S's dtype.
// 2. Otherwise the bottom end comes from shift-and-invert Lanczos in float64 through a
//    factorisation of a shifted S. Usually a Cholesky factor of S + tau I, tau =
//    max(rtol, 8 d eps64) lam_max: eigenvalues below the threshold rtol * lam_max map to
//    the top of that spectrum, (1/(2 tau), 1/tau], so the wanted one is the largest Ritz
//    value whose lam = 1/theta - tau exceeds the threshold; relative accuracy does not
//    degrade with kappa. When the spectrum reaches down near a threshold well above
//    rounding level (float32 S with kappa ~ 1/rtol or beyond), an LDL^T factor of
//    S - rtol lam_max I is used instead: the wanted eigenvalue is then the top of the
//    positive part, well separated, and eigenvalues crowding just below the threshold
//    cannot hide it (the Cholesky route also falls back to it when it finds them).
// Restart check: before either end is accepted, a second run from an independent
// pseudo-random start, in lockstep with the first (one pass over S or the factor for both),
// must not find a Ritz value more extreme by more than the accepted one's bound (Check,
// InvertCheck): single-vector Lanczos from a start nearly orthogonal to the extreme
// eigenvector settles on a neighbour otherwise.
// Convergence: a Ritz value is accepted when its residual r = ||S y - theta y|| (some
// eigenvalue lies within r of theta) is below tol * |lam| at two consecutive steps; it is
// checked after every step in O(m) (tridiagonal bisection and inverse iteration), so no
// step is wasted. The residual is floored at the rounding of S v (policy::product_floor),
// err returns the larger of the two relative bounds, at least the rounding of the returned
// values to S's dtype (policy::with_output_rounding). Cost: O(m d^2) for step 1;
// d^3/3 (the factorisation) + O(m d^2) for step 2.
// Eigenvector signs: the component of largest magnitude is positive.
// floored_min (R_ill's floored bottom, at the end of this file) shares these steps, with one
// factorisation of S - rtol lam_max I as both the floor test and the step-2 operator.
#include <ATen/ATen.h>
#include <ATen/Config.h>
#include <ATen/Parallel.h>
#if AT_BUILD_WITH_LAPACK()
#include <ATen/native/BatchLinearAlgebra.h>
#endif
#include <torch/library.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "cpu/checks.h"
#include "cpu/cholesky_solve.h"
#include "cpu/lanczos.h"
#include "cpu/matvec.h"
#include "cpu/symmetric_matvec.h"
#include "solver_policy.h"

namespace condnum {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
using policy::Acceptance;
using policy::kCheckStream;
using policy::kFirstCheck;
using policy::kRateWindow;
using policy::relative;

at::Tensor unit_or_none(const std::optional<at::Tensor>& v, const at::Tensor& S, const char* op,
                        const char* arg) {
  if (!v.has_value()) return {};
  const auto& t = *v;
  check_vector_for(t, S, op, arg);
  const double n = t.norm().item<double>();
  TORCH_CHECK_VALUE(std::isfinite(n) && n > 0, "condnum.", op, ": ", arg,
                    " must be finite and nonzero, got norm ", n);
  return t / n;
}

// Start vector: the normalised warm starts plus policy::kStartRandomWeight times the
// pseudo-random unit vector (the random vector alone when there is no warm start).
at::Tensor start_vector(const at::Tensor& a, const at::Tensor& b, const at::Tensor& random) {
  if (!a.defined() && !b.defined()) return random;
  auto v = random * policy::kStartRandomWeight;
  if (a.defined()) v.add_(a);
  if (b.defined()) v.add_(b);
  return v;
}

at::Tensor with_sign_convention(at::Tensor u) {
  const auto i = u.abs().argmax().item<int64_t>();
  return u[i].item<double>() < 0 ? -u : u;
}

// Estimated cost of the shift-and-invert solve (a float64 Cholesky plus ~40 pairs of
// triangular solves; the solves alone when the factor is paid anyway: floored_min's floor
// test), in units of one plain Lanczos step (a product with S in its dtype, memory-bound).
// Measured on x86 CPUs with the own product and solves on one thread: a float64 Cholesky
// costs ~d/9 float64 products on one thread (LAPACK scales with threads, those loops then
// did not), a solve pair ~1.3; float32 products are ~1.8x cheaper than float64 ones.
double shift_invert_cost(int64_t d, at::ScalarType dtype, bool factor_paid) {
  const double threads = std::max(1, at::get_num_threads());
  const double chol = factor_paid ? 0.0 : static_cast<double>(d) / (9.0 * std::pow(threads, 0.8));
  return (chol + 40 * 1.3) * (dtype == at::kFloat ? 1.8 : 1.0);
}

// ---------------------------------------------------------------- step 1: Lanczos on S

struct Plain {
  double lam_max = 0, lam_bottom = 0;  // lam_bottom: the smallest Ritz value above the threshold
  double lowest = 0;                   // the smallest Ritz value
  double err_max = 0, err_bottom = 0;  // relative error bounds
  at::Tensor u_max, u_bottom;          // dtype of S
  bool bottom_converged = false;
  int64_t steps = 0;
};

// ---------------------------------------------------------------- restart check
// Single-vector Lanczos can accept a neighbour of an extreme eigenvalue: when the start
// vector is nearly orthogonal to the extreme eigenvector, the Krylov space resolves the
// next eigenvalue first, and its residual bound (honest for that eigenvalue) meets tol.
// So a second run from an independent pseudo-random start (stream kCheckStream, so results
// stay deterministic) goes alongside the first, in lockstep, each step's two products one
// pass over S (step_pair: about the cost of one product). Ritz values lie below lam_max,
// so if the first settled on a neighbour, the check's top Ritz value rises above theta by
// more than theta's bound: its pair, the more extreme, replaces the first (within that
// bound the first stands, so that rounding noise between two runs that found the same
// eigenvalue does not swap their vectors). The check is accepted by the same rule as the
// first run (bound <= tol |theta| at two consecutive steps): a looser one settles before a
// tight cluster is resolved (measured). A bottom value accepted from plain Lanczos is
// checked by the same run: it stands only if the check's own bottom Ritz value in the
// numerical range converges at or above it (minus its bound) within the first run's step
// count plus kRateWindow; otherwise shift-and-invert, started from the check's bottom Ritz
// vector, takes over. Cost: the second run's orthogonalisation, and its steps past the
// first run's (a warm start shortens only the first).

// Advances a first run and its restart check in lockstep (step_pair) until the first has
// ended and the check is decided or not needed. first_ended(): after a step of the first,
// whether it has ended; on_first_end(): called once then, whether the check is needed;
// check_decided(first_done): after a step of the check, whether it is decided (while the
// first runs: whether it may pause).
template <typename scalar_t, typename Ended, typename OnEnd, typename Decided>
void run_with_check(Lanczos<scalar_t>& lz, Lanczos<scalar_t>& ck,
                    const typename Lanczos<scalar_t>::PairOperator& apply2, const char* pair_name,
                    Ended first_ended, OnEnd on_first_end, Decided check_decided) {
  bool first_done = false, check_done = false;
  while (!(first_done && check_done)) {
    const bool a = !first_done, b = !check_done;
    if (!step_pair(lz, a, ck, b, apply2, pair_name)) break;
    if (a && first_ended()) {
      first_done = true;
      check_done = !on_first_end() || (check_done && check_decided(true));
    }
    if (b && !check_done) check_done = check_decided(first_done);
  }
  TORCH_INTERNAL_ASSERT(first_done);  // first_ended() is true once lz cannot step
}

struct Check {
  bool top_decided = false, bottom_decided = false, bottom_refuted = false;
  bool check_bottom = false;  // a bottom accepted by the first run is to be checked
  double below = 0;           // the check's bottom refutes it below this
  int64_t bottom_budget = 0;
  Acceptance top_ok, bottom_ok;
  Ritz r, b;  // the check's top pair, its bottom pair in the numerical range

  // After a step of ck: whether the check is decided. `first_done`: the first run has
  // ended and set check_bottom, below and bottom_budget.
  template <typename scalar_t>
  bool decided(Lanczos<scalar_t>& ck, bool first_done, bool want_bottom, double tol,
               double rtol) {
    const int64_t m = ck.size();
    if (m < kFirstCheck && ck.can_step()) return false;
    if (!top_decided) {
      ck.ritz(m - 1, r);
      top_decided = ck.invariant() || top_ok(r.bound <= tol * std::abs(r.value), m);
    }
    if (!first_done) return top_decided && !want_bottom;
    if (!bottom_decided) {
      const int64_t ib = rtol > 0 ? ck.count_below(rtol * r.value) : 0;
      if (ib < m) {
        ck.ritz(ib, b);
        bottom_refuted = b.value < below;
        bottom_decided = bottom_refuted || ck.invariant() || bottom_ok(b.bound <= tol * b.value, m);
      }
      if (!bottom_decided && m >= bottom_budget) bottom_decided = bottom_refuted = true;
    }
    return top_decided && bottom_decided;
  }
};

template <typename scalar_t>
Plain plain_lanczos(const at::Tensor& W, const at::Tensor& start, int64_t num_iters, double tol,
                    double rtol, bool want_bottom, const char* op, bool factor_paid) {
  const int64_t d = W.size(0);
  SymmetricProduct product(W, matvec_choice(), triangle_pays(W));
  const typename Lanczos<scalar_t>::Operator apply = [&product](const at::Tensor& v,
                                                                at::Tensor& w) { product(w, v); };
  const typename Lanczos<scalar_t>::PairOperator apply2 =
      [&product](const at::Tensor& va, const at::Tensor& vb, at::Tensor& wa, at::Tensor& wb) {
        product(wa, wb, va, vb);
      };
  Lanczos<scalar_t> lz(d, num_iters, apply, W.options(), "condnum::lanczos_step");
  Lanczos<scalar_t> ck(d, num_iters, apply, W.options(), "condnum::lanczos_step");
  lz.start(start);
  ck.start(pseudo_random_unit(d, W.options(), kCheckStream));
  const double eps = eps_of(W.scalar_type());
  const double si_cost = shift_invert_cost(d, W.scalar_type(), factor_paid);

  bool top_done = false, bottom_converged = false;
  Acceptance top_ok, bottom_ok;
  Ritz top, bottom;
  top.s.reserve(lz.max_steps());
  bottom.s.reserve(lz.max_steps());
  int64_t top_step = 0, bottom_index = 0;
  std::vector<double> log_rel(lz.max_steps() + 1, 0.0);  // log(bound / theta_0) by step
  // After a step of the first run: whether it has ended.
  auto first_ended = [&]() -> bool {
    const int64_t m = lz.size();
    const bool last = !lz.can_step();
    if (m < kFirstCheck && !last) return false;
    if (!top_done) {
      lz.ritz(m - 1, top);
      top_done = lz.invariant() || top_ok(top.bound <= tol * std::abs(top.value), m);
      if (!top_done) return last;
      top_step = m;
      if (!want_bottom) return true;
    }
    // The bottom end, from the same Krylov space: the smallest Ritz value above the
    // threshold (those below it approximate the null space of a rank-deficient S). Plain
    // Lanczos cannot deliver it when S is too ill-conditioned for S's dtype (rounding in
    // S v moves Ritz values by ~eps ||S||, even when the Krylov space is invariant): then
    // shift-and-invert takes over.
    const double lam_top = top.value;
    const int64_t ib = rtol > 0 ? lz.count_below(rtol * lam_top) : 0;
    if (ib >= m) return true;
    lz.ritz(ib, bottom);
    const bool same_target = ib == bottom_index;
    bottom_index = ib;
    if (bottom.value <= rtol * lam_top ||
        policy::too_ill_conditioned_for_plain(lam_top, bottom.value, eps, tol))
      return true;
    if (lz.invariant() || bottom_ok(bottom.bound <= tol * bottom.value && same_target, m)) {
      bottom_converged = true;
      return true;
    }
    if (last) return true;
    // It also gives up, ski-rental style, once the steps spent on the bottom alone reach a
    // fraction of the shift-and-invert cost, or earlier when the rate at which its error
    // bound fell over the last kRateWindow steps predicts that it will not converge in time
    // (dense bottoms: the bound stalls while new Ritz values keep arriving from above).
    const int64_t extra = m - top_step;
    log_rel[m] = policy::log_relative_bound(bottom.bound, bottom.value);
    const int64_t back = extra >= kRateWindow ? kRateWindow : 0;
    return policy::ski_rental_gives_up(extra, si_cost, log_rel[m], log_rel[m - back], back, tol,
                                       m, lz.max_steps());
  };

  Plain out;
  Check check;
  check.r.s.reserve(ck.max_steps());
  check.b.s.reserve(ck.max_steps());
  bool need_check = false;
  // The first run's result once it has ended; whether the check is needed.
  auto on_first_end = [&]() -> bool {
    // The final top pair is at least as close to lam_max (interlacing) but may have a larger
    // residual than the one accepted earlier (a new Ritz value from a cluster): keep the
    // pair with the smaller bound, unless the top Ritz value has since risen past the
    // accepted one's bound: then that one had settled on a lower eigenvalue (a start
    // vector nearly orthogonal to the top eigenvector) and the final pair replaces it.
    if (Ritz last = lz.ritz(lz.size() - 1);
        !top_done || last.bound <= top.bound || last.value - top.value > top.bound)
      top = last;
    out.steps = lz.size();
    out.lam_max = top.value;
    out.u_max = lz.ritz_vector(top, W.scalar_type());
    out.err_max = relative(top.bound, top.value);
    // Ritz values bound the spectrum from inside, so a clearly negative one proves S
    // indefinite.
    const double lowest = lz.value(0);
    TORCH_CHECK_VALUE(!policy::proves_indefinite(lowest, top.value, eps), "condnum.", op,
                      ": S must be positive semi-definite, but it has an eigenvalue ", lowest,
                      " < 0 (lam_max = ", top.value, ")");
    if (want_bottom) {
      bottom = lz.ritz(std::min(bottom_index, lz.size() - 1));
      out.lowest = lowest;
      out.lam_bottom = bottom.value;
      out.err_bottom = relative(bottom.bound, bottom.value);
      out.bottom_converged = bottom_converged;
      out.u_bottom = lz.ritz_vector(bottom, W.scalar_type());
    }
    // The whole space spanned (m = d) leaves nothing to miss; an unconverged top is reported
    // by err already.
    need_check = top_done && lz.size() < d && top.value > 0;
    check.check_bottom = need_check && want_bottom && out.bottom_converged;
    check.bottom_decided = !check.check_bottom;
    check.below = out.lam_bottom - out.err_bottom * out.lam_bottom;
    check.bottom_budget = out.steps + kRateWindow;
    return need_check;
  };
  run_with_check(lz, ck, apply2, "condnum::lanczos_pair_step", first_ended, on_first_end,
                 [&](bool first_done) {
                   return check.decided(ck, first_done, want_bottom, tol, rtol);
                 });
  if (!need_check) return out;

  // The check's verdict.
  Ritz& r = check.r;
  if (!check.top_decided) ck.ritz(ck.size() - 1, r);
  if (policy::check_refutes_top(top.value, top.bound, r.value)) {
    out.lam_max = r.value;
    out.u_max = ck.ritz_vector(r, W.scalar_type());
    out.err_max = relative(r.bound, r.value);
    out.bottom_converged = false;  // its threshold moved: shift-and-invert decides
  }
  if (check.check_bottom && check.bottom_refuted) {
    out.bottom_converged = false;
    if (check.b.m > 0) {
      out.u_bottom = ck.ritz_vector(check.b, W.scalar_type());
      out.lam_bottom = std::min(out.lam_bottom, check.b.value);
    }
  }
  return out;
}

// factor_paid: the bottom's alternative costs only shift-and-invert steps (ski rental).
Plain plain(const at::Tensor& W, const at::Tensor& start, int64_t num_iters, double tol,
            double rtol, bool want_bottom, const char* op, bool factor_paid = false) {
  return W.scalar_type() == at::kFloat
             ? plain_lanczos<float>(W, start, num_iters, tol, rtol, want_bottom, op, factor_paid)
             : plain_lanczos<double>(W, start, num_iters, tol, rtol, want_bottom, op, factor_paid);
}

// ---------------------------------------------------------------- step 2: shift-and-invert

struct Bottom {
  double lam;
  at::Tensor u;  // float64
  double err;    // relative error bound
  bool converged;
  bool crowded;  // many Ritz values just below the threshold: the target is interior
  int64_t steps;
  bool interior = false;       // some Ritz values map below the threshold
  bool floor_limited = false;  // rounding (rounding_floor) alone exceeds tol
};

// The rounding floor under the residual bound (policy::rounding_floor). It matters when
// eigenvalues below the threshold (a null space) map far above the wanted one.
double rounding_floor(const Lanczos<double>& lz) {
  return policy::rounding_floor(0.0, lz.max_abs_value());
}

// W + shift I in float64 (one copy).
at::Tensor shifted64(const at::Tensor& W, double shift) {
  auto A = W.to(at::kDouble, /*non_blocking=*/false, /*copy=*/true);
  A.diagonal().add_(shift);
  return A;
}

// The restart check of a shift-and-invert run (the restart check above explains it): a
// second run from an independent pseudo-random start alongside the first
// (run_with_check), accepted by the first run's rule. wanted(ck): the index of its wanted
// Ritz value (< 0: none yet); accepted(ck, c): whether that pair meets tol.
template <typename Wanted, typename Accepted>
struct InvertCheck {
  Wanted wanted;
  Accepted accepted;
  Acceptance ok;
  Ritz c;
  bool found = false, decided = false;

  bool operator()(Lanczos<double>& ck) {
    if (decided) return true;
    const int64_t m = ck.size();
    if (m < kFirstCheck && ck.can_step()) return false;
    const int64_t i = wanted(ck);
    if (i < 0) return false;
    ck.ritz(i, c);
    found = true;
    decided = ck.invariant() || ok(accepted(ck, c), m);
    return decided;
  }

  // Whether c is above r, the first run's accepted pair, by more than both bounds (the
  // wanted value may be interior, so neither is a one-sided bound): the first had settled
  // on a neighbour, and c is the more extreme.
  bool refutes(const Ritz& r, const Lanczos<double>& lz, const Lanczos<double>& ck) const {
    return found && c.value - r.value > std::max(r.bound, rounding_floor(lz)) +
                                            std::max(c.bound, rounding_floor(ck));
  }
};

template <typename Wanted, typename Accepted>
InvertCheck<Wanted, Accepted> invert_check(Wanted wanted, Accepted accepted) {
  return {wanted, accepted, {}, {}};
}

// The operator of a shift-and-invert run and its check: w = A v, and both vectors at once.
struct Invert {
  Lanczos<double>::Operator apply;
  Lanczos<double>::PairOperator apply2;
};

// A = the inverse that `solve` applies: it overwrites the rows of a contiguous (nrhs, d)
// float64 x with their solutions. The pair stacks its two vectors as the rows of one such
// x (one pass over the factor for both).
// The vectors are contiguous float64 (d,): they are copied by memcpy, not by ATen calls,
// whose per-call work is a few percent of a step at d = 768.
template <typename Solve>
Invert invert_with(Solve solve, int64_t d) {
  auto both = at::empty({2, d}, at::TensorOptions().dtype(at::kDouble));
  const size_t bytes = d * sizeof(double);
  return {[solve, bytes](const at::Tensor& v, at::Tensor& w) {
            std::memcpy(w.mutable_data_ptr<double>(), v.const_data_ptr<double>(), bytes);
            solve(w.unsqueeze(0));
          },
          [solve, both, bytes, d](const at::Tensor& va, const at::Tensor& vb, at::Tensor& wa,
                                  at::Tensor& wb) {
            double* x = both.mutable_data_ptr<double>();
            std::memcpy(x, va.const_data_ptr<double>(), bytes);
            std::memcpy(x + d, vb.const_data_ptr<double>(), bytes);
            solve(both);
            std::memcpy(wa.mutable_data_ptr<double>(), x, bytes);
            std::memcpy(wb.mutable_data_ptr<double>(), x + d, bytes);
          }};
}

// out with the restart check's pair: lam, its unit vector and error bound.
void take_pair(Bottom& out, at::Tensor u, double lam, double err, double tol) {
  out.lam = lam;
  out.u = std::move(u);
  out.err = err;
  out.converged = err <= tol;
}

// The Cholesky factor of float64 A in place: its upper triangle becomes U with A = U^T U
// (row-major A is the column-major A^T = A, whose lower factor L lands there as U = L^T;
// the other triangle is left as it was, never read, which saves torch's copy and tril
// pass). Undefined when A is not numerically positive definite.
at::Tensor cholesky_upper(at::Tensor A) {
#if AT_BUILD_WITH_LAPACK()
  const int d = static_cast<int>(A.size(0));
  int info = 0;
  at::native::lapackCholesky<double>('L', d, A.mutable_data_ptr<double>(), d, &info);
  return info == 0 ? A : at::Tensor();
#else
  auto [factor, info] = at::linalg_cholesky_ex(A);
  return info.item<int64_t>() == 0 ? factor.mT().contiguous() : at::Tensor();
#endif
}

// (U, tau): the Cholesky factor of S + tau I. A Gram matrix built in S's dtype may be
// indefinite by rounding (the indefiniteness test of plain Lanczos): tau grows per failed
// factorisation up to that level before S is declared indefinite.
std::pair<at::Tensor, double> shifted_cholesky(const at::Tensor& W, double lam_max, double tau,
                                               const char* op) {
  const double max_tau = policy::max_cholesky_shift(tau, lam_max, eps_of(W.scalar_type()));
  for (;; tau *= policy::kTauGrowth) {
    if (auto U = cholesky_upper(shifted64(W, tau)); U.defined()) return {U, tau};
    TORCH_CHECK_VALUE(tau < max_tau, "condnum.", op, ": S must be positive semi-definite, but ",
                      "the Cholesky factorisation of S + tau*I failed for tau up to ", tau,
                      " (lam_max = ", lam_max, ")");
  }
}

// Lanczos on (S + tau I)^{-1} = (U^T U)^{-1}: the wanted Ritz value is the largest one whose
// lam = 1/theta - tau is above the threshold. A negative tau = -threshold (the factor of
// S - threshold I, which exists only when every eigenvalue is above it) wants the top.
Bottom invert_bottom(const at::Tensor& U, double tau, double threshold, double tol,
                     int64_t num_iters, const at::Tensor& start) {
  const int64_t d = U.size(0);
  const bool all_above = threshold + tau <= 0;
  const double mu_threshold = all_above ? kInf : 1.0 / (threshold + tau);
  const bool detect_crowding = !all_above && tau <= 8 * threshold;
  const Matvec kernel = matvec_choice();
  const Invert inv = invert_with(
      [&U, kernel](const at::Tensor& x) { cholesky_solve_rows(U, x, kernel); }, d);
  Lanczos<double> lz(d, num_iters, inv.apply, start.options(), "condnum::shift_invert_step");
  Lanczos<double> ck(d, num_iters, inv.apply, start.options(), "condnum::shift_invert_step");
  lz.start(start);
  ck.start(pseudo_random_unit(d, start.options(), kCheckStream));
  auto wanted_in = [&](const Lanczos<double>& z) -> int64_t {
    return all_above ? z.size() - 1 : z.count_below(mu_threshold) - 1;
  };
  auto wanted = [&]() -> int64_t { return wanted_in(lz); };
  // |d lam| = |d theta| / theta^2
  auto error_in = [&](const Lanczos<double>& z, const Ritz& r) {
    const double bound = std::max(r.bound, rounding_floor(z));
    return policy::shift_invert_error(bound, r.value, 1.0 / r.value - tau);
  };
  auto error = [&](const Ritz& r) { return error_in(lz, r); };
  auto accurate = [&](const Ritz& r) { return error(r) <= tol; };
  Ritz r;
  r.s.reserve(lz.max_steps());
  bool converged = false, crowded = false;
  Acceptance ok;
  int64_t last_above = -1;  // Ritz values above the wanted one at the previous step
  auto first_ended = [&]() -> bool {
    const int64_t m = lz.size();
    if (m < kFirstCheck && lz.can_step()) return false;
    const int64_t i = wanted();
    if (i < 0) return !lz.can_step();
    lz.ritz(i, r);
    const bool same = m - 1 - i == last_above;
    last_above = m - 1 - i;
    // An invariant space ends the run, converged only if rounding allows (rounding_floor).
    if ((lz.invariant() && accurate(r)) || ok(accurate(r) && same, m)) {
      converged = true;
      return true;
    }
    if (lz.invariant()) return true;
    // Ritz values above mu_threshold are eigenvalues below the threshold; when several
    // map close below it, the wanted one is deep inside the Krylov spectrum: give up
    // early for the LDL^T route. (Not for a wide shift, tau >> threshold, which maps a
    // null space just above mu_threshold by design.)
    if (detect_crowding && m >= 16 && m - 1 - i >= 4 &&
        lz.value(i + 1) < 4.0 * mu_threshold / 3.0) {
      crowded = true;
      return true;
    }
    return !lz.can_step();
  };
  auto check = invert_check(
      wanted_in, [&](const Lanczos<double>& z, const Ritz& p) { return error_in(z, p) <= tol; });
  check.c.s.reserve(ck.max_steps());
  run_with_check(
      lz, ck, inv.apply2, "condnum::shift_invert_pair_step", first_ended,
      [&]() { return converged && lz.size() < d; }, [&](bool) { return check(ck); });
  const int64_t i = wanted();
  Bottom out{std::numeric_limits<double>::quiet_NaN(), {}, kInf, false, crowded, lz.size()};
  if (i < 0) return out;
  r = lz.ritz(i);
  if (converged && lz.size() < d && check.refutes(r, lz, ck)) {
    take_pair(out, ck.ritz_vector(check.c, at::kDouble), 1.0 / check.c.value - tau,
              error_in(ck, check.c), tol);
    return out;
  }
  out.interior = i < lz.size() - 1;
  out.lam = 1.0 / r.value - tau;
  out.u = lz.ritz_vector(r, at::kDouble);
  out.err = error(r);
  out.converged = converged || accurate(r);
  out.floor_limited = policy::shift_invert_error(rounding_floor(lz), r.value, out.lam) > tol;
  return out;
}

Bottom cholesky_bottom(const at::Tensor& W, double lam_max, double rtol, double tol,
                       int64_t num_iters, const at::Tensor& start, double tau) {
  const auto [U, shift] = shifted_cholesky(W, lam_max, tau, "extreme_eigh");
  return invert_bottom(U, shift, rtol * lam_max, tol, num_iters, start);
}

// Lanczos on (S - sigma I)^{-1}, sigma = threshold, through an LDL^T (Bunch-Kaufman)
// factor: eigenvalues above sigma map to the positive part, the wanted one to its top.
Bottom ldl_bottom(const at::Tensor& W, double lam_max, double rtol, double tol, int64_t num_iters,
                  const at::Tensor& start) {
  const int64_t d = W.size(0);
  const double sigma = rtol * lam_max;
  Bottom out{std::numeric_limits<double>::quiet_NaN(), {}, kInf, false, false, 0};
#if AT_BUILD_WITH_LAPACK()
  // Bunch-Kaufman in place (row-major A is the column-major A^T = A), no copies or tril pass.
  auto A = shifted64(W, -sigma);
  double* a = A.mutable_data_ptr<double>();
  const int n = static_cast<int>(d);
  std::vector<int> ipiv(d);
  int info = 0;
  double query = 0;
  at::native::lapackLdlSymmetric<double>('L', n, a, n, ipiv.data(), &query, -1, &info);
  std::vector<double> work(std::max<int64_t>(1, static_cast<int64_t>(query)));
  at::native::lapackLdlSymmetric<double>('L', n, a, n, ipiv.data(), work.data(),
                                         static_cast<int>(work.size()), &info);
  if (info != 0) return out;  // an eigenvalue equals sigma: keep Cholesky's answer
  const Invert inv = invert_with(
      [a, n, &ipiv](const at::Tensor& x) {
        int solve_info = 0;
        at::native::lapackLdlSolveSymmetric<double>('L', n, static_cast<int>(x.size(0)), a, n,
                                                    ipiv.data(), x.mutable_data_ptr<double>(), n,
                                                    &solve_info);
      },
      d);
#else
  auto [LD, pivots, info_t] = at::linalg_ldl_factor_ex(shifted64(W, -sigma), /*hermitian=*/true);
  if (info_t.item<int64_t>() != 0) return out;  // an eigenvalue equals sigma
  const Invert inv = invert_with(
      [&LD, &pivots](const at::Tensor& x) {
        x.copy_(at::linalg_ldl_solve(LD, pivots, x.t(), /*hermitian=*/true).t());
      },
      d);
#endif
  Lanczos<double> lz(d, num_iters, inv.apply, start.options(), "condnum::shift_invert_step");
  Lanczos<double> ck(d, num_iters, inv.apply, start.options(), "condnum::shift_invert_step");
  lz.start(start);
  ck.start(pseudo_random_unit(d, start.options(), kCheckStream));
  auto error_in = [&](const Lanczos<double>& z, const Ritz& r) {
    const double bound = std::max(r.bound, rounding_floor(z));
    return policy::shift_invert_error(bound, r.value, sigma + 1.0 / r.value);
  };
  auto error = [&](const Ritz& r) { return error_in(lz, r); };
  auto accurate = [&](const Ritz& r) { return error(r) <= tol; };
  Ritz r;
  r.s.reserve(lz.max_steps());
  bool converged = false;
  Acceptance ok;
  auto first_ended = [&]() -> bool {
    const int64_t m = lz.size();
    if (m < kFirstCheck && lz.can_step()) return false;
    lz.ritz(m - 1, r);
    if (r.value > 0 && accurate(r) && (lz.invariant() || ok(true, m))) {
      converged = true;
      return true;
    }
    return !lz.can_step();
  };
  auto top_of = [](const Lanczos<double>& z) -> int64_t { return z.size() - 1; };
  auto check = invert_check(top_of, [&](const Lanczos<double>& z, const Ritz& p) {
    return p.value > 0 && error_in(z, p) <= tol;
  });
  check.c.s.reserve(ck.max_steps());
  run_with_check(
      lz, ck, inv.apply2, "condnum::shift_invert_pair_step", first_ended,
      [&]() { return converged && lz.size() < d; }, [&](bool) { return check(ck); });
  r = lz.ritz(lz.size() - 1);
  out.steps = lz.size();
  if (r.value <= 0) return out;
  if (converged && lz.size() < d && check.refutes(r, lz, ck)) {
    take_pair(out, ck.ritz_vector(check.c, at::kDouble), sigma + 1.0 / check.c.value,
              error_in(ck, check.c), tol);
    return out;
  }
  out.lam = sigma + 1.0 / r.value;
  out.u = lz.ritz_vector(r, at::kDouble);
  out.err = error(r);
  out.converged = converged || accurate(r);
  return out;
}

// The bottom of the numerical range by shift-and-invert. theta0: plain Lanczos' bottom Ritz
// value (an upper bound on the smallest eigenvalue); theta_range: its smallest Ritz value
// above the threshold (an estimate of the wanted eigenvalue).
Bottom shift_invert_bottom(const at::Tensor& W, double lam_max, double rtol, double tol,
                           int64_t num_iters, const at::Tensor& start, double theta0,
                           double theta_range) {
  const auto start64 = start.to(at::kDouble);
  const int64_t d = W.size(0);
  const double threshold = rtol * lam_max;
  // Shifting to the threshold itself (LDL^T: S - threshold I may be indefinite) pays when
  // the spectrum reaches down near the threshold: the wanted eigenvalue is then the top of
  // the positive part with a large relative gap, and eigenvalues crowding just below the
  // threshold (float32 S with kappa >> 1/rtol) cannot hide it. When the threshold is at
  // rounding level or far below theta0, Cholesky of S + tau I is cheaper and as good.
  const bool near_threshold =
      threshold > 8.0 * d * std::numeric_limits<double>::epsilon() * lam_max &&
      theta0 < 16.0 * threshold && theta0 > threshold / 64.0;
  Bottom out{std::numeric_limits<double>::quiet_NaN(), {}, kInf, false, false, 0};
  bool tried_ldl = false;
  if (near_threshold) {
    out = ldl_bottom(W, lam_max, rtol, tol, num_iters, start64);
    tried_ldl = true;
  }
  if (!out.converged) {
    const double tau = policy::cholesky_shift(rtol, d, lam_max);
    auto chol = cholesky_bottom(W, lam_max, rtol, tol, num_iters, start64, tau);
    // A null space maps to ~1/tau, far above the wanted 1/(lam + tau), and rounding at that
    // scale can swamp it: shift by ~lam / 4 instead (lam from the best solve so far, else
    // plain Lanczos' estimate), which maps the null space within a factor 5 of the wanted
    // value (one more factorisation; policy::kWideShift).
    bool wide_tried = false;
    auto try_wide = [&]() {
      const double guess = chol.lam > policy::kWideMargin * tau ? chol.lam : theta_range;
      if (!(guess > policy::kWideMargin * tau)) return;
      wide_tried = true;
      auto wide = cholesky_bottom(W, lam_max, rtol, tol, num_iters,
                                  chol.u.defined() ? chol.u : start64, policy::kWideShift * guess);
      if (!std::isnan(wide.lam) && (std::isnan(chol.lam) || wide.converged || wide.err < chol.err))
        chol = wide;
    };
    if (chol.floor_limited || std::isnan(chol.lam)) try_wide();
    if (!tried_ldl && (chol.crowded || (!chol.converged && chol.interior && rtol > 0))) {
      auto alt = ldl_bottom(W, lam_max, rtol, tol, num_iters, chol.u.defined() ? chol.u : start64);
      if (!std::isnan(alt.lam) && (alt.converged || !chol.converged)) chol = alt;
    }
    // The LDL^T run is rounding-limited in the same way when S has a null space: its
    // eigenvalues map to about -1/threshold there. Then the wide shift, from its estimate.
    if (!chol.converged && !wide_tried) try_wide();
    if (std::isnan(out.lam) || chol.converged || chol.err < out.err) out = chol;
  }
  TORCH_CHECK_VALUE(!std::isnan(out.lam), "condnum.extreme_eigh: found no eigenvalue above ",
                    "rtol * lam_max (rtol = ", rtol, ") in ", out.steps,
                    " shift-and-invert Lanczos steps: S is numerically zero, rtol is too large, ",
                    "or num_iters = ", num_iters, " is too small");
  return out;
}

// ---------------------------------------------------------------- ops

// (W, scale) with S = scale * W: W is the symmetrised S, divided by a power of two when S's
// magnitude would make the solvers' squared norms overflow or underflow (exact).
std::pair<at::Tensor, double> in_range(const Symmetrized& s) {
  const double scale = range_scale(s.max_abs, s.W.scalar_type());
  return {scale == 1.0 ? s.W : s.W / scale, scale};
}

at::Tensor err_tensor(double err, const at::Tensor& S) {
  const double bound = policy::with_output_rounding(err, eps_of(S.scalar_type()));
  return at::scalar_tensor(bound, S.options().dtype(at::kDouble));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> top_eigh_cpu(const at::Tensor& S, int64_t num_iters,
                                                            double tol,
                                                            const std::optional<at::Tensor>& v0) {
  check_square(S, "top_eigh", "S");
  check_budget(num_iters, tol, "top_eigh");
  const auto a = unit_or_none(v0, S, "top_eigh", "v0");
  const auto [W, scale] = in_range(symmetrized(S, "top_eigh", "S", S.scalar_type()));
  const auto random = pseudo_random_unit(W.size(0), W.options());
  const auto p = plain(W, start_vector(a, {}, random), num_iters, tol, 0.0, false, "top_eigh");
  return {at::scalar_tensor(p.lam_max * scale, S.options()), with_sign_convention(p.u_max),
          err_tensor(p.err_max, S)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> extreme_eigh_cpu(
    const at::Tensor& S, int64_t num_iters, double rtol, double tol,
    const std::optional<at::Tensor>& v0_min, const std::optional<at::Tensor>& v0_max) {
  check_square(S, "extreme_eigh", "S");
  check_budget(num_iters, tol, "extreme_eigh");
  check_rtol(rtol, "extreme_eigh");
  const auto a = unit_or_none(v0_max, S, "extreme_eigh", "v0_max");
  const auto b = unit_or_none(v0_min, S, "extreme_eigh", "v0_min");
  const auto [W, scale] = in_range(symmetrized(S, "extreme_eigh", "S", S.scalar_type()));
  const auto random = pseudo_random_unit(W.size(0), W.options());

  // 1. Both ends from one Krylov space of S.
  const auto p = plain(W, start_vector(a, b, random), num_iters, tol, rtol, true, "extreme_eigh");
  const double lam_max = p.lam_max;  // of W = S / scale
  auto u_max = with_sign_convention(p.u_max);
  const auto opts = S.options();
  if (lam_max <= 0) {  // S == 0: every unit vector is an eigenvector of eigenvalue 0
    auto zero = at::zeros({}, opts);
    return {zero, zero.clone(), u_max.clone(), u_max, err_tensor(0.0, S)};
  }

  // 2. The bottom end, by shift-and-invert unless plain Lanczos already has it.
  double lam_min, err_min;
  at::Tensor u_min;
  if (p.bottom_converged) {
    lam_min = p.lam_bottom;
    u_min = p.u_bottom;
    err_min = p.err_bottom;
  } else {
    // From the warm start, or else from plain Lanczos' bottom Ritz vector (mostly low
    // eigenvectors: a few steps fewer than a random start), as from a warm start.
    const auto start = start_vector(b.defined() ? b : p.u_bottom, {}, random);
    auto r = shift_invert_bottom(W, lam_max, rtol, tol, num_iters, start, p.lowest,
                                 p.lam_bottom);
    lam_min = r.lam;
    u_min = r.u.to(S.scalar_type());
    err_min = r.err;
  }
  return {at::scalar_tensor(lam_min * scale, opts), at::scalar_tensor(lam_max * scale, opts),
          with_sign_convention(u_min), u_max, err_tensor(std::max(err_min, p.err_max), S)};
}

// floored_min(S): the bottom of the spectrum as R_ill's floor sees it, with one float64
// factorisation where extreme_eigh plus a separate floor test take two.
//   saturated = lam_1(S) <= sigma, sigma = rtol * lam_max (the floor), decided by a float64
//   Cholesky of S - sigma I: it succeeds exactly when every eigenvalue is above sigma, up to
//   float64 rounding (Sylvester's law of inertia);
//   lam_min = sigma when saturated; else lam_1, from plain Lanczos when it converges there
//   (looking down to sigma / 2, so that an eigenvalue the factorisation puts just above the
//   floor by rounding is the one found), else by shift-and-invert Lanczos through that same
//   factor (every eigenvalue of (S - sigma I)^{-1} is positive, lam_1 maps to the top);
//   lam_max, u_max, err as extreme_eigh's (err: lam_max's bound alone when saturated);
//   u_min: lam_1's eigenvector; when saturated, plain Lanczos' bottom Ritz vector above
//   sigma / 2 (a warm start only).
// Plain Lanczos gives up on the bottom sooner than extreme_eigh's (its ski rental weighs the
// shift-and-invert steps alone, the factor being paid for the floor). A saturated S is still
// checked for indefiniteness as extreme_eigh does (a factorisation of S + tau I: one more, at
// the floor only).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> floored_min_cpu(
    const at::Tensor& S, int64_t num_iters, double rtol, double tol,
    const std::optional<at::Tensor>& v0_min, const std::optional<at::Tensor>& v0_max) {
  constexpr const char* op = "floored_min";
  check_square(S, op, "S");
  check_budget(num_iters, tol, op);
  check_rtol(rtol, op);
  const auto a = unit_or_none(v0_max, S, op, "v0_max");
  const auto b = unit_or_none(v0_min, S, op, "v0_min");
  const auto [W, scale] = in_range(symmetrized(S, op, "S", S.scalar_type()));
  const auto random = pseudo_random_unit(W.size(0), W.options());
  const auto p = plain(W, start_vector(a, b, random), num_iters, tol, rtol / 2, true, op, true);
  const double lam_max = p.lam_max;  // of W = S / scale
  const double sigma = rtol * lam_max;
  const auto opts = S.options();
  at::Tensor u_min = p.u_bottom;
  double lam_min = sigma, err = p.err_max;
  const at::Tensor U = lam_max > 0 ? cholesky_upper(shifted64(W, -sigma)) : at::Tensor();
  const bool saturated = !U.defined();
  if (saturated && lam_max > 0) {
    shifted_cholesky(W, lam_max, policy::cholesky_shift(rtol, W.size(0), lam_max), op);
  } else if (!saturated && p.bottom_converged) {
    lam_min = p.lam_bottom;
    err = std::max(err, p.err_bottom);
  } else if (!saturated) {
    const auto start = start_vector(b.defined() ? b : p.u_bottom, {}, random).to(at::kDouble);
    const auto r = invert_bottom(U, -sigma, sigma, tol, num_iters, start);
    lam_min = r.lam;
    u_min = r.u.to(S.scalar_type());
    err = std::max(err, r.err);
  }
  return {at::scalar_tensor(lam_min * scale, opts), at::scalar_tensor(lam_max * scale, opts),
          with_sign_convention(u_min), with_sign_convention(p.u_max), err_tensor(err, S),
          at::scalar_tensor(saturated, opts.dtype(at::kBool))};
}

}  // namespace

TORCH_LIBRARY_IMPL(condnum, CPU, m) {
  m.impl("floored_min", &floored_min_cpu);
  m.impl("extreme_eigh", &extreme_eigh_cpu);
  m.impl("top_eigh", &top_eigh_cpu);
}

}  // namespace condnum
