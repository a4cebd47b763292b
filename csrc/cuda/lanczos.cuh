// Lanczos with full reorthogonalisation as one persistent cooperative kernel.
//
// Math (as csrc/cpu/lanczos.h): from a unit v_0, w = A v_j is orthogonalised against the
// whole basis V = [v_0 .. v_j] by classical Gram-Schmidt, h = V w, w -= V^T h, with a
// second pass when the first removed more than half of ||w||^2 (DGKS, "twice is enough");
// alpha_j = h_j (+ the second pass's h_j), beta_j = ||w||, v_{j+1} = w / beta_j. T_m =
// tridiag(alpha, beta) gives the Ritz pairs (tridiagonal.cuh). Breakdown (beta_j <=
// 10 sqrt(d) eps scale, or m = d) means the Krylov space is A-invariant: stop, exact pairs.
// Operators A (template OP):
//   OP = 0: A = W, a dense symmetric (d, d) matrix in S's dtype (float32 or float64);
//   OP = 1: A = (S + tau I)^{-1} = X^T X with X = L^{-1} (cholesky.cuh): B (ldb >= d) holds
//           X in its lower triangle and X^T in its strict upper one, so y = X v and
//           w = X^T y are both row-wise products (two stages, a grid sync in between).
// The basis, w and all reductions are float64 for both dtypes (only W is float32 for
// float32 S): the Ritz values are those of the matrix as stored, to float64 rounding.
//
// Parallelisation: one cooperative grid of NB blocks x 512 threads (NB co-resident, at
// most one row per warp). Block b owns the coordinate chunk [b C, (b + 1) C), C =
// ceil(d / NB): it computes those rows of A v (one warp per row), the partial dot
// products of its chunk with every basis vector, and updates its chunk of w and of the
// basis; only partial sums cross blocks (a (NB, steps + 4) buffer per phase). Every block
// reduces the partials itself, in the same order, so all blocks hold bit-identical h,
// alpha, beta and take the same decisions without further synchronisation. Per step:
// 2 grid syncs (3 with the DGKS second pass; +1 for OP = 1). The next step's input is
// the complete w (every chunk written before the last sync) times 1 / beta, the same
// product that stores v_{j+1}.
// Convergence: every block evaluates the residuals r = beta_m |s[m-1]| of the wanted
// Ritz values (tridiagonal.cuh, O(m) per value, no eigenvector needed) at steps 3, 4, 5,
// 6, 8, 10, ... (x1.25), and all stop together with the CPU kernel's rules: a value is
// accepted when r <= tol |lam| at two consecutive checks; the bottom end gets a
// ski-rental budget against shift-and-invert (modes below). So the work is a fixed budget
// of at most min(num_iters, d) steps with a device-side early exit: no host
// synchronisation. (The CPU checks after every step; checking on a schedule costs up to
// 25% extra steps but one check costs about one step.)
// Expected bottleneck: grid-sync latency (~1-2 us each) for d <~ 2048; the matrix-vector
// product (d^2 reads of S per step, from L2 when S fits) above. To tune on the GPU:
// threads per block / blocks per grid, the check schedule, vectorised loads.
#pragma once

#include "cuda/common.cuh"
#include "cuda/kernels.h"
#include "cuda/tridiagonal.cuh"

