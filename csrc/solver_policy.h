// The solver policy: every constant and decision that the CPU kernels (csrc/cpu), the CUDA
// kernels (csrc/cuda) and the portable path share. condnum/_policy.py mirrors the values
// for the portable path (the same names without the k prefix, in upper case), and
// python_tests/test_backends.py reads this file to check that they agree. Plain C++, host
// and device (as tridiagonal_lu.h).
//
// "eps" below is the machine epsilon of the arithmetic named at each use: of S's dtype
// for properties of the input (symmetry, indefiniteness by rounding, R_ill's floor), and
// of the arithmetic of the Lanczos basis for rounding in the solver (float32 S: float32
// on the CPU, float64 on CUDA, where the basis is float64 for both dtypes).
#pragma once
#include <cmath>
#include <cstdint>

#if !defined(CONDNUM_HD)
#if defined(__CUDACC__)
#define CONDNUM_HD __host__ __device__
#else
#define CONDNUM_HD
#endif
#endif

namespace condnum::policy {

using std::fabs;
using std::fmax;
using std::frexp;
using std::isfinite;
using std::ldexp;
using std::log;
using std::sqrt;

constexpr double kEps32 = 1.1920928955078125e-07;  // 2^-23
constexpr double kEps64 = 2.220446049250313e-16;   // 2^-52

// ---------------------------------------------------------------- acceptance and stopping

// Steps before the first convergence check (a Ritz value of a 2x2 T is rarely converged).
constexpr int64_t kFirstCheck = 3;

// A Ritz value is accepted only when its error bound meets tol at two consecutive checks,
// a cheap guard against accepting a value that is about to move (a start vector nearly
// orthogonal to the wanted eigenvector makes Lanczos settle on a neighbour first). `check`
// numbers the convergence checks (the step count on the CPU, which checks every step).
struct Acceptance {
  int64_t last_ok = -2;
  CONDNUM_HD bool operator()(bool ok, int64_t check) {
    const bool accept = ok && last_ok == check - 1;
    if (ok) last_ok = check;
    return accept;
  }
};

// |error| / |value|, 0 for an exact zero (S = 0), inf for an unbounded error.
CONDNUM_HD inline double relative(double bound, double value) {
  if (bound == 0) return 0.0;
  return value != 0 ? bound / fabs(value) : static_cast<double>(INFINITY);
}

// Rounding in the products S v (eps of their arithmetic) moves every Ritz value of plain
// Lanczos by up to about eps ||S||, however small the residual estimate beta_m |s_{m-1}|
// falls: a floor under a Ritz pair's error bound, kRoundingSlack eps max |theta|. (Measured
// against an extended-precision reference, d <= 768: at most 1.3 eps lam_max.)
constexpr double kRoundingSlack = 4.0;
CONDNUM_HD inline double product_floor(double max_abs_theta, double eps) {
  return kRoundingSlack * eps * max_abs_theta;
}
// So plain Lanczos is trusted for lam_min only while that floor stays below tol lam_min.
CONDNUM_HD inline bool too_ill_conditioned_for_plain(double lam_max, double bottom, double eps,
                                                     double tol) {
  return product_floor(lam_max, eps) > tol * bottom;
}
// An eigenvalue returned in S's dtype is rounded to it: a nonzero relative error bound is at
// least eps_s / 2 (0 stays 0: S = 0 is exact).
CONDNUM_HD inline double with_output_rounding(double err, double eps_s) {
  return err > 0 ? fmax(err, 0.5 * eps_s) : err;
}

// Plain Lanczos may spend this fraction of the shift-and-invert cost on the bottom end
// after lam_max has converged ...
constexpr double kSkiRental = 0.6;
// ... judging its progress by the error bound's decay over (at least) this many steps:
constexpr int64_t kRateWindow = 6;
// a bound that stalls or grows still predicts a finite number of steps at this rate of
// decay (in log units per step), ...
constexpr double kMinRate = 1e-3;
// ... and it gives up when it predicts more than this many times the remaining allowance.
constexpr double kRateMargin = 2.0;
// log(bound / value) of a bound of exactly 0 (an invariant space).
constexpr double kLogBoundFloor = 1e-300;

// The restart check's start vector: pseudo-random stream 1 (stream 0 starts every solve), so
// the check is independent of the first run and results stay deterministic.
constexpr uint64_t kCheckStream = 1;

// The check's verdict on the top end: its top Ritz value rises above the first run's
// accepted lam_max by more than that value's error bound (Ritz values lie below lam_max, so
// the first had settled on a lower eigenvalue): the check's pair replaces it.
CONDNUM_HD inline bool check_refutes_top(double first, double first_bound, double check) {
  return check - first > first_bound;
}

// The CUDA kernels run the check as a second complete solve and compare the answers. Its
// bottom replaces the first's when lower by more than both bounds (the bottom of the numerical
// range may be interior, so neither bound is one-sided), or when the top was refuted and the
// first's bottom is not above the check's threshold rtol * lam_max. A NaN (invalid or
// indefinite S, no bottom found) never refutes, nor is it refuted.
CONDNUM_HD inline bool check_refutes_bottom(double first, double first_bound, double check,
                                            double check_bound, bool top_refuted,
                                            double check_threshold) {
  return first - check > first_bound + check_bound ||
         (top_refuted && first <= check_threshold && check == check);
}

// Warm starts: the solve starts from the sum of the normalised warm starts plus this weight
// times a unit pseudo-random vector (stream 0), so that no eigenvector is missed when a warm
// start is orthogonal to it; a cold solve starts from the random vector alone.
constexpr double kStartRandomWeight = 0.1;

CONDNUM_HD inline double log_relative_bound(double bound, double value) {
  return log((bound < kLogBoundFloor ? kLogBoundFloor : bound) / value);
}

// The ski-rental stop for the bottom end: true when plain Lanczos should hand it to
// shift-and-invert. extra: steps since lam_max converged; si_cost: the shift-and-invert
// cost in plain steps; log_rel / log_rel_back: log_relative_bound now and `back` steps
// earlier (back = 0: no rate measured yet); max_steps: the step budget.
CONDNUM_HD inline bool ski_rental_gives_up(int64_t extra, double si_cost, double log_rel,
                                           double log_rel_back, int64_t back, double tol,
                                           int64_t m, int64_t max_steps) {
  const double allowance = kSkiRental * si_cost - extra;
  if (allowance <= 0) return true;
  if (back <= 0) return false;
  const double rate = (log_rel_back - log_rel) / back;
  const double needed = (log_rel - log(tol)) / (rate < kMinRate ? kMinRate : rate);
  return needed > kRateMargin * allowance || m + needed > max_steps;
}

// ---------------------------------------------------------------- the Lanczos process

// A breakdown (V spans an invariant subspace up to rounding: the Ritz residuals
// beta_m |s_{m-1}| are below this level, and still count in the error bounds):
// beta <= kBreakdown sqrt(d) eps ||T|| (eps of the basis arithmetic).
constexpr double kBreakdown = 10.0;
CONDNUM_HD inline bool breakdown(double beta, int64_t d, double eps, double scale) {
  return beta <= kBreakdown * sqrt(static_cast<double>(d)) * eps * scale;
}

// Second Gram-Schmidt pass when ||w||^2 fell below this fraction of ||A v||^2 (DGKS,
// "twice is enough"; a looser criterion loses orthogonality).
constexpr double kSecondPass = 0.5;

// Ritz vectors of T by inverse iteration: each solve makes the eigenvector dominate by
// another factor gap / |theta error|, and bisection gives theta to machine precision.
constexpr int kInverseIterations = 2;
// Its start: a fixed pseudo-random vector in [0.5, 1.5) (never orthogonal to the
// eigenvector in practice).
CONDNUM_HD inline void inverse_iteration_start(int64_t m, double* s) {
  uint64_t state = 0x2545F4914F6CDD1DULL;
  for (int64_t i = 0; i < m; ++i) {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    s[i] = 0.5 + static_cast<double>(state >> 11) * (1.0 / 9007199254740992.0);
  }
}

// ---------------------------------------------------------------- input and scaling

// S is accepted as symmetric when max|S - S^T| <= this * max|S| (about sqrt(eps(S))).
CONDNUM_HD constexpr double symmetry_rtol(bool single) { return single ? 3.5e-4 : 1.5e-8; }

// A Gram matrix built in S's dtype may be indefinite by rounding, down to about
// -sqrt(eps(S)) lam_max: a Ritz value below that proves S indefinite.
CONDNUM_HD inline bool proves_indefinite(double lowest, double lam_max, double eps_s) {
  return !(lowest >= -sqrt(eps_s) * fabs(lam_max));
}

// 2^e with x = f 2^e, f in [0.5, 1): dividing by it is exact and brings x to [0.5, 1).
CONDNUM_HD inline double power_of_two_above(double x, int* exponent) {
  frexp(x, exponent);
  return ldexp(1.0, *exponent);
}

// S is rescaled by a power of two when max|S| = f 2^e, f in [0.5, 1), has |e| above this:
// float32 Lanczos squares entries of S v in float32; float64 keeps wide margins for the
// float64 shift-and-invert (whose operator norm is ~1 / (d eps lam_max)).
CONDNUM_HD constexpr int range_exponent_limit(bool single) { return single ? 40 : 256; }

// The power of two p that S is divided by (exact), 1 when max|S| is in range.
CONDNUM_HD inline double range_scale(double max_abs, bool single) {
  const int limit = range_exponent_limit(single);
  if (max_abs == 0 || !isfinite(max_abs)) return 1.0;
  int e = 0;
  const double p = power_of_two_above(max_abs, &e);
  return e > limit || e < -limit ? p : 1.0;
}

// ||S||_F^2 summed in float64 is redone with S scaled by power_of_two_above(max|S|) when
// it overflowed or its squares underflowed (the sum fell below this).
constexpr double kNormRescaleBelow = 0x1p-900;
CONDNUM_HD inline bool norm_needs_rescaling(double sum) {
  return !isfinite(sum) || sum < kNormRescaleBelow;
}

// ---------------------------------------------------------------- shift-and-invert

// Cholesky shift tau0 = max(rtol, kTauDEps d eps64) lam_max: eigenvalues below the
// threshold rtol lam_max map to (1 / (2 tau), 1 / tau], and the shift stays above the
// rounding of a float64 factorisation.
constexpr double kTauDEps = 8.0;
CONDNUM_HD inline double cholesky_shift(double rtol, int64_t d, double lam_max) {
  const double floor = kTauDEps * d * kEps64;
  return (rtol < floor ? floor : rtol) * lam_max;
}

// tau grows by this factor per failed factorisation (rounding can make S + tau I
// indefinite), up to max_cholesky_shift; beyond it S is declared indefinite.
constexpr double kTauGrowth = 10.0;
CONDNUM_HD inline double max_cholesky_shift(double tau0, double lam_max, double eps_s) {
  const double top = sqrt(eps_s) * lam_max;
  return tau0 < top ? top : tau0;
}

// Float64 rounding in the Krylov basis perturbs every Ritz value of an operator by about
// eps64 times its largest Ritz magnitude, even once the space is invariant: an absolute
// floor under the residual bound, kFloorSlack eps64 max(|theta_0|, |theta_{m-1}|).
constexpr double kFloorSlack = 16.0;
CONDNUM_HD inline double rounding_floor(double theta_lo, double theta_hi) {
  return kFloorSlack * kEps64 * fmax(fabs(theta_lo), fabs(theta_hi));
}

// Relative error of lam from the bound on theta = 1 / (lam - shift): |d lam| = |d theta| / theta^2.
CONDNUM_HD inline double shift_invert_error(double bound, double theta, double lam) {
  return bound / (theta * theta) / lam;
}

// A null space maps to ~1 / tau, far above the wanted 1 / (lam + tau), and rounding at that
// scale can swamp it: the solve is redone with the wide shift kWideShift * lam (lam from
// the first solve, else plain Lanczos' estimate), which maps the null space within a factor
// 1 / kWideShift + 1 of the wanted value, when lam > kWideMargin * tau.
constexpr double kWideShift = 0.25;
constexpr double kWideMargin = 4.0;

// ---------------------------------------------------------------- regularizers

// R_ill = 1 / D with D floored at kIllFloor units of rounding of ||S||_F^2 / (2k): D at
// rounding level or below (kappa = 1, or k above the number of eigenvalues) gives a
// large finite R_ill. half_mean_sq = ||S||_F^2 / (2k); eps of S's dtype.
constexpr double kIllFloor = 64.0;
CONDNUM_HD inline double ill_denominator(double half_mean_sq, double lam_min, double eps_s) {
  const double floor = kIllFloor * eps_s * half_mean_sq;
  const double D = half_mean_sq - 0.5 * lam_min * lam_min;
  return D < floor ? floor : D;
}

// The backward passes write out = a (b u u^T + c S), evaluated in float64 per entry and
// rounded once to S's dtype, so a large a (R_ill^2 for a tiny S) times a small S stays
// representable.
struct RankOnePlusScaled {
  double a, b, c;
};
// One entry, given bu_i = b u_i (hoisted out of the row).
CONDNUM_HD inline double rank_one_plus_scaled(const RankOnePlusScaled& coef, double bu_i,
                                              double u_j, double s_ij) {
  return coef.a * (bu_i * u_j + coef.c * s_ij);
}
// dR_well/dS = g (lam_max u u^T - S / k).
CONDNUM_HD inline RankOnePlusScaled well_backward(double g, double lam_max, int64_t k) {
  return {g, lam_max, -1.0 / k};
}
// dR_ill/dS = g R (R lam_min u u^T - (R / k) S): R^2 alone may overflow where the gradient
// does not. A zero g gives zeros even where R = +inf (S = 0): the caller tests zero_grad.
CONDNUM_HD inline RankOnePlusScaled ill_backward(double g, double r, double lam_min, int64_t k) {
  return {g * r, r * lam_min, -r / k};
}

}  // namespace condnum::policy
