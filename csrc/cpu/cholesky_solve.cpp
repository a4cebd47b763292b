#include "cpu/cholesky_solve.h"

#include <ATen/Config.h>
#include <ATen/native/BatchLinearAlgebra.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "cpu/avx2.h"

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

constexpr int64_t kRows = 4;   // rows of U per block
constexpr int64_t kLanes = 4;  // doubles per register

// U^T y = b for the K right-hand sides x[k] (overwritten). Per block of rows i0 .. end - 1:
// its triangle (y_i = b_i / u_ii, then b_c -= y_i u_ic for the block's c > i), then the
// trailing update b_j -= y_i0 u_i0j + ... in the rows' order, one fused multiply-add each.
template <int K>
CONDNUM_AVX2 void forward_avx2(const double* U, int64_t d, double* const* x) {
  for (int64_t i0 = 0; i0 < d; i0 += kRows) {
    const int64_t end = std::min(i0 + kRows, d);
    for (int64_t i = i0; i < end; ++i) {
      const double* u = U + i * d;
      for (int k = 0; k < K; ++k) {
        const double yi = x[k][i] / u[i];
        x[k][i] = yi;
        for (int64_t c = i + 1; c < end; ++c) x[k][c] = std::fma(-yi, u[c], x[k][c]);
      }
    }
    int64_t j = end;
    if (end - i0 == kRows) {
      __m256d y[kRows][K];
      for (int r = 0; r < kRows; ++r)
        for (int k = 0; k < K; ++k) y[r][k] = _mm256_set1_pd(x[k][i0 + r]);
      for (; j + kLanes <= d; j += kLanes) {
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
    for (; j < d; ++j)
      for (int k = 0; k < K; ++k)
        for (int64_t r = i0; r < end; ++r) x[k][j] = std::fma(-U[r * d + j], x[k][r], x[k][j]);
  }
}

// U x = y for the K right-hand sides x[k] (overwritten), blocks of rows from the last: the
// dot products of the block's rows with the solved x_j, j >= end (one accumulator per row
// and right-hand side, its lanes summed in a fixed order, then the scalar tail), then the
// block's triangle from its last row up.
template <int K>
CONDNUM_AVX2 void backward_avx2(const double* U, int64_t d, double* const* x) {
  for (int64_t i0 = (d - 1) / kRows * kRows; i0 >= 0; i0 -= kRows) {
    const int64_t end = std::min(i0 + kRows, d);
    double dot[kRows][K] = {};
    int64_t j = end;
    if (end - i0 == kRows) {
      __m256d acc[kRows][K];
      for (int r = 0; r < kRows; ++r)
        for (int k = 0; k < K; ++k) acc[r][k] = _mm256_setzero_pd();
      for (; j + kLanes <= d; j += kLanes) {
        __m256d xj[K];
        for (int k = 0; k < K; ++k) xj[k] = _mm256_loadu_pd(x[k] + j);
#pragma GCC unroll 4
        for (int r = 0; r < kRows; ++r) {
          const __m256d u = _mm256_loadu_pd(U + (i0 + r) * d + j);
          for (int k = 0; k < K; ++k) acc[r][k] = _mm256_fmadd_pd(u, xj[k], acc[r][k]);
        }
      }
      for (int r = 0; r < kRows; ++r)
        for (int k = 0; k < K; ++k) dot[r][k] = Avx2<double>::sum(acc[r][k]);
    }
    for (int64_t r = i0; r < end; ++r)
      for (int k = 0; k < K; ++k)
        for (int64_t c = j; c < d; ++c)
          dot[r - i0][k] = std::fma(U[r * d + c], x[k][c], dot[r - i0][k]);
    for (int64_t i = end - 1; i >= i0; --i) {
      const double* u = U + i * d;
      for (int k = 0; k < K; ++k) {
        double s = x[k][i] - dot[i - i0][k];
        for (int64_t c = i + 1; c < end; ++c) s = std::fma(-u[c], x[k][c], s);
        x[k][i] = s / u[i];
      }
    }
  }
}

template <int K>
CONDNUM_AVX2 void solve_avx2(const double* U, int64_t d, double* x) {
  double* rows[K];
  for (int k = 0; k < K; ++k) rows[k] = x + k * d;
  forward_avx2<K>(U, d, rows);
  backward_avx2<K>(U, d, rows);
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
  TORCH_CHECK_VALUE(U.dim() == 2 && U.size(0) == U.size(1) &&
                        (b.dim() == 1 || (b.dim() == 2 && b.size(0) == 2)) &&
                        b.size(-1) == U.size(0),
                    "condnum._cholesky_solve: U must be (d, d) and b (d,) or (2, d), got ",
                    U.sizes(), " and ", b.sizes());
  TORCH_CHECK_VALUE(U.scalar_type() == at::kDouble && b.scalar_type() == at::kDouble,
                    "condnum._cholesky_solve: U and b must be float64");
  auto x = b.contiguous().clone().reshape({-1, U.size(0)});
  cholesky_solve_rows(U.contiguous(), x, Matvec::own);
  return x.reshape(b.sizes());
}

}  // namespace

TORCH_LIBRARY_IMPL(condnum, CPU, m) { m.impl("_cholesky_solve", &own_cholesky_solve_op); }

}  // namespace condnum
