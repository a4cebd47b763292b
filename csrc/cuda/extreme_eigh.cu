// extreme_eigh(S) and top_eigh(S) on the GPU: the extreme eigenpairs of a symmetric PSD S.
//
//   lam_max = max eig(S),  lam_min = min { lam in eig(S) : lam > rtol * lam_max }
//   S: (d, d) float32/float64 -> lam_min, lam_max: (), u_min, u_max: (d,) in S's dtype,
//   err: () float64, the larger relative error bound of the two eigenvalues.
// Same method and rules as csrc/cpu/extreme_eigh.cpp (the shared ones in solver_policy.h),
// with every decision taken on the device (no host synchronisation, no scalar copied back:
// the op can be captured in a CUDA graph). Kernels, all on the caller's stream:
//   1. symmetrize (symmetrize.cuh): W = (S + S^T) / 2, and the finiteness/symmetry
//      checks as device flags; W is divided by a power of two when max|S| is out of
//      range (policy::range_scale; the eigenvalues are scaled back at the end);
//   2. Lanczos on W (lanczos.cuh, persistent cooperative kernel; float64 basis) from the
//      warm starts (or the splitmix64 start): lam_max, and the bottom end while plain
//      Lanczos is predicted cheaper than step 4 and S is not too ill-conditioned;
//   3. select (one block): Ritz values, error bounds and vectors s of T (tridiagonal.cuh),
//      and the decisions: invalid input / indefinite / S = 0 / bottom from step 2 /
//      shift-and-invert needed, with tau0 = policy::cholesky_shift; the top pair accepted
//      by the Lanczos kernel is kept unless the final one is better (as on the CPU);
//      ritz + finalize: y = V^T s, unit, sign convention (largest |u_i| positive), outputs;
//   4. if needed, shift-and-invert in float64: Cholesky of W + tau I and X = L^{-1}
//      (cholesky.cuh, the CPU's shift ladder), Lanczos on X^T X = (W + tau I)^{-1}
//      (started from v0_min or the step-2 bottom vector), whose wanted Ritz value is the
//      largest one below 1 / (threshold + tau); lam_min = 1 / theta - tau, its error bound
//      floored at the rounding of the basis (policy::rounding_floor). Kernels of this
//      step read a device flag and return at once when step 3 did not ask for it.
//   5. the null-space retry, as on the CPU: when step 4's bound is limited by that floor
//      (a null space mapped to ~1 / tau) or it found nothing, step 4 again with the wide
//      shift policy::kWideShift * lam (lam from step 4, else step 2's estimate); its
//      answer replaces step 4's when it converged or has the smaller bound;
//   6. the restart check (csrc/cpu/extreme_eigh.cpp explains why): steps 2-5 again on the
//      same W, from the pseudo-random stream policy::kCheckStream alone (warm starts
//      ignored), into the workspace; the merge kernel keeps the first solve's answer unless the check's refutes
//      an end (policy::check_refutes_top, check_refutes_bottom, each bound err |lam|: err is
//      the larger of a solve's two relative bounds, so this refutes no more often than the
//      CPU's per-end bounds), and takes the check's pair for that end and the larger err.
//      The CPU kernels step a run and its check in lockstep (one pass over S for both);
//      here the check is a whole second solve: twice the work of one.
// Where the CPU kernel raises, the outputs are NaN instead (kernels.h); the CPU's
// LDL^T fallback for crowded spectra below the threshold is not implemented: such a
// solve ends at the step budget, with its error bound in err.
// Launch configuration: see each header; the plan (grid sizes, workspace layout) is a
// pure function of (dtype, d, num_iters) and the device's SM count and occupancy.
#include <algorithm>
#include <cmath>
#include <cstddef>

#include "cuda/cholesky.cuh"
#include "cuda/common.cuh"
#include "cuda/kernels.h"
#include "cuda/lanczos.cuh"
#include "cuda/symmetrize.cuh"
#include "cuda/tridiagonal.cuh"

