#include "cpu/cholesky_solve.h"

#include <ATen/Config.h>
#include <ATen/Parallel.h>
#include <ATen/native/BatchLinearAlgebra.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu/avx2.h"
#include "cpu/checks.h"

namespace condnum {
namespace {

// The fallback where AVX2 + FMA are missing: one row at a time, one right-hand side.
void solve_portable(const double* U, int64_t d, double* x) {
  for (int64_t i = 0; i < d; ++i) {  // U^T y = b
    const double* u = U + i * d;
    const double yi = x[i] / u[i];
    x[i] = yi;
    for (int64_t j = i + 1; j < d; ++j) x[j] -= yi * u[j];
  }
  for (int64_t i = d - 1; i >= 0; --i) {  // U x = y
    const double* u = U + i * d;
    double s = x[i];
    for (int64_t j = i + 1; j < d; ++j) s -= u[j] * x[j];
    x[i] = s / u[i];
  }
}

#ifdef CONDNUM_X86_DISPATCH
#define CONDNUM_AVX2 __attribute__((target("avx2,fma")))

constexpr int64_t kRows = 4;    // rows of U per register block
constexpr int64_t kLanes = 4;   // doubles per register
constexpr int64_t kPanel = 64;  // rows of U per panel, a multiple of kRows
// Thread 0's look-ahead work per panel (the next panel's update and triangle), in columns of
// the forward update: with this weight the threads' shares took equally long (AMD EPYC Zen 3,
// d = 768 and 2048, 2 threads).
constexpr int64_t kLead = 3 * kPanel;
// Fewer rows than this per thread, and the barriers cost more than the split saves.
constexpr int64_t kMinRowsPerThread = 256;

// x[k][j] -= sum_r x[k][r] u_rj over the rows r in [r0, r1) in order, for the columns j in
// [c0, c1): one fused multiply-add per row and element, in the rows' order (so how the columns
// are split, and into which registers, changes no bit).
template <int K>
CONDNUM_AVX2 void subtract_rows(const double* U, int64_t d, double* const* x, int64_t r0,
                                int64_t r1, int64_t c0, int64_t c1) {
  for (int64_t i0 = r0; i0 < r1; i0 += kRows) {
    const int64_t end = std::min(i0 + kRows, r1);
    int64_t j = c0;
    if (end - i0 == kRows) {
      __m256d y[kRows][K];
      for (int r = 0; r < kRows; ++r)
        for (int k = 0; k < K; ++k) y[r][k] = _mm256_set1_pd(x[k][i0 + r]);
      for (; j + kLanes <= c1; j += kLanes) {
        __m256d b[K];
        for (int k = 0; k < K; ++k) b[k] = _mm256_loadu_pd(x[k] + j);
#pragma GCC unroll 4
        for (int r = 0; r < kRows; ++r) {
          const __m256d u = _mm256_loadu_pd(U + (i0 + r) * d + j);
          for (int k = 0; k < K; ++k) b[k] = _mm256_fnmadd_pd(u, y[r][k], b[k]);
        }
        for (int k = 0; k < K; ++k) _mm256_storeu_pd(x[k] + j, b[k]);
      }
    }
    for (; j < c1; ++j)
      for (int k = 0; k < K; ++k)
        for (int64_t r = i0; r < end; ++r) x[k][j] = std::fma(-U[r * d + j], x[k][r], x[k][j]);
  }
}

// dot[k][r] += sum_j u_rj x[k][j] over the columns j in [c0, c1), for the R rows from r0: the
// sum in one accumulator of 4 lanes per row and right-hand side from c0, its lanes added in a
// fixed order (Avx2::sum), then the scalar tail. A row's arithmetic is the same in any block.
template <int R, int K>
CONDNUM_AVX2 void add_row_dots(const double* U, int64_t d, double* const* x, int64_t r0,
                               int64_t c0, int64_t c1, double* const* dot) {
  __m256d acc[R][K];
  for (int r = 0; r < R; ++r)
    for (int k = 0; k < K; ++k) acc[r][k] = _mm256_setzero_pd();
  int64_t j = c0;
  for (; j + kLanes <= c1; j += kLanes) {
    __m256d xj[K];
    for (int k = 0; k < K; ++k) xj[k] = _mm256_loadu_pd(x[k] + j);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const __m256d u = _mm256_loadu_pd(U + (r0 + r) * d + j);
      for (int k = 0; k < K; ++k) acc[r][k] = _mm256_fmadd_pd(u, xj[k], acc[r][k]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int k = 0; k < K; ++k) {
      double s = Avx2<double>::sum(acc[r][k]);
      for (int64_t c = j; c < c1; ++c) s = std::fma(U[(r0 + r) * d + c], x[k][c], s);
      dot[k][r0 + r] += s;
    }
}

// add_row_dots for the rows [r0, r1): blocks of kRows, then one row at a time.
template <int K>
CONDNUM_AVX2 void add_dots(const double* U, int64_t d, double* const* x, int64_t r0, int64_t r1,
                           int64_t c0, int64_t c1, double* const* dot) {
  int64_t r = r0;
  for (; r + kRows <= r1; r += kRows) add_row_dots<kRows, K>(U, d, x, r, c0, c1, dot);
  for (; r < r1; ++r) add_row_dots<1, K>(U, d, x, r, c0, c1, dot);
}

// Thread t's part of [begin, end) when thread 0 also has `lead` units of other work: shares
// as equal as that allows, in multiples of kLanes, thread 0's first.
std::pair<int64_t, int64_t> share(int64_t begin, int64_t end, int64_t lead, int t, int nt) {
  const auto up = [](int64_t n) { return (n + kLanes - 1) / kLanes * kLanes; };
  const int64_t first = nt == 1 ? end - begin
                                : std::max<int64_t>(0, up((end - begin + lead) / nt - lead));
  const int64_t mid = std::min(end, begin + first);
  if (t == 0) return {begin, mid};
  const int64_t chunk = up((end - mid + nt - 2) / (nt - 1));
  return {std::min(end, mid + (t - 1) * chunk), std::min(end, mid + t * chunk)};
}

// The triangle of the forward panel [p0, p1): y_i = b_i / u_ii, then b_c -= y_i u_ic for the
// panel's c > i, the rows in blocks of kRows (each block's updates one subtract_rows).
template <int K>
CONDNUM_AVX2 void forward_triangle(const double* U, int64_t d, double* const* x, int64_t p0,
                                   int64_t p1) {
  for (int64_t i0 = p0; i0 < p1; i0 += kRows) {
    const int64_t end = std::min(i0 + kRows, p1);
    for (int64_t i = i0; i < end; ++i) {
      const double* u = U + i * d;
      for (int k = 0; k < K; ++k) {
        const double yi = x[k][i] / u[i];
        x[k][i] = yi;
        for (int64_t c = i + 1; c < end; ++c) x[k][c] = std::fma(-yi, u[c], x[k][c]);
      }
    }
    subtract_rows<K>(U, d, x, i0, end, end, p1);
  }
}

// The triangle of the backward panel [p0, p1), blocks of kRows rows from the last: each block's
// dot products with the solved x_j from the block's end to `reach` (the rest of the panel and
// the panel after it) are added to dot, then x_i = (y_i - dot_i - sum_c u_ic x_c) / u_ii over
// the block's c > i, from its last row up.
template <int K>
CONDNUM_AVX2 void backward_triangle(const double* U, int64_t d, double* const* x,
                                    double* const* dot, int64_t p0, int64_t p1, int64_t reach) {
  for (int64_t i0 = p0 + (p1 - 1 - p0) / kRows * kRows; i0 >= p0; i0 -= kRows) {
    const int64_t end = std::min(i0 + kRows, p1);
    add_dots<K>(U, d, x, i0, end, end, reach, dot);
    for (int64_t i = end - 1; i >= i0; --i) {
      const double* u = U + i * d;
      for (int k = 0; k < K; ++k) {
        double s = x[k][i] - dot[k][i];
        for (int64_t c = i + 1; c < end; ++c) s = std::fma(-u[c], x[k][c], s);
        x[k][i] = s / u[i];
      }
    }
  }
}

// Both substitutions for the K right-hand sides x[k] (overwritten) by thread t of nt, panels of
// kPanel rows, one barrier per panel. Thread 0 solves each panel's triangle and first applies
// the panel solved just before it to that panel (look-ahead); the other threads meanwhile do
// the rest of the work that does not wait for the panel, and thread 0 a share of it too.
//   U^T y = b, panels in order: a solved panel's rows update the columns after it
//     (subtract_rows), so every b_j takes the updates of the rows i < j in their order (one
//     thread makes them as one sweep of blocks of kRows rows, which gives the same bits).
//   U x = y, panels from the last: a panel's rows sum their products with the x_j solved
//     beyond the next panel (one long dot each, while the next panel is solved), then with
//     the rest (the panel's own after the row's block, and the next panel's: one dot).
// The order of every sum is fixed by the panels alone: the same at any thread count.
template <int K>
CONDNUM_AVX2 void sweeps(const double* U, int64_t d, double* const* x, double* const* dot, int t,
                         int nt) {
  if (nt == 1) {
    forward_triangle<K>(U, d, x, 0, d);  // the same updates in the same order, fewer passes
  } else {
    if (t == 0) forward_triangle<K>(U, d, x, 0, std::min(kPanel, d));
#pragma omp barrier
    for (int64_t p0 = 0; p0 < d; p0 += kPanel) {
      const int64_t p1 = std::min(p0 + kPanel, d), p2 = std::min(p1 + kPanel, d);
      if (t == 0 && p1 < d) {
        subtract_rows<K>(U, d, x, p0, p1, p1, p2);
        forward_triangle<K>(U, d, x, p1, p2);
      }
      const auto [c0, c1] = share(p2, d, kLead, t, nt);
      subtract_rows<K>(U, d, x, p0, p1, c0, c1);
#pragma omp barrier
    }
  }
  for (int64_t p0 = (d - 1) / kPanel * kPanel; p0 >= 0; p0 -= kPanel) {
    const int64_t p1 = std::min(p0 + kPanel, d), p2 = std::min(p1 + kPanel, d);
    if (t == 0) backward_triangle<K>(U, d, x, dot, p0, p1, p2);
    if (p0 > 0) {  // the previous panel's rows: their dots with x_j, j >= p1
      const int64_t row_lead = kLead * kPanel / std::max<int64_t>(1, d - p1);
      const auto [r0, r1] = share(p0 - kPanel, p0, row_lead, t, nt);
      add_dots<K>(U, d, x, r0, r1, p1, d, dot);
    }
#pragma omp barrier
  }
}

int solve_threads(int64_t d) {
  return static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), d / kMinRowsPerThread)));
}

