#include "cpu/lanczos.h"

#include "solver_policy.h"
#include "tridiagonal_lu.h"

#include <ATen/record_function.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace condnum {
namespace {

// sum_i x_i^2 in float64 (four partial sums: O(d), beside the O(m d) BLAS work of a step).
template <typename T>
double sum_squares(const T* x, int64_t n) {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += static_cast<double>(x[i]) * x[i];
    s1 += static_cast<double>(x[i + 1]) * x[i + 1];
    s2 += static_cast<double>(x[i + 2]) * x[i + 2];
    s3 += static_cast<double>(x[i + 3]) * x[i + 3];
  }
  for (; i < n; ++i) s0 += static_cast<double>(x[i]) * x[i];
  return (s0 + s1) + (s2 + s3);
}

}  // namespace

// ---------------------------------------------------------------- tridiagonal routines

namespace {

constexpr double kEps = std::numeric_limits<double>::epsilon();
using policy::kSecondPass;

// Smallest pivot magnitude in the Sturm recurrence (LAPACK's pivmin).
double pivmin(const Tridiagonal& T) {
  double b2 = 1.0;
  for (int64_t i = 0; i + 1 < T.m; ++i) b2 = std::max(b2, T.beta[i] * T.beta[i]);
  return std::numeric_limits<double>::min() * b2;
}

int64_t sturm_count_impl(const Tridiagonal& T, double x, double pmin) {
  const double* a = T.alpha;
  const double* b = T.beta;
  double q = a[0] - x;
  if (std::abs(q) <= pmin) q = -pmin;
  int64_t count = q < 0;
  for (int64_t i = 1; i < T.m; ++i) {
    q = (a[i] - x) - b[i - 1] * b[i - 1] / q;
    if (std::abs(q) <= pmin) q = -pmin;
    count += q < 0;
  }
  return count;
}

// Gershgorin interval of T.
std::pair<double, double> gershgorin(const Tridiagonal& T) {
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (int64_t i = 0; i < T.m; ++i) {
    const double r =
        (i > 0 ? std::abs(T.beta[i - 1]) : 0.0) + (i + 1 < T.m ? std::abs(T.beta[i]) : 0.0);
    lo = std::min(lo, T.alpha[i] - r);
    hi = std::max(hi, T.alpha[i] + r);
  }
  const double pad = 2 * kEps * std::max(std::abs(lo), std::abs(hi)) + 1e-300;
  return {lo - pad, hi + pad};
}

// Bisection for the k-th smallest eigenvalue in [lo, hi] (which must bracket it) until the
// bracket is narrower than max(abs_tol, 2 eps |x|).
double bisect(const Tridiagonal& T, int64_t k, double lo, double hi, double abs_tol, double pmin) {
  for (int it = 0; it < 200; ++it) {
    const double mid = 0.5 * (lo + hi);
    if (hi - lo <= std::max(abs_tol, 2 * kEps * std::max(std::abs(lo), std::abs(hi))) ||
        mid <= lo || mid >= hi)
      break;
    if (sturm_count_impl(T, mid, pmin) > k)
      hi = mid;
    else
      lo = mid;
  }
  return 0.5 * (lo + hi);
}

// From a good bracket (the previous check's value) Newton needs 3-6 passes; from a wide one
// it may crawl (a step is at least 1/m of the distance), so it stops after this many.
constexpr int kNewtonPasses = 12;

// The largest (bottom = false) or smallest eigenvalue of T, given a bracket [lo, hi] that
// holds it, by Newton's method on p(x) = det(x I - T) (on -T for the smallest) from the
// outer end of the bracket, then bisection on what is left. Beyond the top eigenvalue,
// x I - T is positive definite, its LDL^T pivots d_i are positive and
//   p'(x) / p(x) = sum_i 1 / (x - theta_i) = sum_i d_i' / d_i,
// from d_0 = x - alpha_0, d_i = x - alpha_i - beta_{i-1}^2 / d_{i-1} and their derivatives.
// For a polynomial with real roots, Newton from the right of the largest root never passes
// it and converges quadratically once that root is separated from the next: a handful of
// O(m) passes where bisection to machine precision takes 30-50 Sturm counts (each an O(m)
// chain of divisions, the cost of a convergence check). A pass whose pivots are all
// positive certifies its x as an upper end; the lower end is verified by a Sturm count, and
// bisection, as before, finishes inside the bracket (a few halvings), so the value is the
// one bisection alone would give, to its tolerance.
double newton_end(const Tridiagonal& T, bool bottom, double lo, double hi, double pmin) {
  const double sign = bottom ? -1.0 : 1.0;  // the top of sign * T
  const int64_t m = T.m, k = bottom ? 0 : m - 1;
  double upper = bottom ? -lo : hi, lower = bottom ? -hi : lo;  // around the top of sign * T
  double x = upper;
  for (int it = 0; it < kNewtonPasses; ++it) {
    double d = x - sign * T.alpha[0], dp = 1.0, sum = 0.0;
    bool definite = d > pmin;
    for (int64_t i = 0; definite; ++i) {
      const double r = 1.0 / d;
      sum += dp * r;
      if (i + 1 == m) break;
      const double b2 = T.beta[i] * T.beta[i];
      d = x - sign * T.alpha[i + 1] - b2 * r;
      dp = 1.0 + b2 * r * r * dp;
      definite = d > pmin;
    }
    if (!definite) break;  // x reached the eigenvalue by rounding: keep the last upper end
    upper = x;
    const double step = 1.0 / sum;  // at most x - theta_top, at least (x - theta_top) / m
    x -= step;
    if (step <= 2 * kEps * std::abs(x) || x <= lower) break;
  }
  // The lower end: an eigenvalue of sign * T lies at or above x minus a few roundings when
  // Newton converged; the Sturm count (on T) confirms it, else the given end stays.
  const double candidate = x - 4 * kEps * std::abs(x) - pmin;
  if (candidate > lower) {
    const double t = sign * candidate;  // the same point on T's axis
    const int64_t below = sturm_count_impl(T, t, pmin);
    if (bottom ? below >= 1 : below <= k) lower = candidate;
  }
  return bottom ? bisect(T, k, -upper, -lower, 0.0, pmin) : bisect(T, k, lower, upper, 0.0, pmin);
}

}  // namespace