namespace condnum::cuda {

namespace cg = cooperative_groups;

constexpr int kLzThreads = 512;
constexpr int kLzWarps = kLzThreads / kWarp;
constexpr int kLzMaxChunk = 1024;  // coordinates per block (shared-memory bound)
constexpr int kLzFirstCheck = 3;   // first convergence check (a 2x2 T is rarely converged)
constexpr double kLzCheckGrowth = 1.25;
// Plain Lanczos is trusted for lam_min only while kappa * eps64 * this stays below tol.
constexpr double kRoundingSlack = 4.0;
// After lam_max has converged, plain Lanczos may spend this fraction of the estimated
// shift-and-invert cost on the bottom end, judged by its bound's decay once at least
// kRateWindow steps were spent on it (csrc/cpu/extreme_eigh.cpp).
constexpr double kSkiRental = 0.6;
constexpr int kRateWindow = 6;

enum LanczosMode : int {
  kModeTop = 0,          // top eigenpair of S
  kModeExtreme = 1,      // top of S, and the bottom while plain Lanczos is worth it
  kModeShiftInvert = 2,  // largest Ritz value of (S + tau I)^{-1} below 1 / (threshold + tau)
};

// Results of one Lanczos run, written by block 0.
struct LzResult {
  int m;          // steps taken (size of T)
  int invariant;  // 1: breakdown, the Ritz pairs are exact
  int top_step;   // step at which lam_max was accepted (0: never)
  int bottom_ok;  // kModeExtreme: stopped because the bottom Ritz value was accepted
};

template <typename T>
struct LzParams {
  int d, steps, chunk, part_ld;
  const T* W;       // OP 0: (d, d)
  const double* B;  // OP 1: (ldb, ldb)
  int ldb;
  double* V;      // (steps + 1, d) basis rows
  double* alpha;  // (steps,)
  double* beta;   // (steps,)
  double* wbuf;   // (2, d)
  double* ybuf;   // (d,)  OP 1
  double* part;   // (3, NB, part_ld)
  LzResult* res;
  const int* run;  // nullptr, or run only when *run != 0 (decided by earlier kernels)
  // Start vector: rho r / |r| + a / |a| + b / |b| (+ c / |c| when b is unusable and
  // use_c), r = splitmix64 vector, rho = 0.1 when any warm start is used, else 1.
  // A zero or non-finite a / b is ignored.
  const T* sa;
  const T* sb;
  const double* sc;
  int use_c;
  // Convergence.
  int mode;
  double tol, rtol, si_cost;
  const double* si;  // kModeShiftInvert: {tau, threshold} (device)
};

// ----------------------------------------------------------------------------- analysis

// What the convergence checks and the final extraction need from T_m. Error bounds are
// residuals r = ||A y - theta y|| = b_m |s[m-1]| (some eigenvalue lies within r of theta;
// ARPACK's test, as the CPU kernels), 0 when the Krylov space is invariant.
struct Analysis {
  double top, top_bound;        // theta_{m-1} and its residual
  double bottom, bottom_bound;  // theta_0 and its residual
  int k;                        // kModeShiftInvert: wanted index (-1: none)
  double theta_k, k_bound;      // its Ritz value and residual
};

struct AnalysisScratch {
  TriScratch tri;
  double* vals;  // >= 8
  double* misc;  // >= 8
  int* ints;     // >= 4
};

// Block-wide. a, b: alpha, beta (b[m - 1] = residual coupling), invariant: exact pairs.
// Targets: theta_{m-1} and theta_0, or (kModeShiftInvert) theta_k, k = #{theta < si_c} - 1.
__device__ __noinline__ Analysis analyze(const double* a, const double* b, int m, bool invariant,
                                         int mode, double si_c, AnalysisScratch sc) {
  const Tri T = tri_setup(a, b, m, sc.tri.red);
  const int tid = threadIdx.x;
  const double beta_m = invariant ? 0.0 : b[m - 1];
  Analysis out{};
  int G;
  if (mode == kModeShiftInvert) {
    if (tid == 0) sc.ints[0] = sturm_count(T, T.s * si_c) - 1;
    __syncthreads();
    out.k = sc.ints[0];
    __syncthreads();
    if (tid == 0) sc.ints[0] = max(out.k, 0);
    G = 1;
  } else {
    out.k = -1;
    if (tid == 0) {
      sc.ints[0] = m - 1;
      sc.ints[1] = 0;  // kModeTop also needs it: a clearly negative Ritz value means indefinite
    }
    G = 2;
  }
  __syncthreads();
  tri_eigenvalues(T, sc.ints, G, sc.vals, sc.tri);
  // Residuals b_m |s_i[m-1]|, one thread (of its own warp) per target.
  if (tid % kWarp == 0 && tid / kWarp < G)
    sc.misc[tid / kWarp] = beta_m * sqrt(last_component_sq(T, sc.vals[tid / kWarp]));
  __syncthreads();
  const double inv_s = 1.0 / T.s;
  if (mode == kModeShiftInvert) {
    out.theta_k = sc.vals[0] * inv_s;
    out.k_bound = sc.misc[0];
  } else {
    out.top = sc.vals[0] * inv_s;
    out.top_bound = sc.misc[0];
    out.bottom = sc.vals[1] * inv_s;
    out.bottom_bound = sc.misc[1];
  }
  __syncthreads();
  return out;
}

// Relative error of lam = 1 / theta - tau from the bound of theta (|d lam| = |d theta| / theta^2).
__device__ inline double si_error(double theta, double bound, double tau) {
  if (bound == 0.0) return 0.0;
  const double lam = 1.0 / theta - tau;
  return bound / (theta * theta) / lam;
}

// ----------------------------------------------------------------------------- block helpers

// out[i] = sum_{k < nc} V[i d + c0 + k] w[k] for i < n, and out[n] = sum w[k]^2.
__device__ inline void block_dots(const double* V, int d, int c0, int nc, const double* w, int n,
                                  double* out) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  for (int i = warp; i <= n; i += kLzWarps) {
    const double* row = i < n ? V + static_cast<int64_t>(i) * d + c0 : w;
    double s = 0.0;
    for (int k = lane; k < nc; k += kWarp) s = fma(row[k], w[k], s);
    s = warp_sum(s);
    if (lane == 0) out[i] = s;
  }
}