namespace condnum::cuda {
namespace {

enum Status : int {
  kStInvalid = 1,      // S not finite or not symmetric: all outputs NaN
  kStIndefinite = 2,   // a clearly negative Ritz value: lam_min, u_min NaN
  kStZero = 4,         // lam_max <= 0: S = 0, both eigenvalues 0, u_min = u_max
  kStBottomPlain = 8,  // lam_min from plain Lanczos
};

// Shift-and-invert runs: the first (tau0) and the null-space retry (wide shift).
constexpr int kSiRuns = 2;

struct EighCtrl {
  // Step 1's, from S once per call: the first solve and its restart check share W.
  SymStats sym;
  double scale;  // S = scale * W (policy::range_scale)
  // Each solve's state (from lz on), reset before each of the two solves:
  LzResult lz[1 + kSiRuns];  // phase 1 (Lanczos on W), phases 2, 3 (shift-and-invert)
  CholState chol[kSiRuns];
  int si_run[kSiRuns];  // set by the Cholesky kernel on success
  int si_vec[kSiRuns];  // set by the select kernel when this run's lam_min is the answer
  int status;
  int pad_;
  double lam_max, err_max, lam_min, err_min;
  double lam_range;  // plain Lanczos' bottom Ritz value (the wide shift's fallback guess)
};

constexpr int kSelectThreads = 256;
constexpr int kFinalThreads = 256;

struct EighPlan {
  int d, steps, part_ld;
  int nb1, chunk1;  // Lanczos on W
  int nb2, chunk2;  // shift-and-invert Lanczos
  int dp, nt, nbc;  // Cholesky
  bool with_si;
  size_t smem1, smem2;
  size_t off_ctrl, off_W, off_V, off_alpha, off_beta, off_wbuf, off_ybuf, off_part, off_svec,
      off_work, off_y, off_ubot, off_ustart, off_A, off_B, off_check_lam, off_check_u,
      off_check_err, total;
};

template <typename T, int OP>
cudaError_t lanczos_grid(int d, int steps, int* nb, int* chunk, size_t* smem) {
  const int wanted = ceil_div(d, kLzWarps);  // one row per warp
  int grid = 0;
  CONDNUM_CUDA_TRY(cooperative_grid(lanczos_kernel<T, OP>, kLzThreads,
                                    lanczos_smem_bytes(steps, kLzMaxChunk), wanted, &grid));
  *nb = grid;
  *chunk = ceil_div(d, grid);
  if (*chunk > kLzMaxChunk) return cudaErrorInvalidValue;  // d too large for this GPU
  *smem = lanczos_smem_bytes(steps, *chunk);
  return cudaSuccess;
}

template <typename T>
cudaError_t make_plan(int64_t d64, int64_t num_iters, bool with_si, EighPlan* P) {
  if (d64 < 1 || num_iters < 1 || d64 > (int64_t{1} << 30)) return cudaErrorInvalidValue;
  const int d = static_cast<int>(d64);
  P->d = d;
  P->steps = static_cast<int>(std::min<int64_t>(num_iters, d64));
  if (P->steps > kMaxLanczosSteps) return cudaErrorInvalidValue;
  P->part_ld = P->steps + 4;
  P->with_si = with_si;
  CONDNUM_CUDA_TRY(lanczos_grid<T, 0>(d, P->steps, &P->nb1, &P->chunk1, &P->smem1));
  P->nb2 = P->chunk2 = 0;
  P->smem2 = 0;
  P->dp = P->nt = P->nbc = 0;
  if (with_si) {
    CONDNUM_CUDA_TRY(lanczos_grid<T, 1>(d, P->steps, &P->nb2, &P->chunk2, &P->smem2));
    P->nt = ceil_div(d, kTile);
    P->dp = P->nt * kTile;
    const int64_t tasks = std::max<int64_t>(1, static_cast<int64_t>(P->nt) * P->nt / 2 + P->nt);
    CONDNUM_CUDA_TRY(cooperative_grid(cholesky_inverse_kernel<T>, kCholThreads, 0,
                                      static_cast<int>(std::min<int64_t>(tasks, 1 << 20)),
                                      &P->nbc));
  }
  const size_t steps = P->steps, dd = d, nbmax = std::max(P->nb1, P->nb2);
  Carver c{nullptr};
  P->off_ctrl = c.used;
  c.take<EighCtrl>(1);
  P->off_W = c.used;
  c.take<T>(dd * dd);
  P->off_V = c.used;
  c.take<double>((steps + 1) * dd);
  P->off_alpha = c.used;
  c.take<double>(steps);
  P->off_beta = c.used;
  c.take<double>(steps);
  P->off_wbuf = c.used;
  c.take<double>(2 * dd);
  P->off_ybuf = c.used;
  c.take<double>(dd);
  P->off_part = c.used;
  c.take<double>(3 * nbmax * P->part_ld);
  P->off_svec = c.used;
  c.take<double>(2 * steps);
  P->off_work = c.used;
  c.take<double>(2 * 5 * steps);
  P->off_y = c.used;
  c.take<double>(2 * dd);
  P->off_ubot = c.used;
  c.take<double>(dd);
  P->off_ustart = c.used;
  if (with_si) c.take<double>(dd);
  P->off_A = c.used;
  if (with_si) c.take<double>(static_cast<size_t>(P->dp) * P->dp);
  P->off_B = c.used;
  if (with_si) c.take<double>(static_cast<size_t>(P->dp) * P->dp);
  P->off_check_lam = c.used;  // the restart check's answer: lam_min, lam_max ...
  c.take<T>(2);
  P->off_check_u = c.used;  // ... u_min, u_max ...
  c.take<T>(2 * dd);
  P->off_check_err = c.used;  // ... and err
  c.take<double>(1);
  P->total = c.used;
  return cudaSuccess;
}

template <typename P>
P* at_offset(void* ws, size_t off) {
  return reinterpret_cast<P*>(static_cast<char*>(ws) + off);
}

// ----------------------------------------------------------------------------- select

template <typename T>
struct SelectParams {
  const double* alpha;
  const double* beta;
  EighCtrl* ctrl;
  int phase;  // 0: top_eigh, 1: extreme_eigh on W, 2, 3: shift-and-invert (tau0, wide)
  int d;
  double rtol, tol;
  double* svec;  // (2, steps)
  double* work;  // (2, 5 steps)
  int steps;
};

// Phases 2, 3 (thread 0): the shift-and-invert run's answer and, after phase 2, whether
// the null-space retry is needed.
template <typename T>
__device__ void select_shift_invert(const SelectParams<T>& p, const Analysis& an, bool found,
                                    const Tri& tri) {
  EighCtrl* ctrl = p.ctrl;
  const int q = p.phase - 2;
  const CholState& st = ctrl->chol[q];
  const double tau = st.tau;
  const double lam = found ? 1.0 / an.theta_k - tau : quiet_nan<double>();
  const double err = found ? si_error(an, tau) : dbl_inf();
  bool use = found;
  if (q == 0) {
    const bool floor_limited =
        found && policy::shift_invert_error(an.floor, an.theta_k, lam) > p.tol;
    if (floor_limited || !found) {
      const double tau0 = st.tau0;
      const double guess = found && lam > policy::kWideMargin * tau0 ? lam : ctrl->lam_range;
      if (guess > policy::kWideMargin * tau0) {
        CholState& wide = ctrl->chol[1];
        wide.run = 1;
        wide.tau0 = policy::kWideShift * guess;
        wide.max_tau = policy::max_cholesky_shift(wide.tau0, ctrl->lam_max, Eps<T>::value);
        wide.threshold = st.threshold;
      }
    }
  } else {
    use = found && (ctrl->si_vec[0] == 0 || err <= p.tol || err < ctrl->err_min);
  }
  ctrl->si_vec[q] = use ? 1 : 0;
  if (!use) return;
  ctrl->lam_min = lam;
  ctrl->err_min = err;
  inverse_iteration(tri, an.theta_k, p.svec, p.work);
}

// One block: Ritz values, bounds, decisions, and the vectors s of T for the ritz kernel.
template <typename T>
__global__ void __launch_bounds__(kSelectThreads) select_kernel(SelectParams<T> p) {
  EighCtrl* ctrl = p.ctrl;
  const bool si = p.phase >= 2;
  const int q = p.phase - 2;
  if (si && ctrl->chol[q].run == 0) return;  // uniform
  extern __shared__ double smem[];
  __shared__ double small[64];
  __shared__ int ints[kSelectThreads + 8];
  const int tid = threadIdx.x;
  const LzResult res = ctrl->lz[si ? 1 + q : 0];
  if (si && ctrl->si_run[q] == 0) {  // every Cholesky attempt failed
    if (tid == 0) ctrl->si_vec[q] = 0;
    return;
  }
  const int m = res.m;
  double* a = smem;
  double* b = smem + p.steps;
  for (int i = tid; i < m; i += blockDim.x) {
    a[i] = p.alpha[i];
    b[i] = p.beta[i];
  }
  __syncthreads();
  const bool invariant = res.invariant != 0;
  AnalysisScratch asc{TriScratch{small, ints, small + 32, small + 36, ints + kSelectThreads},
                      small + 40, small + 48, ints + kSelectThreads + 1};
  const int mode = p.phase == 0 ? kModeTop : p.phase == 1 ? kModeExtreme : kModeShiftInvert;
  double c = 0.0;
  if (si) c = 1.0 / (ctrl->chol[q].threshold + ctrl->chol[q].tau);
  const Analysis an = analyze(a, b, m, mode, c, p.rtol, asc);
  const Tri tri = tri_setup(a, b, m, small);
  if (si) {
    if (tid == 0) select_shift_invert<T>(p, an, an.k >= 0 && an.theta_k > 0.0, tri);
    return;
  }
  // Phases 0 and 1. The final top pair is at least as close to lam_max (interlacing) but
  // may have a larger residual than the one accepted at step top_step: keep the accepted
  // one unless the final bound is no larger or the top Ritz value has since risen past the
  // accepted bound (then that one had settled on a lower eigenvalue).
  Analysis top_an = an;
  int m_top = m;
  if (res.top_step > 0 && res.top_step < m) {
    const Analysis acc = analyze(a, b, res.top_step, kModeTop, 0.0, 0.0, asc);
    if (!(an.top_bound <= acc.top_bound || an.top - acc.top > acc.top_bound)) {
      top_an = acc;
      m_top = res.top_step;
    }
  }
  const Tri tri_top = tri_setup(a, b, m_top, small);
  if (tid == 0) {
    const double top = top_an.top, bottom = an.bottom;
    int status = 0;
    ctrl->lam_max = top;
    ctrl->err_max = policy::relative(top_an.top_bound, top);
    ctrl->lam_range = bottom;
    if (!sym_stats_ok<T>(&ctrl->sym)) {
      status = kStInvalid;
    } else if (policy::proves_indefinite(an.lowest, top, Eps<T>::value)) {
      // Ritz values bound the spectrum from inside: a clearly negative one proves S indefinite.
      status = kStIndefinite;
    } else if (!(top > 0.0)) {
      status = kStZero;
    } else if (p.phase == 1) {
      const bool accepted = invariant || (res.bottom_ok && an.bottom_bound <= p.tol * bottom);
      if (an.bottom_index < m && bottom > p.rtol * top &&
          !policy::too_ill_conditioned_for_plain(top, bottom, Eps<double>::value, p.tol) &&
          accepted) {
        status = kStBottomPlain;
        ctrl->lam_min = bottom;
        ctrl->err_min = policy::relative(an.bottom_bound, bottom);
      } else {
        CholState& st = ctrl->chol[0];
        st.run = 1;
        st.tau0 = policy::cholesky_shift(p.rtol, p.d, top);
        st.max_tau = policy::max_cholesky_shift(st.tau0, top, Eps<T>::value);
        st.threshold = p.rtol * top;
      }
    }
    ctrl->status = status;
    inverse_iteration(tri_top, top, p.svec, p.work);
    for (int i = m_top; i < m; ++i) p.svec[i] = 0.0;  // y = V s over the first m_top vectors
  }
  if (p.phase == 1 && tid == kWarp)
    inverse_iteration(tri, an.bottom, p.svec + p.steps, p.work + 5 * p.steps);
}

// ----------------------------------------------------------------------------- ritz vectors

struct RitzParams {
  const double* V;
  const double* svec;  // (nslots, steps)
  const LzResult* res;
  const int* run;  // nullptr or run only when *run != 0
  double* y;       // (nslots, d)
  int d, steps;
};

// y[slot] = V^T s[slot] = sum_i s_i v_i. Grid (ceil(d / 32), nslots), block (32, 8):
// warps read 32 consecutive coordinates of a basis row; 8 row groups summed in order.
__global__ void __launch_bounds__(256) ritz_kernel(RitzParams p) {
  if (p.run != nullptr && *p.run == 0) return;
  __shared__ double part[8][33];
  const int tx = threadIdx.x, ty = threadIdx.y, slot = blockIdx.y;
  const int k = blockIdx.x * 32 + tx;
  const int m = p.res->m;
  const double* s = p.svec + static_cast<int64_t>(slot) * p.steps;
  double acc = 0.0;
  if (k < p.d)
    for (int i = ty; i < m; i += 8) acc = fma(s[i], p.V[static_cast<int64_t>(i) * p.d + k], acc);
  part[ty][tx] = acc;
  __syncthreads();
  if (ty == 0 && k < p.d) {
    double t = 0.0;
    for (int g = 0; g < 8; ++g) t += part[g][tx];
    p.y[static_cast<int64_t>(slot) * p.d + k] = t;
  }
}

// ----------------------------------------------------------------------------- finalize

template <typename T>
struct FinalParams {
  const double* y;  // (nslots, d)
  EighCtrl* ctrl;
  int phase, d;
  T* lam_min;
  T* lam_max;
  T* u_min;
  T* u_max;
  double* err;
  double* ubot;    // (d,) phase 1: unit bottom Ritz vector (start of shift-and-invert)
  double* ustart;  // (d,) phase 2: start of the null-space retry (its vector, else ubot)
};

// Writes sign * y / ||y|| (or NaN) to u; norm and first largest-|y_i| index by block
// reductions in a fixed order.
template <typename T>
__device__ void write_unit(const double* y, int d, bool nan, T* u, double* u64, double* red,
                           int* ired) {
  const int tid = threadIdx.x;
  double sq = 0.0, best = -1.0;
  int best_i = 0;
  for (int k = tid; k < d; k += blockDim.x) {
    const double v = y[k];
    sq = fma(v, v, sq);
    if (fabs(v) > best) {
      best = fabs(v);
      best_i = k;
    }
  }
  sq = block_sum(sq, red);
  // argmax, ties -> smallest index
  for (int o = kWarp / 2; o > 0; o >>= 1) {
    const double ob = __shfl_xor_sync(0xffffffffu, best, o);
    const int oi = __shfl_xor_sync(0xffffffffu, best_i, o);
    if (ob > best || (ob == best && oi < best_i)) {
      best = ob;
      best_i = oi;
    }
  }
  __syncthreads();
  if (tid % kWarp == 0) {
    red[tid / kWarp] = best;
    ired[tid / kWarp] = best_i;
  }
  __syncthreads();
  if (tid == 0) {
    double bb = red[0];
    int bi = ired[0];
    for (int w = 1; w < static_cast<int>(blockDim.x) / kWarp; ++w)
      if (red[w] > bb || (red[w] == bb && ired[w] < bi)) {
        bb = red[w];
        bi = ired[w];
      }
    ired[0] = bi;
  }
  __syncthreads();
  const double nrm = sqrt(sq);
  const double inv = nrm > 0.0 ? 1.0 / nrm : 0.0;
  const double sgn = y[ired[0]] < 0.0 ? -1.0 : 1.0;
  for (int k = tid; k < d; k += blockDim.x) {
    const double v = y[k] * inv;
    if (u64 != nullptr) u64[k] = v;
    if (u != nullptr) u[k] = nan ? quiet_nan<T>() : static_cast<T>(sgn * v);
  }
}

template <typename T>
__global__ void __launch_bounds__(kFinalThreads) finalize_kernel(FinalParams<T> p) {
  EighCtrl* ctrl = p.ctrl;
  if (p.phase >= 2 && ctrl->chol[p.phase - 2].run == 0) return;  // uniform
  if (p.phase == 3 && ctrl->si_vec[1] == 0) return;               // phase 2's answer stands
  __shared__ double red[32];
  __shared__ int ired[32];
  const int slot = blockIdx.x, tid = threadIdx.x;
  const int status = ctrl->status;
  const bool invalid = status & kStInvalid, indefinite = status & kStIndefinite;
  const bool zero = status & kStZero, plain = status & kStBottomPlain;
  const double* y = p.y + static_cast<int64_t>(slot) * p.d;
  const double nan64 = quiet_nan<double>();
  const double scale = ctrl->scale;
  if (p.phase >= 2) {
    const bool ok = p.phase == 3 || ctrl->si_vec[0] != 0;
    write_unit<T>(y, p.d, !ok, p.u_min, ok && p.phase == 2 ? p.ustart : nullptr, red, ired);
    if (!ok)
      for (int k = tid; k < p.d; k += blockDim.x) p.ustart[k] = p.ubot[k];
    if (tid == 0) {
      *p.lam_min = ok ? static_cast<T>(ctrl->lam_min * scale) : quiet_nan<T>();
      const double e = fmax(ctrl->err_max, ctrl->err_min);
      *p.err = ok ? policy::with_output_rounding(e, Eps<T>::value) : nan64;
    }
    return;
  }
  if (slot == 0) {  // the top vector
    const bool bad = invalid || (p.phase == 0 && indefinite);
    write_unit<T>(y, p.d, bad, p.u_max, nullptr, red, ired);
    if (zero && p.phase == 1) write_unit<T>(y, p.d, false, p.u_min, nullptr, red, ired);
    if (tid == 0) {
      *p.lam_max = bad ? quiet_nan<T>() : zero ? T(0) : static_cast<T>(ctrl->lam_max * scale);
      if (zero && p.phase == 1) *p.lam_min = T(0);
      double e = ctrl->err_max;
      if (bad)
        e = nan64;
      else if (zero)
        e = 0.0;
      else if (plain)
        e = fmax(ctrl->err_max, ctrl->err_min);
      *p.err = policy::with_output_rounding(e, Eps<T>::value);
    }
    return;
  }
  // slot 1 (phase 1): the bottom vector of the same Krylov space.
  const bool write_min = invalid || indefinite || plain;
  write_unit<T>(y, p.d, invalid || indefinite, write_min ? p.u_min : nullptr, p.ubot, red, ired);
  if (tid == 0 && write_min)
    *p.lam_min =
        plain && !invalid && !indefinite ? static_cast<T>(ctrl->lam_min * scale) : quiet_nan<T>();
}

// ----------------------------------------------------------------------------- driver

template <typename T, int OP>
cudaError_t launch_lanczos(const EighPlan& P, void* ws, int nb, int chunk, size_t smem, int mode,
                           const T* sa, const T* sb, const double* sc, int use_c, LzResult* res,
                           const int* run, const double* si, double tol, double rtol,
                           uint64_t start_stream, cudaStream_t stream) {
  LzParams<T> p{};
  p.d = P.d;
  p.steps = P.steps;
  p.chunk = chunk;
  p.part_ld = P.part_ld;
  p.W = at_offset<const T>(ws, P.off_W);
  p.B = P.with_si ? at_offset<const double>(ws, P.off_B) : nullptr;
  p.ldb = P.dp;
  p.V = at_offset<double>(ws, P.off_V);
  p.alpha = at_offset<double>(ws, P.off_alpha);
  p.beta = at_offset<double>(ws, P.off_beta);
  p.wbuf = at_offset<double>(ws, P.off_wbuf);
  p.ybuf = at_offset<double>(ws, P.off_ybuf);
  p.part = at_offset<double>(ws, P.off_part);
  p.res = res;
  p.run = run;
  p.sa = sa;
  p.sb = sb;
  p.sc = sc;
  p.use_c = use_c;
  p.stream = start_stream;
  p.mode = mode;
  p.tol = tol;
  p.rtol = rtol;
  // Cost of shift-and-invert in plain Lanczos steps (Cholesky + inverse ~ 2 grid syncs and
  // one tile factorisation per 32 columns, ~d / 16 steps; ~24 shift-and-invert steps at
  // ~1.3 plain steps each). To calibrate on the GPU.
  p.si_cost = 32.0 + P.d / 16.0;
  p.si = si;
  CONDNUM_CUDA_TRY(launch_cooperative(lanczos_kernel<T, OP>, nb, kLzThreads, smem, stream, p));
  return cudaSuccess;
}

// Steps 2-5 on the symmetrised W (step 1) into args' outputs, from the pseudo-random stream
// start_stream and args' warm starts.
template <typename T>
cudaError_t solve(const EighArgs& args, bool top_only, const EighPlan& P, void* ws,
                  uint64_t start_stream, cudaStream_t stream) {
  auto* ctrl = at_offset<EighCtrl>(ws, P.off_ctrl);
  const T* W = at_offset<const T>(ws, P.off_W);
  double* svec = at_offset<double>(ws, P.off_svec);
  double* work = at_offset<double>(ws, P.off_work);
  double* y = at_offset<double>(ws, P.off_y);
  double* ubot = at_offset<double>(ws, P.off_ubot);
  double* ustart = at_offset<double>(ws, P.off_ustart);
  const int d = P.d;
  const T* v0_min = static_cast<const T*>(args.v0_min);
  const T* v0_max = static_cast<const T*>(args.v0_max);

  constexpr size_t kSolveState = offsetof(EighCtrl, lz);
  CONDNUM_CUDA_TRY(cudaMemsetAsync(reinterpret_cast<char*>(ctrl) + kSolveState, 0,
                                   sizeof(EighCtrl) - kSolveState, stream));

  // Step 2: Lanczos on W.
  const int phase = top_only ? 0 : 1;
  CONDNUM_CUDA_TRY(launch_lanczos<T, 0>(P, ws, P.nb1, P.chunk1, P.smem1,
                                        top_only ? kModeTop : kModeExtreme, v0_max,
                                        top_only ? nullptr : v0_min, nullptr, 0, &ctrl->lz[0],
                                        nullptr, nullptr, args.tol, args.rtol, start_stream,
                                        stream));
  // Step 3: select, Ritz vectors, outputs.
  SelectParams<T> sp{at_offset<const double>(ws, P.off_alpha),
                     at_offset<const double>(ws, P.off_beta),
                     ctrl,
                     phase,
                     d,
                     args.rtol,
                     args.tol,
                     svec,
                     work,
                     P.steps};
  const size_t sel_smem = 2 * sizeof(double) * P.steps;
  select_kernel<T><<<1, kSelectThreads, sel_smem, stream>>>(sp);
  CONDNUM_CUDA_CHECK_LAUNCH();
  const int nslots = top_only ? 1 : 2;
  RitzParams rp{at_offset<const double>(ws, P.off_V), svec, &ctrl->lz[0], nullptr, y, d, P.steps};
  ritz_kernel<<<dim3(ceil_div(d, 32), nslots), dim3(32, 8), 0, stream>>>(rp);
  CONDNUM_CUDA_CHECK_LAUNCH();
  FinalParams<T> fp{y,
                    ctrl,
                    phase,
                    d,
                    static_cast<T*>(args.lam_min),
                    static_cast<T*>(args.lam_max),
                    static_cast<T*>(args.u_min),
                    static_cast<T*>(args.u_max),
                    args.err,
                    ubot,
                    ustart};
  finalize_kernel<T><<<nslots, kFinalThreads, 0, stream>>>(fp);
  CONDNUM_CUDA_CHECK_LAUNCH();
  if (top_only) return cudaSuccess;

  // Steps 4 and 5: shift-and-invert, then its null-space retry (every kernel returns at once
  // unless the previous select asked for it). Run q starts from v0_min or the step-2 bottom
  // vector (q = 0), or from run 0's vector (q = 1).
  for (int q = 0; q < kSiRuns; ++q) {
    CholParams<T> cp{W,
                     d,
                     P.dp,
                     P.nt,
                     at_offset<double>(ws, P.off_A),
                     at_offset<double>(ws, P.off_B),
                     &ctrl->chol[q],
                     &ctrl->si_run[q]};
    CONDNUM_CUDA_TRY(
        launch_cooperative(cholesky_inverse_kernel<T>, P.nbc, kCholThreads, 0, stream, cp));
    CONDNUM_CUDA_TRY(launch_lanczos<T, 1>(P, ws, P.nb2, P.chunk2, P.smem2, kModeShiftInvert,
                                          nullptr, q == 0 ? v0_min : nullptr,
                                          q == 0 ? ubot : ustart, 1, &ctrl->lz[1 + q],
                                          &ctrl->si_run[q], &ctrl->chol[q].tau, args.tol,
                                          args.rtol, start_stream, stream));
    sp.phase = 2 + q;
    select_kernel<T><<<1, kSelectThreads, sel_smem, stream>>>(sp);
    CONDNUM_CUDA_CHECK_LAUNCH();
    RitzParams rp2{at_offset<const double>(ws, P.off_V), svec, &ctrl->lz[1 + q], &ctrl->si_vec[q],
                   y, d, P.steps};
    ritz_kernel<<<dim3(ceil_div(d, 32), 1), dim3(32, 8), 0, stream>>>(rp2);
    CONDNUM_CUDA_CHECK_LAUNCH();
    fp.phase = 2 + q;
    finalize_kernel<T><<<1, kFinalThreads, 0, stream>>>(fp);
    CONDNUM_CUDA_CHECK_LAUNCH();
  }
  return cudaSuccess;
}

// ----------------------------------------------------------------------------- restart check

template <typename T>
struct MergeParams {
  const T* check_lam;  // (2,): lam_min, lam_max
  const T* check_u;    // (2, d): u_min, u_max
  const double* check_err;
  T* lam_min;  // the first solve's outputs, overwritten where the check refutes them;
  T* lam_max;  // lam_min and u_min are nullptr for top_eigh
  T* u_min;
  T* u_max;
  double* err;
  int d;
  double rtol;
};

// Step 6 (one block): the first solve's answer, or the check's for an end it refutes.
template <typename T>
__global__ void __launch_bounds__(kFinalThreads) merge_check_kernel(MergeParams<T> p) {
  __shared__ int take[2];  // the check's top, its bottom
  if (threadIdx.x == 0) {
    const double e1 = *p.err, e2 = *p.check_err;
    const double top1 = static_cast<double>(*p.lam_max);
    const double top2 = static_cast<double>(p.check_lam[1]);
    const bool top = policy::check_refutes_top(top1, e1 * fabs(top1), top2);
    bool bottom = false;
    if (p.lam_min != nullptr) {
      const double bot1 = static_cast<double>(*p.lam_min);
      const double bot2 = static_cast<double>(p.check_lam[0]);
      bottom = policy::check_refutes_bottom(bot1, e1 * fabs(bot1), bot2, e2 * fabs(bot2), top,
                                            p.rtol * top2);
      if (bottom) *p.lam_min = p.check_lam[0];
    }
    if (top) *p.lam_max = p.check_lam[1];
    if (top || bottom) *p.err = fmax(e1, e2);
    take[0] = top;
    take[1] = bottom;
  }
  __syncthreads();
  for (int k = threadIdx.x; k < p.d; k += blockDim.x) {
    if (take[0]) p.u_max[k] = p.check_u[p.d + k];
    if (take[1]) p.u_min[k] = p.check_u[k];
  }
}

template <typename T>
cudaError_t eigh_impl(const EighArgs& args, bool top_only, void* ws, size_t ws_bytes,
                      cudaStream_t stream) {
  EighPlan P;
  CONDNUM_CUDA_TRY(make_plan<T>(args.d, args.num_iters, !top_only, &P));
  if (ws == nullptr || ws_bytes < P.total) return cudaErrorInvalidValue;
  // Step 1, once for both solves.
  auto* ctrl = at_offset<EighCtrl>(ws, P.off_ctrl);
  T* W = at_offset<T>(ws, P.off_W);
  CONDNUM_CUDA_TRY(cudaMemsetAsync(ctrl, 0, sizeof(EighCtrl), stream));
  CONDNUM_CUDA_TRY(
      launch_symmetrize<T>(static_cast<const T*>(args.S), W, P.d, &ctrl->sym, stream));
  CONDNUM_CUDA_TRY(launch_range_scale<T>(W, P.d, &ctrl->sym, &ctrl->scale, stream));
  CONDNUM_CUDA_TRY(solve<T>(args, top_only, P, ws, 0, stream));
  T* check_lam = at_offset<T>(ws, P.off_check_lam);
  T* check_u = at_offset<T>(ws, P.off_check_u);
  auto* check_err = at_offset<double>(ws, P.off_check_err);
  EighArgs check = args;
  check.v0_min = check.v0_max = nullptr;
  check.lam_min = top_only ? nullptr : check_lam;
  check.lam_max = check_lam + 1;
  check.u_min = top_only ? nullptr : check_u;
  check.u_max = check_u + P.d;
  check.err = check_err;
  CONDNUM_CUDA_TRY(solve<T>(check, top_only, P, ws, policy::kCheckStream, stream));
  MergeParams<T> mp{check_lam,
                    check_u,
                    check_err,
                    static_cast<T*>(args.lam_min),
                    static_cast<T*>(args.lam_max),
                    static_cast<T*>(args.u_min),
                    static_cast<T*>(args.u_max),
                    args.err,
                    P.d,
                    args.rtol};
  merge_check_kernel<T><<<1, kFinalThreads, 0, stream>>>(mp);
  CONDNUM_CUDA_CHECK_LAUNCH();
  return cudaSuccess;
}

template <typename T>
size_t workspace_impl(int64_t d, int64_t num_iters, bool with_si, cudaError_t* error) {
  EighPlan P;
  const cudaError_t e = make_plan<T>(d, num_iters, with_si, &P);
  if (error != nullptr) *error = e;
  return e == cudaSuccess ? P.total : 0;
}

}  // namespace

size_t extreme_eigh_workspace_bytes(Dtype dt, int64_t d, int64_t num_iters, cudaError_t* error) {
  if (dt == Dtype::kFloat32) return workspace_impl<float>(d, num_iters, true, error);
  if (dt == Dtype::kFloat64) return workspace_impl<double>(d, num_iters, true, error);
  if (error != nullptr) *error = cudaErrorInvalidValue;
  return 0;
}

size_t top_eigh_workspace_bytes(Dtype dt, int64_t d, int64_t num_iters, cudaError_t* error) {
  if (dt == Dtype::kFloat32) return workspace_impl<float>(d, num_iters, false, error);
  if (dt == Dtype::kFloat64) return workspace_impl<double>(d, num_iters, false, error);
  if (error != nullptr) *error = cudaErrorInvalidValue;
  return 0;
}

cudaError_t extreme_eigh(const EighArgs& args, void* ws, size_t ws_bytes, cudaStream_t stream) {
  if (args.dtype == Dtype::kFloat32) return eigh_impl<float>(args, false, ws, ws_bytes, stream);
  if (args.dtype == Dtype::kFloat64) return eigh_impl<double>(args, false, ws, ws_bytes, stream);
  return cudaErrorInvalidValue;
}

cudaError_t top_eigh(const EighArgs& args, void* ws, size_t ws_bytes, cudaStream_t stream) {
  if (args.dtype == Dtype::kFloat32) return eigh_impl<float>(args, true, ws, ws_bytes, stream);
  if (args.dtype == Dtype::kFloat64) return eigh_impl<double>(args, true, ws, ws_bytes, stream);
  return cudaErrorInvalidValue;
}

}  // namespace condnum::cuda