int64_t sturm_count(const Tridiagonal& T, double x) { return sturm_count_impl(T, x, pivmin(T)); }

// Ritz values move monotonically outwards as the basis grows (Cauchy interlacing: the
// k-th from the bottom falls, the k-th from the top rises), and by little once converged,
// so the value found at the previous check brackets the new one tightly. The bracket is
// verified by two Sturm counts before use.
double ritz_value(const Tridiagonal& T, int64_t i, const RitzHint* hint) {
  TORCH_INTERNAL_ASSERT(i >= 0 && i < T.m);
  if (T.m == 1) return T.alpha[0];
  const bool bottom = i == 0;
  const double pmin = pivmin(T);
  auto [lo, hi] = gershgorin(T);
  if (hint != nullptr) {
    const double slack = 4 * kEps * (std::abs(lo) + std::abs(hi)) + pmin;
    const double w = std::max(4 * hint->bound, 1e-6 * std::abs(hint->value)) + slack;
    const double a = bottom ? hint->value - w : hint->value - slack;
    const double b = bottom ? hint->value + slack : hint->value + w;
    if (a < b && sturm_count_impl(T, a, pmin) <= i && sturm_count_impl(T, b, pmin) > i) {
      // Newton from the outer end of a bracket this narrow converges in a few passes (from
      // Gershgorin's it would crawl).
      if (bottom || i == T.m - 1) return newton_end(T, bottom, a, b, pmin);
      lo = a;
      hi = b;
    }
  }
  return bisect(T, i, lo, hi, 0.0, pmin);
}