// h[i] = sum_b P[b ld + i] for i < n (b < nb), in a fixed order. red: blockDim doubles.
__device__ inline void reduce_partials(const double* P, int nb, int ld, int n, double* h,
                                       double* red) {
  const int tid = threadIdx.x;
  __syncthreads();  // red and h may still be read by the caller's previous step
  if (n >= kLzThreads) {
    for (int i = tid; i < n; i += kLzThreads) {
      double s = 0.0;
      for (int b = 0; b < nb; ++b) s += P[static_cast<int64_t>(b) * ld + i];
      h[i] = s;
    }
    __syncthreads();
    return;
  }
  const int G = kLzThreads / n;  // groups of blocks per entry
  if (tid < G * n) {
    const int i = tid % n, g = tid / n;
    double s = 0.0;
    for (int b = g; b < nb; b += G) s += P[static_cast<int64_t>(b) * ld + i];
    red[tid] = s;
  }
  __syncthreads();
  if (tid < n) {
    double s = 0.0;
    for (int g = 0; g < G; ++g) s += red[g * n + tid];
    h[tid] = s;
  }
  __syncthreads();
}

// w[k] -= sum_{i < n} V[i d + c0 + k] h[i] for k < nc, in a fixed order.
__device__ inline void block_update(const double* V, int d, int c0, int nc, const double* h, int n,
                                    double* w, double* red) {
  const int tid = threadIdx.x;
  __syncthreads();  // red (block_sum scratch) may still be read
  if (nc >= kLzThreads) {
    for (int k = tid; k < nc; k += kLzThreads) {
      double s = 0.0;
      for (int i = 0; i < n; ++i) s = fma(V[static_cast<int64_t>(i) * d + c0 + k], h[i], s);
      w[k] -= s;
    }
    __syncthreads();
    return;
  }
  const int G = nc > 0 ? kLzThreads / nc : 0;
  if (tid < G * nc) {
    const int k = tid % nc, g = tid / nc;
    double s = 0.0;
    for (int i = g; i < n; i += G) s = fma(V[static_cast<int64_t>(i) * d + c0 + k], h[i], s);
    red[tid] = s;
  }
  __syncthreads();
  if (tid < nc) {
    double s = 0.0;
    for (int g = 0; g < G; ++g) s += red[g * nc + tid];
    w[tid] -= s;
  }
  __syncthreads();
}

// Rows [r0, r1) of M x, x_k = xs[k] * xsc; row r reads columns [lo(r), hi(r)).
template <typename M, typename Lo, typename Hi>
__device__ inline void block_rows(const M* A, int64_t lda, int r0, int r1, const double* xs,
                                  double xsc, Lo lo, Hi hi, double* out) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  for (int r = r0 + warp; r < r1; r += kLzWarps) {
    const M* row = A + static_cast<int64_t>(r) * lda;
    double s = 0.0;
    const int kend = hi(r);
    for (int k = lo(r) + lane; k < kend; k += kWarp)
      s = fma(static_cast<double>(row[k]), xs[k] * xsc, s);
    s = warp_sum(s);
    if (lane == 0) out[r - r0] = s;
  }
}

