// Ritz values and vectors of a Lanczos tridiagonal T on the device.
//
//   T: m x m symmetric tridiagonal, diagonal a[0..m), off-diagonal b[0..m-1) (float64),
//   m <= kMaxLanczosSteps. b[m-1] (the coupling to the next, unbuilt Lanczos vector) is
//   not part of T; it scales the Ritz residuals ||A y_i - theta_i y_i|| = b[m-1] |s_i[m-1]|.
//
// Routines (all O(m) per evaluation, no O(m^2) eigensolver):
//   - tri_setup (block-wide): Gershgorin interval and a power-of-two scale s with
//     s max|T| in [1/2, 1]; every evaluation works on s T (exact scaling), so the
//     polynomial recurrences below cannot overflow for any input scale;
//   - sturm_count (one thread): #eigenvalues of T below x, from the signs of the leading
//     principal minors p_i(x) = det(T_{0..i} - x I) by the three-term recurrence
//     p_i = (a_i - x) p_{i-1} - b_{i-1}^2 p_{i-2}, rescaled by powers of two. Unlike the
//     LDL^T-pivot form (LAPACK dstebz) it has no division on the dependency chain (one FMA
//     per step instead of a ~20-instruction float64 division); the sign changes are the
//     same, an exactly zero minor counting as the pivot -pivmin does there;
//   - eigenvalues (block-wide): up to 4 selected eigenvalues (by ascending index) at once
//     by multisection: each target gets blockDim/G threads that evaluate Sturm counts at
//     equally spaced points, so a round shrinks the bracket by that factor (~2^7) instead
//     of 2; the bracket stops at max(2 eps |x|, 1e-22 s^-1) (relative accuracy down to
//     1e-22 ||T||, better than eigh's eps ||T||);
//   - last_component_sq (one thread): s_i[m-1]^2 = -p_{m-2}(theta) / p'_{m-1}(theta) for the
//     unit eigenvector s_i of theta_i (Cramer's rule on the (m-1, m-1) entry of
//     (T - x I)^{-1} = sum_i s_i[m-1]^2 / (theta_i - x)), one pass with derivatives: the
//     Ritz residual without computing the eigenvector;
//   - inverse_iteration (one thread): the eigenvector for theta by LU with partial pivoting
//     of T - theta I (LAPACK dgttrf/dgtts2) and policy::kInverseIterations solves from
//     policy::inverse_iteration_start, as csrc/cpu/lanczos.cpp.
#pragma once

#include "cuda/common.cuh"
#include "solver_policy.h"
#include "tridiagonal_lu.h"

