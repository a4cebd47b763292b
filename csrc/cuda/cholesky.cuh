// The shift-and-invert operator (S + tau I)^{-1} = X^T X, X = L^{-1}, on the device.
//
//   A = W + tau I (float64, padded to dp = 32 ceil(d / 32) with an identity block),
//   A = L L^T (Cholesky), X = L^{-1} (lower triangular). Output B (dp, dp): X in the lower
//   triangle and X^T in the strict upper one, so the Lanczos kernel applies
//   y = X v and w = X^T y as two row-wise triangular products (lanczos.cuh, OP = 1).
// Why an explicit X: applying the inverse through two triangular solves per Lanczos step
// would need ~2 d / 32 grid-wide synchronisations per step (the solves are sequential
// over tile rows); X costs d^3 / 3 flops once and its products parallelise like a matvec.
// Accuracy: the computed X satisfies L X = I + F with |F| <= c d eps |L| |X| (columnwise
// backward-stable substitution), so X^T X = (I + F)^T A^{-1} (I + F) is a congruence of
// A^{-1}: by Ostrowski's theorem its eigenvalues are those of A^{-1} up to a relative
// (1 + ||F||)^2, the same kind of error as two backward-stable triangular solves.
// tau starts at tau0 (policy::cholesky_shift, or the wide shift of the null-space retry)
// and grows by policy::kTauGrowth per failed attempt (rounding can make W + tau I
// indefinite) up to max_tau (policy::max_cholesky_shift), as on the CPU, all on the device;
// beyond it S is declared indefinite (ok = 0).
//
// Algorithm: right-looking blocked Cholesky over 32 x 32 tiles, fused with the
// right-looking blocked inversion (R starts at the identity; X_kj = X_kk R_kj):
//   diag(q):  A_qq -= L_q,q-1 L_q,q-1^T; L_qq = chol(A_qq); X_qq = L_qq^{-1}  (one block)
//   P(k):     L_ik = A_ik X_kk^T (i > k);   X_kj = X_kk R_kj (j < k)
//   T(k):     A_ij -= L_ik L_jk^T (k < j <= i, but (k+1, k+1): diag(k+1) does it);
//             R_ij -= L_ik X_kj (i > k, j <= k)
// One persistent cooperative grid of 256-thread blocks; tasks (32 x 32 x 32 tile
// products from shared memory, 4 outputs per thread) are spread round-robin; 2 grid
// syncs per tile column (nt = dp / 32). The diagonal factorisation and inversion of a
// tile (one block, 64 __syncthreads) is the critical path for small d; the d^3 / 3 +
// d^3 / 3 flops of the trailing updates dominate for large d.
// To tune on the GPU: 64 x 64 tiles and FP64 tensor-core (DMMA) products for the trailing
// update, look-ahead on the diagonal tile.
#pragma once

#include "cuda/common.cuh"
#include "solver_policy.h"