template <int K>
void solve_avx2(const double* U, int64_t d, double* x) {
  // The back substitution's dot products: the calling thread's buffer, kept across solves
  // (one per shift-and-invert step) so that a step allocates nothing.
  thread_local std::vector<double> dots;
  dots.assign(K * d, 0.0);
  double *rows[K], *dot[K];
  for (int k = 0; k < K; ++k) {
    rows[k] = x + k * d;
    dot[k] = dots.data() + k * d;
  }
#ifdef _OPENMP
  if (const int nt = solve_threads(d); nt > 1) {
#pragma omp parallel num_threads(nt)
    sweeps<K>(U, d, rows, dot, omp_get_thread_num(), omp_get_num_threads());
    return;
  }
#endif
  sweeps<K>(U, d, rows, dot, 0, 1);
}
#undef CONDNUM_AVX2
#endif

}  // namespace

void cholesky_solve_rows(const at::Tensor& U, const at::Tensor& x, Matvec kind) {
  const int64_t d = U.size(0), nrhs = x.size(0);
  TORCH_INTERNAL_ASSERT(U.dim() == 2 && U.size(1) == d && U.is_contiguous() &&
                        U.scalar_type() == at::kDouble && x.dim() == 2 && x.size(1) == d &&
                        x.is_contiguous() && x.scalar_type() == at::kDouble &&
                        (nrhs == 1 || nrhs == 2));
  double* xs = x.mutable_data_ptr<double>();
  if (kind == Matvec::own) {
    const double* u = U.const_data_ptr<double>();
#ifdef CONDNUM_X86_DISPATCH
    if (cpu_has_avx2_fma()) return nrhs == 1 ? solve_avx2<1>(u, d, xs) : solve_avx2<2>(u, d, xs);
#endif
    for (int64_t k = 0; k < nrhs; ++k) solve_portable(u, d, xs + k * d);
    return;
  }
#if AT_BUILD_WITH_LAPACK()
  // Row-major U is the column-major lower factor L = U^T: L y = b, then L^T x = y; the rows
  // of x are the columns of a column-major (d, nrhs) right-hand side.
  double* a = U.mutable_data_ptr<double>();
  const int n = static_cast<int>(d), m = static_cast<int>(nrhs);
  at::native::blasTriangularSolve<double>('L', 'L', 'N', 'N', n, m, a, n, xs, n);
  at::native::blasTriangularSolve<double>('L', 'L', 'T', 'N', n, m, a, n, xs, n);
#else
  const auto y = at::linalg_solve_triangular(U.mT(), x.t(), /*upper=*/false);
  x.copy_(at::linalg_solve_triangular(U, y, /*upper=*/true).t());
#endif
}

namespace {

// b: (d,) or (2, d) -> (U^T U)^{-1} b by the own kernel.
at::Tensor own_cholesky_solve_op(const at::Tensor& U, const at::Tensor& b) {
  check_one_or_two_vectors(U, b, /*square=*/true, "_cholesky_solve", "U", "b");
  TORCH_CHECK_VALUE(U.scalar_type() == at::kDouble && b.scalar_type() == at::kDouble,
                    "condnum._cholesky_solve: U and b must be float64");
  auto x = b.contiguous().clone().reshape({-1, U.size(0)});
  cholesky_solve_rows(U.contiguous(), x, Matvec::own);
  return x.reshape(b.sizes());
}

}  // namespace

TORCH_LIBRARY_IMPL(condnum, CPU, m) { m.impl("_cholesky_solve", &own_cholesky_solve_op); }

}  // namespace condnum