namespace condnum::cuda {

struct Tri {
  const double* a;  // (m,)
  const double* b;  // (m - 1,) off-diagonal (b[m - 1] may exist; it is not read here)
  int m;
  double s;       // power-of-two scale: s * max Gershgorin |bound| in [1/2, 1]
  double lo, hi;  // Gershgorin interval of s T, padded
};

// Scratch in shared memory for the block-wide routines.
struct TriScratch {
  double* red;  // >= 32 doubles
  int* counts;  // >= blockDim ints
  double* lo;   // >= 4
  double* hi;   // >= 4
  int* flag;    // >= 1
};

constexpr double kTriAbsFloor = 1e-22;  // bisection floor, in units of s^-1 (about ||T||)
constexpr int kTriMaxRounds = 24;
constexpr double kTwo400 = 2.5822498780869086e+120;   // 2^400
constexpr double kTwoM400 = 3.8725919148493183e-121;  // 2^-400
constexpr double kPivRel = 6.223015277861142e-61;     // 2^-200: a zero minor counts as -pivmin

// Block-wide: scale and Gershgorin interval. All threads must call it; all get the result.
__device__ inline Tri tri_setup(const double* a, const double* b, int m, double* red) {
  double lo = dbl_inf(), hi = -dbl_inf();
  for (int i = threadIdx.x; i < m; i += blockDim.x) {
    const double r = (i > 0 ? fabs(b[i - 1]) : 0.0) + (i + 1 < m ? fabs(b[i]) : 0.0);
    lo = fmin(lo, a[i] - r);
    hi = fmax(hi, a[i] + r);
  }
  lo = -block_max(-lo, red);
  hi = block_max(hi, red);
  Tri T{a, b, m, 1.0, lo, hi};
  const double big = fmax(fabs(lo), fabs(hi));
  if (big > 0 && isfinite(big)) {
    int e = 0;
    frexp(big, &e);        // big = f 2^e, f in [1/2, 1)
    T.s = ldexp(1.0, -e);  // s big in [1/2, 1)
  }
  const double pad = 4.0 * Eps<double>::value + 1e-300;
  T.lo = T.s * lo - pad;
  T.hi = T.s * hi + pad;
  return T;
}

// Number of eigenvalues of s T below x (x in scaled units).
__device__ inline int sturm_count(const Tri& T, double x) {
  const double s = T.s;
  double pp = 1.0;
  double p = fma(s, T.a[0], -x);
  if (p == 0.0) p = -kPivRel;
  int count = p < 0.0;
  for (int i = 1; i < T.m; ++i) {
    const double bi = s * T.b[i - 1];
    double pn = fma(fma(s, T.a[i], -x), p, -(bi * bi) * pp);
    if (pn == 0.0) pn = -kPivRel * p;
    count += (pn < 0.0) != (p < 0.0);
    pp = p;
    p = pn;
    const double big = fmax(fabs(p), fabs(pp));
    if (big > kTwo400) {
      p *= kTwoM400;
      pp *= kTwoM400;
    } else if (big < kTwoM400) {
      p *= kTwo400;
      pp *= kTwo400;
    }
  }
  return count;
}

// s_i[m-1]^2 for the unit eigenvector of the eigenvalue theta (scaled units) of s T.
__device__ inline double last_component_sq(const Tri& T, double theta) {
  if (T.m == 1) return 1.0;
  const double s = T.s;
  // p_{-1} = 1, p_0 = a_0 - x; p'_{-1} = 0, p'_0 = -1.
  double pp = 1.0, p = fma(s, T.a[0], -theta);
  double dpp = 0.0, dp = -1.0;
  for (int i = 1; i < T.m; ++i) {
    const double bi = s * T.b[i - 1], b2 = bi * bi, ai = fma(s, T.a[i], -theta);
    const double pn = fma(ai, p, -b2 * pp);
    const double dpn = fma(ai, dp, -fma(b2, dpp, p));
    pp = p;
    p = pn;
    dpp = dp;
    dp = dpn;
    const double big = fmax(fmax(fabs(p), fabs(pp)), fmax(fabs(dp), fabs(dpp)));
    if (big > kTwo400) {
      p *= kTwoM400;
      pp *= kTwoM400;
      dp *= kTwoM400;
      dpp *= kTwoM400;
    } else if (big < kTwoM400 && big > 0.0) {
      p *= kTwo400;
      pp *= kTwo400;
      dp *= kTwo400;
      dpp *= kTwo400;
    }
  }
  // Now pp = p_{m-2}(theta), dp = p'_{m-1}(theta).
  if (dp == 0.0 || !isfinite(dp)) return 1.0;  // degenerate: report the largest residual
  const double v = -pp / dp;
  return isfinite(v) ? fmin(fmax(v, 0.0), 1.0) : 1.0;
}

// Block-wide: eigenvalues number idx[g] (0 = smallest; clamped to [0, m)) of s T for
// g < G <= 4, in scaled units, into out[g] (shared memory; valid for all threads after
// return). All threads must call it.
__device__ inline void tri_eigenvalues(const Tri& T, const int* idx, int G, double* out,
                                       TriScratch sc) {
  const int tid = threadIdx.x, P = blockDim.x / G;
  if (T.m == 1) {
    __syncthreads();
    if (tid < G) out[tid] = T.s * T.a[0];
    __syncthreads();
    return;
  }
  __syncthreads();
  if (tid < G) {
    sc.lo[tid] = T.lo;
    sc.hi[tid] = T.hi;
  }
  if (tid == 0) *sc.flag = 0;
  __syncthreads();
  for (int round = 0; round < kTriMaxRounds; ++round) {
    const int g = tid / P, q = tid % P;
    if (g < G) {
      const double lo = sc.lo[g], hi = sc.hi[g];
      const double x = lo + (hi - lo) * (static_cast<double>(q + 1) / (P + 1));
      sc.counts[tid] = sturm_count(T, x);
    }
    __syncthreads();
    if (tid < G) {
      const int k = min(max(idx[tid], 0), T.m - 1);
      const double lo = sc.lo[tid], hi = sc.hi[tid];
      const int* c = sc.counts + tid * P;
      // Find q* with c[q* - 1] <= k < c[q*] (c[-1] := count(lo) <= k, c[P] := count(hi) > k):
      // a binary search on this invariant needs no monotonicity of the computed counts.
      int left = -1, right = P;
      while (right - left > 1) {
        const int mid = (left + right) / 2;
        if (c[mid] > k)
          right = mid;
        else
          left = mid;
      }
      const double step = (hi - lo) / (P + 1);
      const double nlo =
          left >= 0 ? lo + (hi - lo) * (static_cast<double>(left + 1) / (P + 1)) : lo;
      const double nhi =
          right < P ? lo + (hi - lo) * (static_cast<double>(right + 1) / (P + 1)) : hi;
      sc.lo[tid] = nlo;
      sc.hi[tid] = nhi;
      const double width = nhi - nlo;
      const bool done =
          width <= fmax(2.0 * Eps<double>::value * fmax(fabs(nlo), fabs(nhi)), kTriAbsFloor) ||
          !(step > 0) || (nlo == lo && nhi == hi);
      if (!done) atomicOr(sc.flag, 1);
    }
    __syncthreads();
    const int more = *sc.flag;
    __syncthreads();
    if (tid == 0) *sc.flag = 0;
    if (!more) break;
    __syncthreads();
  }
  __syncthreads();
  if (tid < G) out[tid] = 0.5 * (sc.lo[tid] + sc.hi[tid]);
  __syncthreads();
}

// One thread: unit eigenvector s[0..m) of T for its eigenvalue theta (unscaled units) by
// inverse iteration. work: 5 m doubles (global or shared), s: m doubles.
__device__ inline void inverse_iteration(const Tri& T, double theta, double* s, double* work) {
  const int m = T.m;
  if (m == 1) {
    s[0] = 1.0;
    return;
  }
  const double sc = T.s, th = sc * theta;
  double* dl = work;
  double* dd = dl + m;
  double* du = dd + m;
  double* du2 = du + m;
  double* piv = du2 + m;
  for (int i = 0; i < m; ++i) {
    dd[i] = fma(sc, T.a[i], -th);
    if (i + 1 < m) dl[i] = du[i] = sc * T.b[i];
  }
  tridiagonal_lu(m, dd, dl, du, du2, piv, 4.0 * Eps<double>::value);  // s T has norm ~1
  policy::inverse_iteration_start(m, s);
  for (int it = 0; it < policy::kInverseIterations; ++it) {
    tridiagonal_lu_solve(m, dd, dl, du, du2, piv, s);
    double big = 0.0;
    for (int i = 0; i < m; ++i) big = fmax(big, fabs(s[i]));
    if (!(big > 0.0) || !isfinite(big)) big = 1.0;
    double nrm = 0.0;
    for (int i = 0; i < m; ++i) {
      s[i] /= big;
      nrm = fma(s[i], s[i], nrm);
    }
    nrm = sqrt(nrm);
    for (int i = 0; i < m; ++i) s[i] /= nrm;
  }
}

}  // namespace condnum::cuda