namespace condnum::cuda {

constexpr int kCholThreads = 256;
// Attempts the ladder can take: tau0 >= kTauDEps eps64 lam_max and max_tau <=
// max(tau0, sqrt(eps32) lam_max) allow at most 13 (12 growths by 10).
constexpr int kCholMaxAttempts = 16;
constexpr int kTile = 32;

struct CholState {
  int run;                  // in: 1 when the shift-and-invert solve is needed
  int ok;                   // out: 1 when a factorisation succeeded
  int fail[kCholMaxAttempts];  // per attempt: a non-positive pivot was met
  double tau0;                 // in
  double max_tau;              // in
  double tau;               // out: the shift that worked (the Lanczos kernel reads
  double threshold;         //      {tau, threshold} from here: keep them adjacent)
};

template <typename T>
struct CholParams {
  const T* W;  // (d, d) symmetrised S
  int d, dp, nt;
  double* A;  // (dp, dp) work, lower triangle
  double* B;  // (dp, dp) out
  CholState* st;
  int* si_run;  // out: run flag of the shift-and-invert Lanczos
};

using TileBuf = double[kTile][kTile + 1];

// Loads the 32 x 32 tile (ti, tj) of M (leading dimension ld) into t.
__device__ inline void load_tile(const double* M, int ld, int ti, int tj, TileBuf& t) {
  const int c = threadIdx.x % kTile, r0 = threadIdx.x / kTile;  // 8 rows per pass
  const double* base = M + static_cast<int64_t>(ti) * kTile * ld + static_cast<int64_t>(tj) * kTile;
#pragma unroll
  for (int q = 0; q < kTile / 8; ++q)
    t[r0 + 8 * q][c] = base[static_cast<int64_t>(r0 + 8 * q) * ld + c];
}

// Keeps the lower triangle (incl. diagonal) of t, zeroes the rest.
__device__ inline void mask_lower(TileBuf& t) {
  const int c = threadIdx.x % kTile, r0 = threadIdx.x / kTile;
#pragma unroll
  for (int q = 0; q < kTile / 8; ++q)
    if (c > r0 + 8 * q) t[r0 + 8 * q][c] = 0.0;
}

// acc[q] (row r0 + q, col c of a 32 x 32 tile, r0 = 4 (tid / 32), c = tid % 32) +=
//   sum_t P[row][t] Q[t][c]      (TRANS_Q = false)
//   sum_t P[row][t] Q[c][t]      (TRANS_Q = true)
template <bool TRANS_Q>
__device__ inline void tile_mma(const TileBuf& P, const TileBuf& Q, double acc[4]) {
  const int c = threadIdx.x % kTile, r0 = (threadIdx.x / kTile) * 4;
#pragma unroll 8
  for (int t = 0; t < kTile; ++t) {
    const double q = TRANS_Q ? Q[c][t] : Q[t][c];
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[i] = fma(P[r0 + i][t], q, acc[i]);
  }
}

__device__ inline void load_acc(const double* M, int ld, int ti, int tj, double acc[4]) {
  const int c = threadIdx.x % kTile, r0 = (threadIdx.x / kTile) * 4;
  const double* base = M + static_cast<int64_t>(ti) * kTile * ld + static_cast<int64_t>(tj) * kTile;
#pragma unroll
  for (int i = 0; i < 4; ++i) acc[i] = base[static_cast<int64_t>(r0 + i) * ld + c];
}

__device__ inline void store_acc(double* M, int ld, int ti, int tj, const double acc[4]) {
  const int c = threadIdx.x % kTile, r0 = (threadIdx.x / kTile) * 4;
  double* base = M + static_cast<int64_t>(ti) * kTile * ld + static_cast<int64_t>(tj) * kTile;
#pragma unroll
  for (int i = 0; i < 4; ++i) base[static_cast<int64_t>(r0 + i) * ld + c] = acc[i];
}

// Transposed store: M tile (tj, ti) = acc^T.
__device__ inline void store_acc_t(double* M, int ld, int ti, int tj, const double acc[4]) {
  const int c = threadIdx.x % kTile, r0 = (threadIdx.x / kTile) * 4;
  double* base = M + static_cast<int64_t>(tj) * kTile * ld + static_cast<int64_t>(ti) * kTile;
#pragma unroll
  for (int i = 0; i < 4; ++i) base[static_cast<int64_t>(c) * ld + r0 + i] = acc[i];
}

// In place: a (lower triangle) -> L with a = L L^T; x = L^{-1} (lower, upper zero).
// Returns false (the same in every thread) on a non-positive or non-finite pivot.
__device__ inline bool factor_invert_tile(TileBuf& a, TileBuf& x) {
  const int tid = threadIdx.x;
  bool ok = true;
  double root_prev = 1.0;
  __syncthreads();
  for (int j = 0; j <= kTile; ++j) {
    double djj = 1.0;
    if (j < kTile) {
      djj = a[j][j];
      if (!(djj > 0.0) || !isfinite(djj)) {
        ok = false;
        djj = 1.0;
      }
    }
    const double inv = 1.0 / djj;
    for (int e = tid; e < kTile * kTile; e += kCholThreads) {
      const int i = e / kTile, l = e % kTile;
      // Deferred scaling of column j - 1 (disjoint from the columns updated below).
      if (j > 0 && l == j - 1 && i >= l) a[i][l] = i == l ? root_prev : a[i][l] / root_prev;
      // Rank-one update of the trailing triangle with the unscaled column j.
      if (j < kTile && l > j && l <= i) a[i][l] -= a[i][j] * a[l][j] * inv;
    }
    __syncthreads();
    root_prev = sqrt(djj);
  }
  // x = L^{-1}, row by row: x[i][c] = (delta_ic - sum_{c <= t < i} a[i][t] x[t][c]) / a[i][i];
  // 8 threads per column c share the sum.
  const int c = tid / 8, sub = tid % 8;
  for (int i = 0; i < kTile; ++i) {
    double s = 0.0;
    for (int t = c + sub; t < i; t += 8) s = fma(a[i][t], x[t][c], s);
    s += __shfl_xor_sync(0xffffffffu, s, 4);
    s += __shfl_xor_sync(0xffffffffu, s, 2);
    s += __shfl_xor_sync(0xffffffffu, s, 1);
    if (sub == 0) x[i][c] = c > i ? 0.0 : ((c == i ? 1.0 : 0.0) - s) / a[i][i];
    __syncthreads();
  }
  return ok;
}

template <typename T>
__global__ void __launch_bounds__(kCholThreads) cholesky_inverse_kernel(CholParams<T> p) {
  if (p.st->run == 0) return;  // uniform
  cooperative_groups::grid_group grid = cooperative_groups::this_grid();
  __shared__ TileBuf t0, t1, t2;
  const int tid = threadIdx.x, nb = gridDim.x, bid = blockIdx.x;
  const int d = p.d, dp = p.dp, nt = p.nt;
  volatile int* fail = p.st->fail;

  // diag(q): optional update with L_q,q-1, then factor + invert into A and B.
  auto diag = [&](int q, int attempt, bool update) {
    load_tile(p.A, dp, q, q, t2);
    if (update) {
      load_tile(p.A, dp, q, q - 1, t0);
      __syncthreads();
      double acc[4];
      const int c = tid % kTile, r0 = (tid / kTile) * 4;
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[i] = 0.0;
      tile_mma<true>(t0, t0, acc);
      __syncthreads();
#pragma unroll
      for (int i = 0; i < 4; ++i) t2[r0 + i][c] -= acc[i];
    }
    const bool ok = factor_invert_tile(t2, t1);
    if (!ok && tid == 0) fail[attempt] = 1;
    // A tile (q, q) = L_qq; B tile (q, q) = X_qq (lower) and X_qq^T (upper).
    const int c = tid % kTile, r0 = tid / kTile;
    double* a = p.A + static_cast<int64_t>(q) * kTile * dp + static_cast<int64_t>(q) * kTile;
    double* b = p.B + static_cast<int64_t>(q) * kTile * dp + static_cast<int64_t>(q) * kTile;
#pragma unroll
    for (int s = 0; s < kTile / 8; ++s) {
      const int r = r0 + 8 * s;
      a[static_cast<int64_t>(r) * dp + c] = t2[r][c];
      b[static_cast<int64_t>(r) * dp + c] = r >= c ? t1[r][c] : t1[c][r];
    }
    __syncthreads();
  };

  double tau = p.st->tau0;
  const double max_tau = p.st->max_tau;
  for (int attempt = 0; attempt < kCholMaxAttempts; ++attempt, tau *= policy::kTauGrowth) {
    // A = W + tau I (lower triangle, padded with I); B strictly-lower tiles = 0 (R = I).
    const int64_t total = static_cast<int64_t>(dp) * dp;
    for (int64_t e = static_cast<int64_t>(bid) * kCholThreads + tid; e < total;
         e += static_cast<int64_t>(nb) * kCholThreads) {
      const int r = static_cast<int>(e / dp), c = static_cast<int>(e % dp);
      if (c > r) continue;
      double v;
      if (r < d && c < d)
        v = static_cast<double>(p.W[static_cast<int64_t>(r) * d + c]) + (r == c ? tau : 0.0);
      else
        v = r == c ? 1.0 : 0.0;
      p.A[e] = v;
      if (r / kTile > c / kTile) p.B[e] = 0.0;
    }
    grid.sync();
    if (bid == 0) diag(0, attempt, false);
    grid.sync();
    bool failed = fail[attempt] != 0;
    for (int k = 0; k < nt && !failed; ++k) {
      // ---- P(k): panel L_ik (i > k) and block row X_kj (j < k) of the inverse.
      const int n_after = nt - k - 1;
      for (int t = bid; t < nt - 1; t += nb) {
        double acc[4] = {0.0, 0.0, 0.0, 0.0};
        load_tile(p.B, dp, k, k, t1);  // X_kk (lower) / X_kk^T (upper)
        mask_lower(t1);
        if (t < n_after) {
          const int i = k + 1 + t;
          load_tile(p.A, dp, i, k, t0);
          __syncthreads();
          tile_mma<true>(t0, t1, acc);  // A_ik X_kk^T
          store_acc(p.A, dp, i, k, acc);
        } else {
          const int j = t - n_after;
          load_tile(p.B, dp, k, j, t0);  // R_kj
          __syncthreads();
          tile_mma<false>(t1, t0, acc);  // X_kk R_kj
          store_acc(p.B, dp, k, j, acc);
          store_acc_t(p.B, dp, k, j, acc);
        }
        __syncthreads();
      }
      grid.sync();
      // ---- T(k): trailing update of A, update of R, and diag(k + 1).
      const int64_t n_tri = static_cast<int64_t>(n_after) * (n_after + 1) / 2;
      const int64_t n_tasks = n_tri + static_cast<int64_t>(n_after) * (k + 1);
      for (int64_t t = bid; t < n_tasks; t += nb) {
        if (t == 0) {
          diag(k + 1, attempt, true);
          continue;
        }
        double acc[4];
        if (t < n_tri) {
          // Lower-triangle pair (i, j), k < j <= i, row-major from (k+1, k+1).
          int ii = static_cast<int>((sqrt(8.0 * static_cast<double>(t) + 1.0) - 1.0) / 2.0);
          while (static_cast<int64_t>(ii + 1) * (ii + 2) / 2 <= t) ++ii;
          while (static_cast<int64_t>(ii) * (ii + 1) / 2 > t) --ii;
          const int jj = static_cast<int>(t - static_cast<int64_t>(ii) * (ii + 1) / 2);
          const int i = k + 1 + ii, j = k + 1 + jj;
          load_tile(p.A, dp, i, k, t0);
          load_tile(p.A, dp, j, k, t1);
          load_acc(p.A, dp, i, j, acc);
          for (int q = 0; q < 4; ++q) acc[q] = -acc[q];
          __syncthreads();
          tile_mma<true>(t0, t1, acc);  // -(A_ij) + L_ik L_jk^T
          for (int q = 0; q < 4; ++q) acc[q] = -acc[q];
          store_acc(p.A, dp, i, j, acc);
        } else {
          const int64_t v = t - n_tri;
          const int i = k + 1 + static_cast<int>(v / (k + 1)), j = static_cast<int>(v % (k + 1));
          load_tile(p.A, dp, i, k, t0);  // L_ik
          load_tile(p.B, dp, k, j, t1);  // X_kj (j < k) or X_kk with its upper half masked
          if (j == k) mask_lower(t1);
          load_acc(p.B, dp, i, j, acc);  // R_ij
          for (int q = 0; q < 4; ++q) acc[q] = -acc[q];
          __syncthreads();
          tile_mma<false>(t0, t1, acc);
          for (int q = 0; q < 4; ++q) acc[q] = -acc[q];
          store_acc(p.B, dp, i, j, acc);
        }
        __syncthreads();
      }
      grid.sync();
      failed = fail[attempt] != 0;
    }
    if (!failed) {
      if (bid == 0 && tid == 0) {
        p.st->ok = 1;
        p.st->tau = tau;
        *p.si_run = 1;
      }
      return;
    }
    if (!(tau < max_tau)) return;  // S is indefinite beyond rounding: ok stays 0
  }
}

}  // namespace condnum::cuda