void tridiagonal_eigenvector(const Tridiagonal& T, double theta, double* s,
                             std::vector<double>& work) {
  const int64_t m = T.m;
  if (m == 1) {
    s[0] = 1.0;
    return;
  }
  // LU with partial pivoting of T - theta I (LAPACK dgttrf layout): dl (multipliers),
  // dd (diagonal of U), du, du2 (its two superdiagonals), piv (row swapped with the next).
  work.resize(5 * m);
  double* dl = work.data();
  double* dd = dl + m;
  double* du = dd + m;
  double* du2 = du + m;
  double* piv = du2 + m;
  double tnorm = 0;
  for (int64_t i = 0; i < m; ++i) {
    dd[i] = T.alpha[i] - theta;
    tnorm = std::max(tnorm, std::abs(T.alpha[i]) + (i + 1 < m ? std::abs(T.beta[i]) : 0.0) +
                                (i > 0 ? std::abs(T.beta[i - 1]) : 0.0));
    if (i + 1 < m) dl[i] = du[i] = T.beta[i];
  }
  tridiagonal_lu(m, dd, dl, du, du2, piv,
                 std::max(kEps * tnorm, std::numeric_limits<double>::min()));
  policy::inverse_iteration_start(m, s);
  for (int it = 0; it < policy::kInverseIterations; ++it) {
    tridiagonal_lu_solve(m, dd, dl, du, du2, piv, s);
    double nrm = 0, big = 0;
    for (int64_t i = 0; i < m; ++i) big = std::max(big, std::abs(s[i]));
    for (int64_t i = 0; i < m; ++i) {
      s[i] /= big;
      nrm += s[i] * s[i];
    }
    nrm = std::sqrt(nrm);
    for (int64_t i = 0; i < m; ++i) s[i] /= nrm;
  }
}

// ---------------------------------------------------------------- Lanczos

template <typename scalar_t>
Lanczos<scalar_t>::Lanczos(int64_t d, int64_t max_steps, Operator apply,
                           const at::TensorOptions& opts, const char* step_name)
    : apply_(std::move(apply)),
      step_name_(step_name),
      d_(d),
      steps_(std::max<int64_t>(1, std::min(max_steps, d))),
      eps_(std::numeric_limits<scalar_t>::epsilon()),
      kernel_(matvec_choice()) {
  const auto o = opts.dtype(c10::CppTypeToScalarType<scalar_t>::value);
  V_ = at::empty({steps_ + 1, d}, o);
  w_ = at::empty({d}, o);
  h_ = at::empty({steps_ + 1}, o);
  alpha_.reserve(steps_);
  beta_.reserve(steps_);
  work_.reserve(5 * steps_);  // tridiagonal_eigenvector's workspace: no allocation per step
}

template <typename scalar_t>
void Lanczos<scalar_t>::start(const at::Tensor& v0) {
  auto v = V_[0];
  v.copy_(v0);
  scalar_t* p = v.mutable_data_ptr<scalar_t>();
  const double n = std::sqrt(sum_squares(p, d_));
  TORCH_INTERNAL_ASSERT(n > 0 && std::isfinite(n), "Lanczos: start vector has norm ", n);
  for (int64_t i = 0; i < d_; ++i) p[i] = static_cast<scalar_t>(p[i] / n);
  m_ = 0;
  alpha_.clear();
  beta_.clear();
  bottom_ = top_ = End{};
  scale_ = 0;
  invariant_ = false;
}

template <typename scalar_t>
bool Lanczos<scalar_t>::step() {
  if (!can_step()) return false;
  RECORD_USER_SCOPE(step_name_);
  apply_(operand(), w_);
  finish_step();
  return true;
}

