// Lanczos with full reorthogonalisation as one persistent cooperative kernel.
//
// Math (as csrc/cpu/lanczos.h): from a unit v_0, w = A v_j is orthogonalised against the
// whole basis V = [v_0 .. v_j] by classical Gram-Schmidt, h = V w, w -= V^T h, with a
// second pass when the first removed more than half of ||w||^2 (DGKS, "twice is enough");
// alpha_j = h_j (+ the second pass's h_j), beta_j = ||w||, v_{j+1} = w / beta_j. T_m =
// tridiag(alpha, beta) gives the Ritz pairs (tridiagonal.cuh). Breakdown (beta_j <=
// kBreakdown sqrt(d) eps64 scale, or m = d; solver_policy.h) means the Krylov space is
// A-invariant: stop (the pairs' residuals are then below the breakdown level).
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
// 6, 8, 10, ... (x1.25), and all stop together with the CPU kernel's rules
// (solver_policy.h): a value is accepted when r <= tol |lam| at two consecutive checks
// (for the bottom end and shift-and-invert, with the same target index at both); the
// bottom end is the smallest Ritz value above rtol * lam_max and gets a ski-rental budget
// against shift-and-invert, its rate measured over at least kRateWindow steps (the nearest
// earlier check that far back); shift-and-invert's bound has the rounding floor. So the
// work is a fixed budget of at most min(num_iters, d) steps with a device-side early exit:
// no host synchronisation. (The CPU checks after every step; checking on a schedule costs
// up to 25% extra steps but one check costs about one step.)
// Expected bottleneck: grid-sync latency (~1-2 us each) for d <~ 2048; the matrix-vector
// product (d^2 reads of S per step, from L2 when S fits) above. To tune on the GPU:
// threads per block / blocks per grid, the check schedule, vectorised loads.
#pragma once

#include "cuda/common.cuh"
#include "cuda/kernels.h"
#include "cuda/tridiagonal.cuh"
#include "solver_policy.h"