// ----------------------------------------------------------------------------- kernel

// Dynamic shared memory (doubles unless noted): alpha, beta (steps), h (steps + 4),
// w chunk (chunk), red (kLzThreads), small scratch (64), counts (kLzThreads ints):
// < 40 KiB for steps <= kMaxLanczosSteps and chunk <= kLzMaxChunk (no opt-in needed).
__host__ __device__ constexpr size_t lanczos_smem_bytes(int64_t steps, int64_t chunk) {
  return sizeof(double) * (3 * static_cast<size_t>(steps) + 4 + chunk + kLzThreads + 64) +
         sizeof(int) * (kLzThreads + 8);
}

static_assert(lanczos_smem_bytes(kMaxLanczosSteps, kLzMaxChunk) <= 48 * 1024,
              "Lanczos shared memory must stay under the default 48 KiB");

template <typename T, int OP>
__global__ void __launch_bounds__(kLzThreads) lanczos_kernel(LzParams<T> p) {
  if (p.run != nullptr && *p.run == 0) return;  // uniform: written by earlier kernels
  cg::grid_group grid = cg::this_grid();
  extern __shared__ double smem[];
  const int d = p.d, steps = p.steps, ld = p.part_ld;
  double* alpha_s = smem;
  double* beta_s = alpha_s + steps;
  double* h = beta_s + steps;
  double* wl = h + steps + 4;
  double* red = wl + p.chunk;
  double* small = red + kLzThreads;  // 64 doubles
  int* counts = reinterpret_cast<int*>(small + 64);
  int* iscratch = counts + kLzThreads;  // 8 ints
  AnalysisScratch asc{TriScratch{small, counts, small + 32, small + 36, iscratch}, small + 40,
                      small + 48, iscratch + 1};

  const int tid = threadIdx.x;
  const int nb = gridDim.x, bid = blockIdx.x;
  const int c0 = min(d, bid * p.chunk), c1 = min(d, c0 + p.chunk), nc = c1 - c0;
  double* P1 = p.part;
  double* P2 = p.part + static_cast<int64_t>(nb) * ld;
  double* P3 = P2 + static_cast<int64_t>(nb) * ld;

  // ---- start vector
  {
    double s[4] = {0.0, 0.0, 0.0, 0.0};
    for (int k = c0 + tid; k < c1; k += kLzThreads) {
      const double r = splitmix_unit(static_cast<uint64_t>(k));
      s[0] = fma(r, r, s[0]);
      if (p.sa) s[1] = fma(static_cast<double>(p.sa[k]), static_cast<double>(p.sa[k]), s[1]);
      if (p.sb) s[2] = fma(static_cast<double>(p.sb[k]), static_cast<double>(p.sb[k]), s[2]);
      if (p.sc) s[3] = fma(p.sc[k], p.sc[k], s[3]);
    }
    for (int q = 0; q < 4; ++q) {
      const double t = block_sum(s[q], red);
      if (tid == 0) P3[static_cast<int64_t>(bid) * ld + q] = t;
    }
  }
  grid.sync();
  reduce_partials(P3, nb, ld, 4, h, red);
  const double nr = sqrt(h[0]);
  const bool a_ok = p.sa && h[1] > 0 && isfinite(h[1]);
  const bool b_ok = p.sb && h[2] > 0 && isfinite(h[2]);
  const bool c_ok = p.sc && p.use_c && !b_ok && h[3] > 0 && isfinite(h[3]);
  const double ca = a_ok ? 1.0 / sqrt(h[1]) : 0.0, cb = b_ok ? 1.0 / sqrt(h[2]) : 0.0;
  const double cc = c_ok ? 1.0 / sqrt(h[3]) : 0.0;
  const double cr = (a_ok || b_ok || c_ok ? 0.1 : 1.0) / nr;
  double part = 0.0;
  for (int k = c0 + tid; k < c1; k += kLzThreads) {
    double v = cr * splitmix_unit(static_cast<uint64_t>(k));
    if (a_ok) v = fma(ca, static_cast<double>(p.sa[k]), v);
    if (b_ok) v = fma(cb, static_cast<double>(p.sb[k]), v);
    if (c_ok) v = fma(cc, p.sc[k], v);
    wl[k - c0] = v;
    part = fma(v, v, part);
  }
  part = block_sum(part, red);
  if (tid == 0) P1[static_cast<int64_t>(bid) * ld] = part;
  grid.sync();
  reduce_partials(P1, nb, ld, 1, h, red);
  double nv = sqrt(h[0]);
  if (!(nv > 0.0) || !isfinite(nv)) {  // warm starts cancelled the random part: use it alone
    for (int k = c0 + tid; k < c1; k += kLzThreads)
      wl[k - c0] = splitmix_unit(static_cast<uint64_t>(k)) / nr;
    nv = 1.0;
  }
  for (int k = c0 + tid; k < c1; k += kLzThreads) p.V[k] = wl[k - c0] / nv;
  grid.sync();

  // ---- steps
  const double eps = Eps<double>::value;
  const double breakdown = 10.0 * sqrt(static_cast<double>(d)) * eps;
  double si_c = 0.0, tau = 0.0;
  if (OP == 1) {
    tau = p.si[0];
    si_c = 1.0 / (p.si[1] + tau);
  }
  double scale = 0.0, invb = 1.0;
  int m = 0, next_check = kLzFirstCheck, top_step = 0;
  bool invariant = false;
  // Acceptance (as the CPU kernels): a Ritz value is accepted when its bound meets tol at
  // two consecutive checks (a start nearly orthogonal to the wanted eigenvector makes
  // Lanczos settle on a neighbour first); shift-and-invert also needs the number of Ritz
  // values above the wanted one (mapped below the threshold) to be unchanged.
  bool top_ok_prev = false, bottom_ok_prev = false, si_ok_prev = false, bottom_accepted = false;
  int si_above_prev = -1;
  // Ski-rental for the bottom end: the relative bound of the previous check.
  double prev_log_rel = 0.0;
  int prev_rel_step = -1;
  for (int j = 0; j < steps; ++j) {
    const double* xs = j == 0 ? p.V : p.wbuf + static_cast<int64_t>((j - 1) & 1) * d;
    const double xsc = j == 0 ? 1.0 : invb;
    // w (chunk) = A v_j
    if (OP == 0) {
      block_rows(p.W, d, c0, c1, xs, xsc, [](int) { return 0; }, [d](int) { return d; }, wl);
    } else {
      block_rows(
          p.B, p.ldb, c0, c1, xs, xsc, [](int) { return 0; }, [](int r) { return r + 1; },
          p.ybuf + c0);  // y = X v (rows of this chunk)
      grid.sync();
      block_rows(
          p.B, p.ldb, c0, c1, p.ybuf, 1.0, [](int r) { return r; }, [d](int) { return d; },
          wl);  // w = X^T y
    }
    __syncthreads();
    // Pass 1.
    block_dots(p.V, d, c0, nc, wl, j + 1, P1 + static_cast<int64_t>(bid) * ld);
    grid.sync();
    reduce_partials(P1, nb, ld, j + 2, h, red);
    const double before = h[j + 1];
    double alpha = h[j];
    double hh = 0.0;
    for (int i = tid; i <= j; i += kLzThreads) hh = fma(h[i], h[i], hh);
    hh = block_sum(hh, red);
    block_update(p.V, d, c0, nc, h, j + 1, wl, red);
    double b2 = before - hh;  // ||w||^2 after pass 1 (Pythagoras; exact enough when > before/2)
    if (!(b2 > 0.5 * before)) {
      // Pass 2 (DGKS): also measures ||w||^2 after pass 1 exactly.
      block_dots(p.V, d, c0, nc, wl, j + 1, P2 + static_cast<int64_t>(bid) * ld);
      grid.sync();
      reduce_partials(P2, nb, ld, j + 2, h, red);
      const double after1 = h[j + 1];
      alpha += h[j];
      double hh2 = 0.0;
      for (int i = tid; i <= j; i += kLzThreads) hh2 = fma(h[i], h[i], hh2);
      hh2 = block_sum(hh2, red);
      block_update(p.V, d, c0, nc, h, j + 1, wl, red);
      b2 = after1 - hh2;
    }
    const double beta = sqrt(fmax(b2, 0.0));
    scale = fmax(scale, fmax(fabs(alpha), beta));
    if (tid == 0) {
      alpha_s[j] = alpha;
      beta_s[j] = beta;
      if (bid == 0) {
        p.alpha[j] = alpha;
        p.beta[j] = beta;
      }
    }
    m = j + 1;
    invariant = !(beta > breakdown * scale) || m == d;
    if (invariant || m == steps) break;
    invb = 1.0 / beta;
    double* wout = p.wbuf + static_cast<int64_t>(j & 1) * d;
    double* vout = p.V + static_cast<int64_t>(j + 1) * d;
    for (int k = tid; k < nc; k += kLzThreads) {
      wout[c0 + k] = wl[k];
      vout[c0 + k] = wl[k] * invb;
    }
    grid.sync();
    if (m < next_check) continue;
    next_check = max(m + 1, static_cast<int>(ceil(m * kLzCheckGrowth)));
    // ---- convergence check (every block, identical inputs -> identical decision)
    __syncthreads();
    const Analysis an = analyze(alpha_s, beta_s, m, false, p.mode, si_c, asc);
    bool stop = false;
    if (p.mode == kModeShiftInvert) {
      const bool ok = an.k >= 0 && an.theta_k > 0.0 &&
                      si_error(an.theta_k, an.k_bound, tau) <= p.tol &&
                      m - 1 - an.k == si_above_prev;
      stop = ok && si_ok_prev;
      si_ok_prev = ok;
      si_above_prev = an.k >= 0 ? m - 1 - an.k : -1;
    } else {
      const double top = an.top, bottom = an.bottom;
      if (top_step == 0) {
        const bool ok = an.top_bound <= p.tol * fabs(top);
        if (ok && top_ok_prev) top_step = m;
        top_ok_prev = ok;
      }
      if (top_step > 0 && p.mode == kModeTop) stop = true;
      if (top_step > 0 && p.mode == kModeExtreme) {
        const bool ok = bottom > p.rtol * top && an.bottom_bound <= p.tol * bottom;
        const bool accepted = ok && bottom_ok_prev;
        bottom_ok_prev = ok;
        if (accepted) {
          stop = true;  // the bottom converged in the same Krylov space
          bottom_accepted = true;
        } else if (bottom <= p.rtol * top || top * eps * kRoundingSlack > p.tol * bottom) {
          stop = true;  // plain Lanczos cannot deliver it: shift-and-invert takes over
        } else {
          // Ski-rental: spend at most kSkiRental of the shift-and-invert cost on the bottom
          // alone, and stop earlier when the decay of its relative bound since the previous
          // check predicts it will not converge in time (CPU: over kRateWindow steps).
          const int extra = m - top_step;
          const double allowance = kSkiRental * p.si_cost - extra;
          const double log_rel = log(fmax(an.bottom_bound, 1e-300) / bottom);
          if (allowance <= 0) {
            stop = true;
          } else if (prev_rel_step >= 0 && extra >= kRateWindow) {
            const double rate = (prev_log_rel - log_rel) / (m - prev_rel_step);
            const double needed = (log_rel - log(p.tol)) / fmax(rate, 1e-3);
            if (needed > 2 * allowance || m + needed > steps) stop = true;
          }
          prev_log_rel = log_rel;
          prev_rel_step = m;
        }
      }
    }
    if (stop) break;
  }
  if (bid == 0 && tid == 0) {
    p.res->m = m;
    p.res->invariant = invariant ? 1 : 0;
    p.res->top_step = top_step;
    p.res->bottom_ok = bottom_accepted ? 1 : 0;
  }
}

}  // namespace condnum::cuda