template <typename scalar_t>
void Lanczos<scalar_t>::finish_step() {
  const int64_t j = m_, d = d_;
  // The three-term recurrence first, w -= beta_{j-1} v_{j-1} + alpha v_j (O(d)), which
  // removes the large components of w along the basis; then classical Gram-Schmidt against
  // v_0 .. v_j for what rounding left, repeated once when that pass cancelled more than
  // half of ||w||^2 (Daniel-Gragg-Kaufman-Stewart: "twice is enough"; a looser criterion
  // loses orthogonality). After the recurrence the full pass removes only rounding-level
  // components, so the second one is rarely needed: one pass (h = V_j w, then
  // w -= V_j^T h on the basis rows, gram_schmidt_pass) where subtracting nothing first took
  // two.
  scalar_t* pw = w_.mutable_data_ptr<scalar_t>();
  const scalar_t* V = V_.const_data_ptr<scalar_t>();
  const scalar_t* pv = V + j * d;
  if (j > 0) {
    const scalar_t* prev = V + (j - 1) * d;
    const auto b = static_cast<scalar_t>(beta_[j - 1]);
    for (int64_t i = 0; i < d; ++i) pw[i] -= b * prev[i];
  }
  double alpha = 0;
  for (int64_t i = 0; i < d; ++i) alpha += static_cast<double>(pv[i]) * pw[i];
  const auto a = static_cast<scalar_t>(alpha);
  for (int64_t i = 0; i < d; ++i) pw[i] -= a * pv[i];
  const scalar_t* ph = h_.const_data_ptr<scalar_t>();
  double before = sum_squares(pw, d), after = before;
  for (int pass = 0; pass < 2; ++pass) {
    gram_schmidt_pass(V_, j + 1, w_, h_, kernel_);
    alpha += ph[j];
    after = sum_squares(pw, d);
    if (after > kSecondPass * before) break;
    before = after;
  }
  const double b = std::sqrt(after);
  alpha_.push_back(alpha);
  beta_.push_back(b);
  scale_ = std::max({scale_, std::abs(alpha), b});
  m_ = j + 1;
  // A breakdown means V spans an invariant subspace up to rounding.
  invariant_ = policy::breakdown(b, d, eps_, scale_) || m_ == d;
  if (!invariant_) {
    scalar_t* next = V_.mutable_data_ptr<scalar_t>() + (j + 1) * d;
    const scalar_t inv = static_cast<scalar_t>(1.0 / b);
    for (int64_t i = 0; i < d; ++i) next[i] = pw[i] * inv;
  }
}

template <typename scalar_t>
bool step_pair(Lanczos<scalar_t>& a, bool a_on, Lanczos<scalar_t>& b, bool b_on,
               const typename Lanczos<scalar_t>::PairOperator& apply, const char* pair_name) {
  a_on = a_on && a.can_step();
  b_on = b_on && b.can_step();
  if (!(a_on && b_on)) return (a_on && a.step()) || (b_on && b.step());
  RECORD_USER_SCOPE(pair_name);
  apply(a.operand(), b.operand(), a.product(), b.product());
  a.finish_step();
  b.finish_step();
  return true;
}

template <typename scalar_t>
double Lanczos<scalar_t>::value(int64_t i) const {
  // An end as the last check found it at this size (ritz keeps them).
  if (m_ > 1 && i == m_ - 1 && top_.m == m_ && top_.from_top == 0) return top_.value;
  if (m_ > 1 && i == 0 && bottom_.m == m_) return bottom_.value;
  return ritz_value(tridiagonal(), i, nullptr);
}

// max |theta_i| is |theta_{m-1}| unless a Ritz value lies below -|theta_{m-1}|, which one
// Sturm count tells; only then is the smallest one bisected for.
template <typename scalar_t>
double Lanczos<scalar_t>::max_abs_value() const {
  const double top = std::abs(value(m_ - 1));
  if (m_ == 1 || count_below(-top) == 0) return top;
  return std::max(top, std::abs(value(0)));
}

template <typename scalar_t>
int64_t Lanczos<scalar_t>::count_below(double x) const {
  return sturm_count(tridiagonal(), x);
}

