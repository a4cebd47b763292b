#include "cpu/lanczos.h"

#include "tridiagonal_lu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>

// Function multi-versioning: the hot loops below are compiled for AVX-512, AVX2 and
// baseline x86-64 and picked at load time, since the extension is built without -march.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define CONDNUM_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CONDNUM_CLONES
#endif
#if defined(__GNUC__) || defined(__clang__)
#define CONDNUM_INLINE inline __attribute__((always_inline))
#define CONDNUM_RESTRICT __restrict__
#else
#define CONDNUM_INLINE inline
#define CONDNUM_RESTRICT
#endif

namespace condnum {
namespace {

// One 64-byte SIMD vector of T (GCC/Clang vector extension): a zmm register with
// AVX-512, two ymm with AVX2, four xmm otherwise. Loads and stores are unaligned.
#if defined(__GNUC__) || defined(__clang__)
template <typename T>
struct Simd {
  typedef T type __attribute__((vector_size(64), aligned(sizeof(T)), may_alias));
  static constexpr int lanes = 64 / sizeof(T);
};
template <typename T>
using vec_t = typename Simd<T>::type;
template <typename T>
CONDNUM_INLINE vec_t<T> load(const T* p) {
  return *reinterpret_cast<const vec_t<T>*>(p);
}
template <typename T>
CONDNUM_INLINE void store(T* p, vec_t<T> v) {
  *reinterpret_cast<vec_t<T>*>(p) = v;
}
template <typename T>
CONDNUM_INLINE double hsum(vec_t<T> v) {
  double s = 0;
  for (int k = 0; k < Simd<T>::lanes; ++k) s += v[k];
  return s;
}
#define CONDNUM_SIMD 1
#else
#define CONDNUM_SIMD 0
#endif

// y[i] = A_i . x for rows [r0, r1), four rows per sweep over x (accumulation in T, as BLAS
// does; the lanes are summed in float64).
template <typename T>
CONDNUM_INLINE void rows_dot(const T* CONDNUM_RESTRICT A, int64_t lda, int64_t r0, int64_t r1,
                             int64_t n, const T* CONDNUM_RESTRICT x, T* CONDNUM_RESTRICT y) {
#if CONDNUM_SIMD
  constexpr int L = Simd<T>::lanes;
  using V = vec_t<T>;
  const int64_t nv = n - n % L;
  int64_t i = r0;
  for (; i + 4 <= r1; i += 4) {
    const T* a0 = A + i * lda;
    const T* a1 = a0 + lda;
    const T* a2 = a1 + lda;
    const T* a3 = a2 + lda;
    V c0 = {}, c1 = {}, c2 = {}, c3 = {};
    for (int64_t j = 0; j < nv; j += L) {
      const V xv = load(x + j);
      c0 += load(a0 + j) * xv;
      c1 += load(a1 + j) * xv;
      c2 += load(a2 + j) * xv;
      c3 += load(a3 + j) * xv;
    }
    double s0 = hsum<T>(c0), s1 = hsum<T>(c1), s2 = hsum<T>(c2), s3 = hsum<T>(c3);
    for (int64_t j = nv; j < n; ++j) {
      s0 += a0[j] * x[j];
      s1 += a1[j] * x[j];
      s2 += a2[j] * x[j];
      s3 += a3[j] * x[j];
    }
    y[i] = static_cast<T>(s0);
    y[i + 1] = static_cast<T>(s1);
    y[i + 2] = static_cast<T>(s2);
    y[i + 3] = static_cast<T>(s3);
  }
  for (; i < r1; ++i) {
    const T* a = A + i * lda;
    V c0 = {}, c1 = {};
    int64_t j = 0;
    for (; j + 2 * L <= n; j += 2 * L) {
      c0 += load(a + j) * load(x + j);
      c1 += load(a + j + L) * load(x + j + L);
    }
    if (j + L <= n) {
      c0 += load(a + j) * load(x + j);
      j += L;
    }
    double s = hsum<T>(c0 + c1);
    for (; j < n; ++j) s += a[j] * x[j];
    y[i] = static_cast<T>(s);
  }
#else
  for (int64_t i = r0; i < r1; ++i) {
    const T* a = A + i * lda;
    double s = 0;
    for (int64_t j = 0; j < n; ++j) s += a[j] * x[j];
    y[i] = static_cast<T>(s);
  }
#endif
}

template <typename T>
CONDNUM_INLINE double dot_impl(const T* CONDNUM_RESTRICT a, const T* CONDNUM_RESTRICT b,
                               int64_t n) {
  T out;
  rows_dot<T>(a, 0, 0, 1, n, b, &out);
  return out;
}

// y -= sum_k h[k] A_k, four rows per sweep over y.
template <typename T>
CONDNUM_INLINE void sub_rows(const T* CONDNUM_RESTRICT A, int64_t lda, int64_t rows, int64_t n,
                             const T* CONDNUM_RESTRICT h, T* CONDNUM_RESTRICT y) {
  int64_t k = 0;
  for (; k + 4 <= rows; k += 4) {
    const T* a0 = A + k * lda;
    const T* a1 = a0 + lda;
    const T* a2 = a1 + lda;
    const T* a3 = a2 + lda;
    const T h0 = h[k], h1 = h[k + 1], h2 = h[k + 2], h3 = h[k + 3];
    int64_t j = 0;
#if CONDNUM_SIMD
    constexpr int L = Simd<T>::lanes;
    for (; j + L <= n; j += L)
      store(y + j, load(y + j) - (h0 * load(a0 + j) + h1 * load(a1 + j) + h2 * load(a2 + j) +
                                  h3 * load(a3 + j)));
#endif
    for (; j < n; ++j) y[j] -= h0 * a0[j] + h1 * a1[j] + h2 * a2[j] + h3 * a3[j];
  }
  for (; k < rows; ++k) {
    const T* a = A + k * lda;
    const T hk = h[k];
    int64_t j = 0;
#if CONDNUM_SIMD
    constexpr int L = Simd<T>::lanes;
    for (; j + L <= n; j += L) store(y + j, load(y + j) - hk * load(a + j));
#endif
    for (; j < n; ++j) y[j] -= hk * a[j];
  }
}

CONDNUM_CLONES void rows_dot_f(const float* A, int64_t lda, int64_t r0, int64_t r1, int64_t n,
                               const float* x, float* y) {
  rows_dot<float>(A, lda, r0, r1, n, x, y);
}
CONDNUM_CLONES void rows_dot_d(const double* A, int64_t lda, int64_t r0, int64_t r1, int64_t n,
                               const double* x, double* y) {
  rows_dot<double>(A, lda, r0, r1, n, x, y);
}
CONDNUM_CLONES void sub_rows_f(const float* A, int64_t lda, int64_t rows, int64_t n, const float* h,
                               float* y) {
  sub_rows<float>(A, lda, rows, n, h, y);
}
CONDNUM_CLONES void sub_rows_d(const double* A, int64_t lda, int64_t rows, int64_t n,
                               const double* h, double* y) {
  sub_rows<double>(A, lda, rows, n, h, y);
}

// (U^T U) x = b, U upper triangular row-major: U^T y = b by row axpys, then U x = y by row
// dots. Both sweeps read U row by row (contiguous).
CONDNUM_CLONES void cholesky_solve_upper_impl(const double* CONDNUM_RESTRICT U, int64_t d,
                                              double* CONDNUM_RESTRICT b) {
  for (int64_t j = 0; j < d; ++j) {
    const double* u = U + j * d;
    const double yj = b[j] / u[j];
    b[j] = yj;
    sub_rows<double>(u + j + 1, 0, 1, d - j - 1, &yj, b + j + 1);
  }
  for (int64_t i = d - 1; i >= 0; --i) {
    const double* u = U + i * d;
    b[i] = (b[i] - dot_impl<double>(u + i + 1, b + i + 1, d - i - 1)) / u[i];
  }
}

// Rows per task below which a matrix-vector product stays on one thread.
constexpr int64_t kParallelElements = int64_t{1} << 17;

template <typename T, typename F>
void gemv_rows_impl(const T* A, int64_t lda, int64_t rows, int64_t n, const T* x, T* y,
                    bool parallel, F kernel) {
  if (!parallel || rows * n < kParallelElements || at::get_num_threads() == 1) {
    kernel(A, lda, 0, rows, n, x, y);
    return;
  }
  at::parallel_for(0, rows, 16,
                   [&](int64_t begin, int64_t end) { kernel(A, lda, begin, end, n, x, y); });
}

}  // namespace

void gemv_rows(const float* A, int64_t lda, int64_t rows, int64_t n, const float* x, float* y,
               bool parallel) {
  gemv_rows_impl(A, lda, rows, n, x, y, parallel, rows_dot_f);
}
void gemv_rows(const double* A, int64_t lda, int64_t rows, int64_t n, const double* x, double* y,
               bool parallel) {
  gemv_rows_impl(A, lda, rows, n, x, y, parallel, rows_dot_d);
}
void sub_gemv_t(const float* A, int64_t lda, int64_t rows, int64_t n, const float* h, float* y) {
  sub_rows_f(A, lda, rows, n, h, y);
}
void sub_gemv_t(const double* A, int64_t lda, int64_t rows, int64_t n, const double* h, double* y) {
  sub_rows_d(A, lda, rows, n, h, y);
}
void cholesky_solve_upper(const double* U, int64_t d, double* b) {
  cholesky_solve_upper_impl(U, d, b);
}

// ---------------------------------------------------------------- tridiagonal routines

namespace {

constexpr double kEps = std::numeric_limits<double>::epsilon();
// Second Gram-Schmidt pass when ||w||^2 fell below this fraction of ||A v||^2.
constexpr double kSecondPass = 0.5;

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

}  // namespace

int64_t sturm_count(const Tridiagonal& T, double x) { return sturm_count_impl(T, x, pivmin(T)); }

double tridiagonal_eigenvalue(const Tridiagonal& T, int64_t k) {
  TORCH_INTERNAL_ASSERT(k >= 0 && k < T.m);
  if (T.m == 1) return T.alpha[0];
  const auto [lo, hi] = gershgorin(T);
  return bisect(T, k, lo, hi, 0.0, pivmin(T));
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
  // Start: a fixed pseudo-random vector (never orthogonal to the eigenvector in practice);
  // two solves make the eigenvector dominate by (gap / |theta error|)^2.
  uint64_t state = 0x2545F4914F6CDD1DULL;
  for (int64_t i = 0; i < m; ++i) {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    s[i] = 0.5 + static_cast<double>(state >> 11) * (1.0 / 9007199254740992.0);
  }
  for (int it = 0; it < 2; ++it) {
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
                           const at::TensorOptions& opts)
    : apply_(std::move(apply)),
      d_(d),
      steps_(std::max<int64_t>(1, std::min(max_steps, d))),
      eps_(std::numeric_limits<scalar_t>::epsilon()) {
  V_ = at::empty({steps_ + 1, d}, opts.dtype(c10::CppTypeToScalarType<scalar_t>::value));
  w_.resize(d);
  h_.resize(steps_ + 1);
  alpha_.reserve(steps_);
  beta_.reserve(steps_);
  work_.reserve(5 * steps_);  // tridiagonal_eigenvector's workspace: no allocation per step
}

template <typename scalar_t>
void Lanczos<scalar_t>::start(const at::Tensor& v0) {
  auto v = V_[0];
  v.copy_(v0);
  scalar_t* p = v.mutable_data_ptr<scalar_t>();
  const double n = std::sqrt(dot_impl<scalar_t>(p, p, d_));
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
  const int64_t j = m_, d = d_;
  scalar_t* V = V_.mutable_data_ptr<scalar_t>();
  scalar_t* w = w_.data();
  scalar_t* h = h_.data();
  apply_(V + j * d, w);
  // Classical Gram-Schmidt against v_0 .. v_j (this also subtracts alpha_j v_j and
  // beta_{j-1} v_{j-1}), repeated once when it cancelled more than half of ||w||^2
  // (Daniel-Gragg-Kaufman-Stewart: "twice is enough"). A looser criterion loses
  // orthogonality: one classical pass is not stable on its own.
  double before = dot_impl<scalar_t>(w, w, d), alpha = 0, after = before;
  for (int pass = 0; pass < 2; ++pass) {
    gemv_rows(V, d, j + 1, d, w, h, /*parallel=*/false);
    sub_gemv_t(V, d, j + 1, d, h, w);
    alpha += h[j];
    after = dot_impl<scalar_t>(w, w, d);
    if (after > kSecondPass * before) break;
    before = after;
  }
  const double b = std::sqrt(after);
  alpha_.push_back(alpha);
  beta_.push_back(b);
  scale_ = std::max({scale_, std::abs(alpha), b});
  m_ = j + 1;
  // A breakdown means V spans an invariant subspace: its Ritz pairs are exact.
  invariant_ = b <= 10.0 * std::sqrt(static_cast<double>(d)) * eps_ * scale_ || m_ == d;
  if (!invariant_) {
    scalar_t* next = V + (j + 1) * d;
    const scalar_t inv = static_cast<scalar_t>(1.0 / b);
    for (int64_t i = 0; i < d; ++i) next[i] = w[i] * inv;
  }
  return true;
}

template <typename scalar_t>
double Lanczos<scalar_t>::value(int64_t i) const {
  return tridiagonal_eigenvalue(tridiagonal(), i);
}

template <typename scalar_t>
int64_t Lanczos<scalar_t>::count_below(double x) const {
  return sturm_count(tridiagonal(), x);
}

// Ritz values move monotonically outwards as the basis grows (Cauchy interlacing: the
// k-th from the bottom falls, the k-th from the top rises), and by little once converged,
// so the value found at the previous check brackets the new one tightly. The bracket is
// verified by two Sturm counts before use.
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
  if (m_ == 1) {
    r.value = alpha_[0];
    r.s[0] = 1.0;
  } else {
    const double pmin = pivmin(T);
    auto [lo, hi] = gershgorin(T);
    if (hinted) {
      const double slack = 4 * kEps * (std::abs(lo) + std::abs(hi)) + pmin;
      const double w = std::max(4 * e.bound, 1e-6 * std::abs(e.value)) + slack;
      const double a = bottom ? e.value - w : e.value - slack;
      const double b = bottom ? e.value + slack : e.value + w;
      if (a < b && sturm_count_impl(T, a, pmin) <= i && sturm_count_impl(T, b, pmin) > i) {
        lo = a;
        hi = b;
      }
    }
    r.value = bisect(T, i, lo, hi, 0.0, pmin);
    tridiagonal_eigenvector(T, r.value, r.s.data(), work_);
  }
  // Some eigenvalue of A lies within the residual r of theta (in exact arithmetic). The
  // sharper r^2 / gap is not used: while theta mixes the eigenvectors of an unresolved
  // cluster, the Ritz gap overstates the true gap and r^2 / gap accepts a value that lies
  // between two eigenvalues (errors ~1e-3 where 1e-4 was asked, seen in tests).
  r.residual = invariant_ ? 0.0 : beta_[m_ - 1] * std::abs(r.s[m_ - 1]);
  r.bound = r.residual;
  if (m_ > 1 && (e.m != m_ || bottom || e.from_top == from_top)) {
    e.value = r.value;
    e.bound = r.bound;
    e.m = m_;
    e.from_top = from_top;
  }
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
