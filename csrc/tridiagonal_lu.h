// LU with partial pivoting of a tridiagonal matrix, and its solve, in LAPACK's
// dgttrf/dgttrs layout. One copy for the CPU Lanczos (csrc/cpu/lanczos.cpp) and the
// CUDA kernels (csrc/cuda/tridiagonal.cuh): plain C++, host and device.
//   factor:  T = P L U; dl: multipliers of L, dd/du/du2: diagonal and the two
//            superdiagonals of U, piv[i] = 1 where rows i and i+1 were swapped.
//   solve:   s <- (P L U)^{-1} s, O(m).
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define CONDNUM_HD __host__ __device__
#else
#define CONDNUM_HD
#endif

namespace condnum {

// In place. On entry dd is the diagonal and dl = du the off-diagonal (m - 1 entries);
// du2 and piv need m entries of storage. Pivots smaller than `tiny` become +-tiny, so a
// (nearly) singular T - theta I still gives the finite, huge solve inverse iteration wants.
CONDNUM_HD inline void tridiagonal_lu(int64_t m, double* dd, double* dl, double* du, double* du2,
                                      double* piv, double tiny) {
  for (int64_t i = 0; i < m; ++i) du2[i] = piv[i] = 0.0;
  for (int64_t i = 0; i + 1 < m; ++i) {
    if (fabs(dd[i]) >= fabs(dl[i])) {
      if (dd[i] == 0.0) dd[i] = tiny;
      const double f = dl[i] / dd[i];
      dl[i] = f;
      dd[i + 1] -= f * du[i];
    } else {
      const double f = dd[i] / dl[i];
      dd[i] = dl[i];
      dl[i] = f;
      const double t = du[i];
      du[i] = dd[i + 1];
      dd[i + 1] = t - f * dd[i + 1];
      if (i + 2 < m) {
        du2[i] = du[i + 1];
        du[i + 1] = -f * du[i + 1];
      }
      piv[i] = 1.0;
    }
  }
  for (int64_t i = 0; i < m; ++i)
    if (fabs(dd[i]) < tiny) dd[i] = dd[i] < 0.0 ? -tiny : tiny;
}

// s <- (P L U)^{-1} s for the factors of tridiagonal_lu; m >= 2.
CONDNUM_HD inline void tridiagonal_lu_solve(int64_t m, const double* dd, const double* dl,
                                            const double* du, const double* du2,
                                            const double* piv, double* s) {
  for (int64_t i = 0; i + 1 < m; ++i) {
    if (piv[i] == 0.0) {
      s[i + 1] -= dl[i] * s[i];
    } else {
      const double t = s[i];
      s[i] = s[i + 1];
      s[i + 1] = t - dl[i] * s[i];
    }
  }
  s[m - 1] /= dd[m - 1];
  s[m - 2] = (s[m - 2] - du[m - 2] * s[m - 1]) / dd[m - 2];
  for (int64_t i = m - 3; i >= 0; --i)
    s[i] = (s[i] - du[i] * s[i + 1] - du2[i] * s[i + 2]) / dd[i];
}

}  // namespace condnum