namespace condnum::cuda {

namespace cg = cooperative_groups;

constexpr int kLzThreads = 512;
constexpr int kLzWarps = kLzThreads / kWarp;
constexpr int kLzMaxChunk = 1024;  // coordinates per block (shared-memory bound)
constexpr double kLzCheckGrowth = 1.25;
// Checks of the bottom end remembered for the ski-rental rate: enough to reach back
// policy::kRateWindow steps (checks are at least one step apart).
constexpr int kRateHistory = static_cast<int>(policy::kRateWindow) + 2;

enum LanczosMode : int {
  kModeTop = 0,          // top eigenpair of S
  kModeExtreme = 1,      // top of S, and the bottom while plain Lanczos is worth it
  kModeShiftInvert = 2,  // largest Ritz value of (S + tau I)^{-1} below 1 / (threshold + tau)
};

// Results of one Lanczos run, written by block 0.
struct LzResult {
  int m;          // steps taken (size of T)
  int invariant;  // 1: breakdown, the Ritz residuals are below its level
  int top_step;   // step at which lam_max was accepted (0: never)
  int bottom_ok;  // kModeExtreme: stopped because the bottom Ritz value was accepted
  int si_ok;      // kModeShiftInvert: stopped because the wanted Ritz value was accepted
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
  // use_c), r = splitmix64 vector of stream `stream`, rho = policy::kStartRandomWeight when
  // any warm start is used, else 1.
  // A zero or non-finite a / b is ignored.
  const T* sa;
  const T* sb;
  const double* sc;
  int use_c;
  uint64_t stream;
  // Convergence.
  int mode;
  double tol, rtol, si_cost;
  const double* si;  // kModeShiftInvert: {tau, threshold} (device)
};

// ----------------------------------------------------------------------------- analysis

// What the convergence checks and the final extraction need from T_m. Error bounds are
// residuals r = ||A y - theta y|| = b_m |s[m-1]| (some eigenvalue lies within r of theta;
// ARPACK's test, as the CPU kernels; b_m is below the breakdown level, not 0, when the
// Krylov space is invariant); on S itself (kModeTop, kModeExtreme) at least the rounding
// of its float64 products, policy::product_floor.
struct Analysis {
  double top, top_bound;  // theta_{m-1} and its error bound
  double lowest;          // theta_0
  int bottom_index;       // kModeExtreme: #{theta < rtol top} (m: none above), else 0
  double bottom, bottom_bound;  // theta_{bottom_index} (when < m) and its error bound
  int k;                        // kModeShiftInvert: wanted index (-1: none)
  double theta_k, k_bound;      // its Ritz value and residual
  double floor;                 // kModeShiftInvert: policy::rounding_floor of T's Ritz values
};

struct AnalysisScratch {
  TriScratch tri;
  double* vals;  // >= 8
  double* misc;  // >= 8
  int* ints;     // >= 4
};

// Block-wide. a, b: alpha, beta (b[m - 1] = residual coupling, below the breakdown level
// when the space is invariant: it still counts).
// Targets: theta_{m-1}, theta_0 and (kModeExtreme, rtol > 0) the smallest Ritz value above
// rtol theta_{m-1}; or (kModeShiftInvert) theta_k, k = #{theta < si_c} - 1, with theta_0
// and theta_{m-1} for the rounding floor.
__device__ __noinline__ Analysis analyze(const double* a, const double* b, int m, int mode,
                                         double si_c, double rtol, AnalysisScratch sc) {
  const Tri T = tri_setup(a, b, m, sc.tri.red);
  const int tid = threadIdx.x;
  const double beta_m = b[m - 1];
  const double inv_s = 1.0 / T.s;
  Analysis out{};
  int G;
  if (mode == kModeShiftInvert) {
    if (tid == 0) sc.ints[0] = sturm_count(T, T.s * si_c) - 1;
    __syncthreads();
    out.k = sc.ints[0];
    __syncthreads();
    if (tid == 0) {
      sc.ints[0] = max(out.k, 0);
      sc.ints[1] = 0;
      sc.ints[2] = m - 1;
    }
    G = 3;
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
  if (tid % kWarp == 0 && tid / kWarp < 2)
    sc.misc[tid / kWarp] = beta_m * sqrt(last_component_sq(T, sc.vals[tid / kWarp]));
  __syncthreads();
  if (mode == kModeShiftInvert) {
    out.theta_k = sc.vals[0] * inv_s;
    out.k_bound = sc.misc[0];
    out.lowest = sc.vals[1] * inv_s;
    out.top = sc.vals[2] * inv_s;
    out.floor = policy::rounding_floor(out.lowest, out.top);
    __syncthreads();
    return out;
  }
  out.top = sc.vals[0] * inv_s;
  out.top_bound = sc.misc[0];
  out.lowest = out.bottom = sc.vals[1] * inv_s;
  out.bottom_bound = sc.misc[1];
  out.bottom_index = 0;
  __syncthreads();
  if (mode == kModeExtreme && rtol > 0.0) {
    // Ritz values below the threshold approximate the null space of a rank-deficient S.
    if (tid == 0) sc.ints[0] = sturm_count(T, rtol * sc.vals[0]);
    __syncthreads();
    const int ib = sc.ints[0];
    out.bottom_index = ib;
    if (ib > 0 && ib < m) {
      tri_eigenvalues(T, sc.ints, 1, sc.vals + 4, sc.tri);
      if (tid == 0) sc.misc[2] = beta_m * sqrt(last_component_sq(T, sc.vals[4]));
      __syncthreads();
      out.bottom = sc.vals[4] * inv_s;
      out.bottom_bound = sc.misc[2];
    }
    __syncthreads();
  }
  const double floor =
      policy::product_floor(fmax(fabs(out.lowest), fabs(out.top)), Eps<double>::value);
  out.top_bound = fmax(out.top_bound, floor);
  out.bottom_bound = fmax(out.bottom_bound, floor);
  return out;
}

// Relative error bound of lam = 1 / theta - tau (shift-and-invert), with the rounding floor.
__device__ inline double si_error(const Analysis& an, double tau) {
  return policy::shift_invert_error(fmax(an.k_bound, an.floor), an.theta_k,
                                    1.0 / an.theta_k - tau);
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
      const double r = splitmix_unit(static_cast<uint64_t>(k), p.stream);
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
  const double cr = (a_ok || b_ok || c_ok ? policy::kStartRandomWeight : 1.0) / nr;
  double part = 0.0;
  for (int k = c0 + tid; k < c1; k += kLzThreads) {
    double v = cr * splitmix_unit(static_cast<uint64_t>(k), p.stream);
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
      wl[k - c0] = splitmix_unit(static_cast<uint64_t>(k), p.stream) / nr;
    nv = 1.0;
  }
  for (int k = c0 + tid; k < c1; k += kLzThreads) p.V[k] = wl[k - c0] / nv;
  grid.sync();

  // ---- steps
  // The basis arithmetic is float64 for both dtypes: its eps sets the breakdown level and
  // the rounding of S v that limits plain Lanczos at the bottom end.
  const double eps = Eps<double>::value;
  double si_c = 0.0, tau = 0.0;
  if (OP == 1) {
    tau = p.si[0];
    si_c = 1.0 / (p.si[1] + tau);
  }
  double scale = 0.0, invb = 1.0;
  int m = 0, next_check = static_cast<int>(policy::kFirstCheck), top_step = 0, check = 0;
  bool invariant = false;
  // Acceptance at two consecutive checks (policy::Acceptance); the bottom end and
  // shift-and-invert also need the same target index at both.
  policy::Acceptance top_ok, bottom_ok, si_ok;
  bool bottom_accepted = false, si_accepted = false;
  int bottom_index = 0, si_above_prev = -1;
  // Ski-rental for the bottom end: (step, log relative bound) of its recent checks.
  int rel_step[kRateHistory];
  double rel_log[kRateHistory];
  int n_rel = 0;
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
    if (!(b2 > policy::kSecondPass * before)) {
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
    invariant = isnan(beta) || policy::breakdown(beta, d, eps, scale) || m == d;
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
    ++check;
    const Analysis an = analyze(alpha_s, beta_s, m, p.mode, si_c, p.rtol, asc);
    bool stop = false;
    if (p.mode == kModeShiftInvert) {
      const bool found = an.k >= 0 && an.theta_k > 0.0;
      const bool same = found && m - 1 - an.k == si_above_prev;
      si_above_prev = found ? m - 1 - an.k : -1;
      stop = si_ok(found && same && si_error(an, tau) <= p.tol, check);
      si_accepted = stop;
    } else {
      const double top = an.top;
      if (top_step == 0 && top_ok(an.top_bound <= p.tol * fabs(top), check)) top_step = m;
      if (top_step > 0 && p.mode == kModeTop) stop = true;
      if (top_step > 0 && p.mode == kModeExtreme) {
        const int ib = an.bottom_index;
        const double bottom = an.bottom;
        const bool same_target = ib == bottom_index;
        bottom_index = ib;
        if (ib >= m || bottom <= p.rtol * top ||
            policy::too_ill_conditioned_for_plain(top, bottom, eps, p.tol)) {
          stop = true;  // plain Lanczos cannot deliver it: shift-and-invert takes over
        } else if (bottom_ok(an.bottom_bound <= p.tol * bottom && same_target, check)) {
          stop = true;  // the bottom converged in the same Krylov space
          bottom_accepted = true;
        } else {
          // Ski-rental against shift-and-invert, the rate measured from the nearest earlier
          // check at least kRateWindow steps back.
          const int extra = m - top_step;
          const double log_rel = policy::log_relative_bound(an.bottom_bound, bottom);
          int back = 0;
          double log_back = log_rel;
          const int oldest = max(0, n_rel - kRateHistory);
          for (int q = n_rel - 1; extra >= policy::kRateWindow && q >= oldest; --q) {
            const int at = q % kRateHistory;
            if (m - rel_step[at] >= policy::kRateWindow) {
              back = m - rel_step[at];
              log_back = rel_log[at];
              break;
            }
          }
          stop = policy::ski_rental_gives_up(extra, p.si_cost, log_rel, log_back, back, p.tol, m,
                                             steps);
          rel_step[n_rel % kRateHistory] = m;
          rel_log[n_rel % kRateHistory] = log_rel;
          ++n_rel;
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
    p.res->si_ok = si_accepted ? 1 : 0;
  }
}

}  // namespace condnum::cuda