template <typename scalar_t>
Ritz Lanczos<scalar_t>::ritz(int64_t i) {
  Ritz r;
  ritz(i, r);
  return r;
}

template <typename scalar_t>
void Lanczos<scalar_t>::ritz(int64_t i, Ritz& r) {
  TORCH_INTERNAL_ASSERT(i >= 0 && i < m_);
  const auto T = tridiagonal();
  r.index = i;
  r.m = m_;
  r.s.resize(m_);  // within the capacity reserved by the caller's earlier checks
  // The last check is kept for the bottom Ritz value and for one at a fixed offset from the
  // top (the largest, or shift-and-invert's wanted one).
  const bool bottom = i == 0 && m_ > 1;
  const int64_t from_top = m_ - 1 - i;
  End& e = bottom ? bottom_ : top_;
  const bool hinted = e.m > 0 && e.m < m_ && (bottom || e.from_top == from_top);
  const RitzHint hint{e.value, e.bound};
  r.value = ritz_value(T, i, hinted ? &hint : nullptr);
  tridiagonal_eigenvector(T, r.value, r.s.data(), work_);
  // Some eigenvalue of A lies within the residual r of theta (in exact arithmetic). The
  // sharper r^2 / gap is not used: while theta mixes the eigenvectors of an unresolved
  // cluster, the Ritz gap overstates the true gap and r^2 / gap accepts a value that lies
  // between two eigenvalues (errors ~1e-3 where 1e-4 was asked, seen in tests).
  // An invariant space is declared at a beta_m below the breakdown level, not at 0: it
  // still counts.
  r.residual = beta_[m_ - 1] * std::abs(r.s[m_ - 1]);
  if (m_ > 1 && (e.m != m_ || bottom || e.from_top == from_top)) {
    e.value = r.value;
    e.bound = r.residual;
    e.m = m_;
    e.from_top = from_top;
  }
  r.bound = std::max(r.residual, policy::product_floor(max_abs_value(), eps_));
}

template <typename scalar_t>
at::Tensor Lanczos<scalar_t>::ritz_vector(const Ritz& r, at::ScalarType dtype) const {
  TORCH_INTERNAL_ASSERT(r.m >= 1 && r.m <= m_ && static_cast<int64_t>(r.s.size()) == r.m);
  auto y = at::zeros({d_}, V_.options().dtype(at::kDouble));
  double* py = y.mutable_data_ptr<double>();
  const scalar_t* V = V_.const_data_ptr<scalar_t>();
  for (int64_t k = 0; k < r.m; ++k) {
    const double sk = r.s[k];
    const scalar_t* v = V + k * d_;
    for (int64_t i = 0; i < d_; ++i) py[i] += sk * v[i];
  }
  double n = 0;
  for (int64_t i = 0; i < d_; ++i) n += py[i] * py[i];
  y.div_(std::sqrt(n));
  return y.to(dtype);
}

template class Lanczos<float>;
template class Lanczos<double>;
template bool step_pair(Lanczos<float>&, bool, Lanczos<float>&, bool,
                        const Lanczos<float>::PairOperator&, const char*);
template bool step_pair(Lanczos<double>&, bool, Lanczos<double>&, bool,
                        const Lanczos<double>::PairOperator&, const char*);

at::Tensor pseudo_random_unit(int64_t d, const at::TensorOptions& options, uint64_t stream) {
  auto v = at::empty({d}, options.dtype(at::kDouble));
  double* p = v.mutable_data_ptr<double>();
  double n = 0;
  for (int64_t i = 0; i < d; ++i) {
    uint64_t z = static_cast<uint64_t>(i) + 0x9E3779B97F4A7C15ULL * (stream + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    p[i] = static_cast<double>(z >> 11) * (2.0 / 9007199254740992.0) - 1.0;  // [-1, 1)
    n += p[i] * p[i];
  }
  v.div_(std::sqrt(n));
  return v.to(options.dtype());
}

}  // namespace condnum
