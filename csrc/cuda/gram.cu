// gram(Z) = Z^T Z and covariance(theta, K) = theta^T K theta on the GPU.
//
// Both reduce to one tiled kernel computing C = A^T B for row-major A: (K, M), B: (K, N),
//   C[i][j] = sum_k A[k][i] B[k][j],
// i.e. both operands are read "k-major", which is exactly the layout a register-blocked
// outer-product GEMM wants in shared memory (no transposition needed):
//   gram:        A = B = Z (n, d)                     -> S (d, d), upper tiles, mirrored
//   covariance:  P = Ks theta = A^T B, A = Ks (D, D), B = theta (D, d)   (all tiles)
//                S = theta^T P,        A = theta, B = P                  (upper tiles)
// with Ks = (K + K^T) / 2 (symmetrize.cuh). Flops: gram n d^2 (half a GEMM);
// covariance 2 D^2 d + D d^2.
//
// Parallelisation (classic SIMT SGEMM/DGEMM structure):
//   - one thread block per BM x BN output tile (float: 128 x 128, double: 64 x 64),
//     256 threads in a 16 x 16 grid, each owning a TM x TN = (2 HM) x (2 HM) register
//     micro-tile split into two halves per dimension (rows ty*HM + r and BM/2 + ty*HM + r)
//     so that the vectorised shared-memory reads of a warp are contiguous;
//   - K is walked in slabs of BK = 8 rows, double-buffered in shared memory (the next
//     slab is fetched into registers while the current one is multiplied);
//   - symmetric products launch only tiles bi <= bj (nb (nb + 1) / 2 of nb^2) and write
//     each value twice (S[i][j] and S[j][i]), so S is exactly symmetric;
//   - small d with large K (e.g. d = 256, n = 4096: 3 tiles) would leave the GPU idle, so
//     K is split over up to `nsplit` blocks per tile (split-K) whose partial tiles are
//     summed in a fixed order by a second kernel (deterministic, no atomics), which also
//     does the mirroring through a shared-memory transpose.
// Accumulation: float32 FMA for float32 and the half types (converted when staged to
// shared memory), float64 for float64. TF32 tensor cores are never used.
// Expected bottleneck: FMA issue rate / shared-memory bandwidth of the inner product;
// to tune on the GPU: tile sizes, split-K target, vectorised global loads, and an
// FP64 tensor-core (DMMA) / BF16 tensor-core (mma.sync) path for float64 / half inputs.
#include <algorithm>
#include <type_traits>

#include "cuda/common.cuh"
#include "cuda/kernels.h"
#include "cuda/symmetrize.cuh"

namespace condnum::cuda {
namespace {

template <typename Acc>
struct TileCfg;
template <>
struct TileCfg<float> {
  static constexpr int BM = 128, BK = 8, HM = 4;  // BN = BM, micro-tile 8 x 8
};
template <>
struct TileCfg<double> {
  static constexpr int BM = 64, BK = 8, HM = 2;  // micro-tile 4 x 4
};

constexpr int kGemmThreads = 256;    // 16 x 16
constexpr int64_t kMinSplitK = 256;  // fewest K rows per split-K block

template <typename In, typename Acc>
struct AtbParams {
  const In* A;
  const In* B;
  int64_t K, M, N, lda, ldb;
  Acc* C;          // (M, N), ldc = N
  Acc* partial;    // nsplit * ntiles * BM * BM when nsplit > 1
  int64_t kchunk;  // K rows per split (multiple of BK)
  int nsplit;
  int ntiles;
  int tiles_m, tiles_n;
  int upper;  // 1: symmetric product, upper tiles only, mirrored (M == N)
};

// Tile (bi, bj) of linear index t: row-major over the upper triangle when `upper`.
__device__ __forceinline__ void tile_coords(int t, int upper, int tiles_m, int tiles_n, int& bi,
                                            int& bj) {
  if (!upper) {
    bi = t / tiles_n;
    bj = t % tiles_n;
    return;
  }
  int row = 0, len = tiles_n;
  while (t >= len) {
    t -= len;
    ++row;
    --len;
  }
  bi = row;
  bj = row + t;
}

template <typename In, typename Acc>
__global__ void __launch_bounds__(kGemmThreads, 2) atb_kernel(AtbParams<In, Acc> p) {
  constexpr int BM = TileCfg<Acc>::BM, BK = TileCfg<Acc>::BK, HM = TileCfg<Acc>::HM;
  constexpr int TM = 2 * HM, HALF = BM / 2;
  constexpr int LOADS = BK * BM / kGemmThreads;  // elements per thread per operand slab
  static_assert(HALF == 16 * HM, "16 x 16 threads cover the tile");
  static_assert(LOADS * kGemmThreads == BK * BM, "slab divides evenly");
  static_assert(kGemmThreads % BM == 0, "whole rows per load pass");
  using Vec = typename std::conditional<sizeof(Acc) == 4, float4, double2>::type;
  static_assert(sizeof(Vec) == HM * sizeof(Acc), "one vector per half micro-row");

  __shared__ __align__(16) Acc As[2][BK][BM];
  __shared__ __align__(16) Acc Bs[2][BK][BM];
  __shared__ Acc band_buf[32][BM + 1];  // epilogue band (padded: conflict-free transposed reads)

  int bi, bj;
  tile_coords(blockIdx.x, p.upper, p.tiles_m, p.tiles_n, bi, bj);
  const int64_t i0 = static_cast<int64_t>(bi) * BM, j0 = static_cast<int64_t>(bj) * BM;
  const int64_t k_begin = static_cast<int64_t>(blockIdx.y) * p.kchunk;
  const int64_t k_end = min(p.K, k_begin + p.kchunk);
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;

  Acc acc[TM][TM];
#pragma unroll
  for (int r = 0; r < TM; ++r)
#pragma unroll
    for (int c = 0; c < TM; ++c) acc[r][c] = Acc(0);

  // Slab loads: thread tid reads column `lc` of rows lk0 + q * RP (q < LOADS), so a warp
  // reads 32 consecutive elements of one row (coalesced). Row pointers advance by BK
  // rows per slab; bounds use 32-bit offsets relative to k_begin (kchunk < 2^31).
  constexpr int RP = kGemmThreads / BM;  // rows per pass
  const int lc = tid % BM, lk0 = tid / BM;
  const bool a_in = i0 + lc < p.M, b_in = j0 + lc < p.N;
  const int klen = static_cast<int>(k_end - k_begin);
  const In* pa = p.A + (k_begin + lk0) * p.lda + (a_in ? i0 + lc : 0);
  const In* pb = p.B + (k_begin + lk0) * p.ldb + (b_in ? j0 + lc : 0);
  const int64_t a_pass = RP * p.lda, b_pass = RP * p.ldb;
  const int64_t a_slab = BK * p.lda, b_slab = BK * p.ldb;
  Acc ra[LOADS], rb[LOADS];
  auto fetch = [&](int k0) {  // k0: slab start relative to k_begin
#pragma unroll
    for (int q = 0; q < LOADS; ++q) {
      const bool kin = k0 + lk0 + q * RP < klen;
      ra[q] = (kin && a_in) ? to_acc<Acc>(pa[q * a_pass]) : Acc(0);
      rb[q] = (kin && b_in) ? to_acc<Acc>(pb[q * b_pass]) : Acc(0);
    }
    pa += a_slab;
    pb += b_slab;
  };
  auto stage = [&](int buf) {
#pragma unroll
    for (int q = 0; q < LOADS; ++q) {
      As[buf][lk0 + q * RP][lc] = ra[q];
      Bs[buf][lk0 + q * RP][lc] = rb[q];
    }
  };

  const int nslabs = klen > 0 ? (klen + BK - 1) / BK : 0;
  if (nslabs > 0) {
    fetch(0);
    stage(0);
  }
  __syncthreads();
  for (int s = 0; s < nslabs; ++s) {
    const int buf = s & 1;
    const bool more = s + 1 < nslabs;
    if (more) fetch((s + 1) * BK);
    // Unrolled by 2 only: a full unroll hoists more shared-memory loads than 128
    // registers (2 blocks per SM) can hold and spills.
#pragma unroll 2
    for (int kk = 0; kk < BK; ++kk) {
      Acc a[TM], b[TM];
      const Vec a0 = *reinterpret_cast<const Vec*>(&As[buf][kk][ty * HM]);
      const Vec a1 = *reinterpret_cast<const Vec*>(&As[buf][kk][HALF + ty * HM]);
      const Vec b0 = *reinterpret_cast<const Vec*>(&Bs[buf][kk][tx * HM]);
      const Vec b1 = *reinterpret_cast<const Vec*>(&Bs[buf][kk][HALF + tx * HM]);
      const Acc* pa0 = reinterpret_cast<const Acc*>(&a0);
      const Acc* pa1 = reinterpret_cast<const Acc*>(&a1);
      const Acc* pb0 = reinterpret_cast<const Acc*>(&b0);
      const Acc* pb1 = reinterpret_cast<const Acc*>(&b1);
#pragma unroll
      for (int r = 0; r < HM; ++r) {
        a[r] = pa0[r];
        a[HM + r] = pa1[r];
        b[r] = pb0[r];
        b[HM + r] = pb1[r];
      }
#pragma unroll
      for (int r = 0; r < TM; ++r)
#pragma unroll
        for (int c = 0; c < TM; ++c) acc[r][c] = fma(a[r], b[c], acc[r][c]);
    }
    if (more) stage(buf ^ 1);
    __syncthreads();
  }

  // Epilogue, one 32-row band of the tile at a time through a padded shared-memory
  // stage: the direct rows, the mirrored columns (upper mode) and split-K partial tiles
  // are all written coalesced, and the register pressure stays that of the main loop.
  constexpr int BANDS = BM / 32, BANDS_PER_HALF = HALF / 32;
  static_assert(32 % HM == 0, "a thread's rows of one half lie in one band");
  Acc* partial_tile =
      p.nsplit > 1
          ? p.partial + (static_cast<int64_t>(blockIdx.y) * p.ntiles + blockIdx.x) * BM * BM
          : nullptr;
#pragma unroll
  for (int band = 0; band < BANDS; ++band) {
    const int h = band / BANDS_PER_HALF;             // which half of the micro-tile rows
    const int lr0 = h * HALF + ty * HM - 32 * band;  // this thread's first row in the band
    if (lr0 >= 0 && lr0 < 32) {
#pragma unroll
      for (int r = 0; r < HM; ++r)
#pragma unroll
        for (int c = 0; c < TM; ++c) {
          const int lc = c < HM ? tx * HM + c : HALF + tx * HM + (c - HM);
          band_buf[lr0 + r][lc] = acc[h * HM + r][c];
        }
    }
    __syncthreads();
    const int64_t ib = i0 + 32 * band;
    if (partial_tile != nullptr) {
      for (int e = tid; e < 32 * BM; e += kGemmThreads)
        partial_tile[(32 * band + e / BM) * BM + e % BM] = band_buf[e / BM][e % BM];
    } else {
      for (int e = tid; e < 32 * BM; e += kGemmThreads) {
        const int lr = e / BM, lc = e % BM;
        const int64_t i = ib + lr, j = j0 + lc;
        if (i < p.M && j < p.N && (!p.upper || bi < bj || i <= j))
          p.C[i * p.N + j] = band_buf[lr][lc];
      }
      if (p.upper) {
        for (int e = tid; e < 32 * BM; e += kGemmThreads) {
          const int lc = e / 32, lr = e % 32;
          const int64_t i = ib + lr, j = j0 + lc;
          if (i < p.M && j < p.N && (bi < bj || i <= j)) p.C[j * p.N + i] = band_buf[lr][lc];
        }
      }
    }
    __syncthreads();
  }
}

// Sums the nsplit partial tiles in split order and writes C (and its mirror). One block
// of 256 threads per 32 x 32 sub-tile: grid (ntiles, (BM / 32)^2).
template <typename Acc>
__global__ void __launch_bounds__(256) split_reduce_kernel(AtbParams<Acc, Acc> p) {
  constexpr int BM = TileCfg<Acc>::BM;
  __shared__ Acc sub[32][33];
  int bi, bj;
  tile_coords(blockIdx.x, p.upper, p.tiles_m, p.tiles_n, bi, bj);
  const int per_row = BM / 32;
  const int sr = blockIdx.y / per_row, sc = blockIdx.y % per_row;
  const int tx = threadIdx.x % 32, ty = threadIdx.x / 32;  // 32 x 8
  const int64_t tile_elems = static_cast<int64_t>(BM) * BM;
  for (int r = ty; r < 32; r += 8) {
    const int lr = sr * 32 + r, lc = sc * 32 + tx;
    Acc s = Acc(0);
    for (int k = 0; k < p.nsplit; ++k)
      s += p.partial[(static_cast<int64_t>(k) * p.ntiles + blockIdx.x) * tile_elems + lr * BM + lc];
    sub[r][tx] = s;
  }
  __syncthreads();
  const int64_t i0 = static_cast<int64_t>(bi) * BM + sr * 32;
  const int64_t j0 = static_cast<int64_t>(bj) * BM + sc * 32;
  // Direct write, coalesced along j.
  for (int r = ty; r < 32; r += 8) {
    const int64_t i = i0 + r, j = j0 + tx;
    if (i >= p.M || j >= p.N) continue;
    if (!p.upper || bi < bj || i <= j) p.C[i * p.N + j] = sub[r][tx];
  }
  if (!p.upper) return;
  // Mirror S[j][i] = sub(i, j), coalesced along i.
  for (int c = ty; c < 32; c += 8) {
    const int64_t j = j0 + c, i = i0 + tx;
    if (i >= p.M || j >= p.N) continue;
    if (bi < bj || i <= j) p.C[j * p.N + i] = sub[tx][c];
  }
}

struct AtbPlan {
  int tiles_m, tiles_n, ntiles, nsplit;
  int64_t kchunk;
  size_t partial_bytes;
};

template <typename Acc>
cudaError_t plan_atb(int64_t K, int64_t M, int64_t N, bool upper, AtbPlan* plan) {
  constexpr int BM = TileCfg<Acc>::BM, BK = TileCfg<Acc>::BK;
  int sms = 0;
  CONDNUM_CUDA_TRY(sm_count(&sms));
  plan->tiles_m = ceil_div(M, BM);
  plan->tiles_n = ceil_div(N, BM);
  const int64_t tiles = upper ? static_cast<int64_t>(plan->tiles_n) * (plan->tiles_n + 1) / 2
                              : static_cast<int64_t>(plan->tiles_m) * plan->tiles_n;
  if (tiles > (int64_t{1} << 31) - 1) return cudaErrorInvalidValue;
  plan->ntiles = static_cast<int>(tiles);
  const int64_t target = 2 * static_cast<int64_t>(sms);  // blocks to fill the GPU
  int64_t nsplit = 1;
  if (tiles < target) {
    nsplit = (target + tiles - 1) / tiles;
    nsplit = std::min<int64_t>(nsplit, std::max<int64_t>(1, K / kMinSplitK));
    nsplit = std::min<int64_t>(nsplit, 65535);
  }
  int64_t kchunk = (K + nsplit - 1) / nsplit;
  kchunk = (kchunk + BK - 1) / BK * BK;
  nsplit = (K + kchunk - 1) / kchunk;
  plan->kchunk = kchunk;
  plan->nsplit = static_cast<int>(std::max<int64_t>(nsplit, 1));
  plan->partial_bytes =
      plan->nsplit > 1
          ? align_up(static_cast<size_t>(plan->nsplit) * plan->ntiles * BM * BM * sizeof(Acc))
          : 0;
  return cudaSuccess;
}

// C (M, N) = A^T B for A: (K, M), B: (K, N), row-major with leading dimensions lda, ldb.
template <typename In, typename Acc>
cudaError_t launch_atb(const In* A, int64_t lda, const In* B, int64_t ldb, int64_t K, int64_t M,
                       int64_t N, bool upper, Acc* C, const AtbPlan& plan, void* partial,
                       cudaStream_t stream) {
  AtbParams<In, Acc> p{A,
                       B,
                       K,
                       M,
                       N,
                       lda,
                       ldb,
                       C,
                       static_cast<Acc*>(partial),
                       plan.kchunk,
                       plan.nsplit,
                       plan.ntiles,
                       plan.tiles_m,
                       plan.tiles_n,
                       upper ? 1 : 0};
  atb_kernel<In, Acc><<<dim3(plan.ntiles, plan.nsplit), kGemmThreads, 0, stream>>>(p);
  CONDNUM_CUDA_CHECK_LAUNCH();
  if (plan.nsplit > 1) {
    constexpr int per_row = TileCfg<Acc>::BM / 32;
    AtbParams<Acc, Acc> q{nullptr,
                          nullptr,
                          K,
                          M,
                          N,
                          0,
                          0,
                          C,
                          static_cast<Acc*>(partial),
                          plan.kchunk,
                          plan.nsplit,
                          plan.ntiles,
                          plan.tiles_m,
                          plan.tiles_n,
                          upper ? 1 : 0};
    split_reduce_kernel<Acc><<<dim3(plan.ntiles, per_row * per_row), 256, 0, stream>>>(q);
    CONDNUM_CUDA_CHECK_LAUNCH();
  }
  return cudaSuccess;
}

template <typename In, typename Acc>
cudaError_t gram_impl(const void* Z, int64_t n, int64_t d, void* S, void* ws, size_t ws_bytes,
                      cudaStream_t stream) {
  AtbPlan plan;
  CONDNUM_CUDA_TRY(plan_atb<Acc>(n, d, d, true, &plan));
  if (ws_bytes < plan.partial_bytes || (plan.partial_bytes > 0 && ws == nullptr))
    return cudaErrorInvalidValue;
  const In* z = static_cast<const In*>(Z);
  return launch_atb<In, Acc>(z, d, z, d, n, d, d, true, static_cast<Acc*>(S), plan, ws, stream);
}

// Fills S (n elements) with NaN when the symmetrised input failed its checks.
template <typename T>
__global__ void poison_kernel(T* S, int64_t n, const SymStats* stats) {
  if (sym_stats_ok<T>(stats)) return;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    S[i] = quiet_nan<T>();
}

struct CovLayout {
  AtbPlan plan_p, plan_s;
  size_t stats_off, ks_off, p_off, partial_off, total;
};

template <typename T>
cudaError_t cov_layout(int64_t D, int64_t d, CovLayout* L) {
  CONDNUM_CUDA_TRY(plan_atb<T>(D, D, d, false, &L->plan_p));
  CONDNUM_CUDA_TRY(plan_atb<T>(D, d, d, true, &L->plan_s));
  size_t off = 0;
  L->stats_off = off;
  off += align_up(sizeof(SymStats));
  L->ks_off = off;
  off += align_up(static_cast<size_t>(D) * D * sizeof(T));
  L->p_off = off;
  off += align_up(static_cast<size_t>(D) * d * sizeof(T));
  L->partial_off = off;
  off += std::max(L->plan_p.partial_bytes, L->plan_s.partial_bytes);
  L->total = off;
  return cudaSuccess;
}

template <typename T>
cudaError_t covariance_impl(const void* theta, const void* K, int64_t D, int64_t d, void* S,
                            void* ws, size_t ws_bytes, cudaStream_t stream) {
  CovLayout L;
  CONDNUM_CUDA_TRY(cov_layout<T>(D, d, &L));
  if (ws == nullptr || ws_bytes < L.total) return cudaErrorInvalidValue;
  char* base = static_cast<char*>(ws);
  auto* stats = reinterpret_cast<SymStats*>(base + L.stats_off);
  T* Ks = reinterpret_cast<T*>(base + L.ks_off);
  T* P = reinterpret_cast<T*>(base + L.p_off);
  void* partial = base + L.partial_off;
  const T* th = static_cast<const T*>(theta);
  CONDNUM_CUDA_TRY(cudaMemsetAsync(stats, 0, sizeof(SymStats), stream));
  CONDNUM_CUDA_TRY(launch_symmetrize<T>(static_cast<const T*>(K), Ks, D, stats, stream));
  // P = Ks theta = Ks^T theta  (Ks symmetric): (D, d)
  CONDNUM_CUDA_TRY(launch_atb<T, T>(Ks, D, th, d, D, D, d, false, P, L.plan_p, partial, stream));
  // S = theta^T P: (d, d), upper tiles, mirrored
  CONDNUM_CUDA_TRY(
      launch_atb<T, T>(th, d, P, d, D, d, d, true, static_cast<T*>(S), L.plan_s, partial, stream));
  const int64_t n = d * d;
  const int blocks = static_cast<int>(std::min<int64_t>(1024, (n + 255) / 256));
  poison_kernel<T><<<blocks, 256, 0, stream>>>(static_cast<T*>(S), n, stats);
  CONDNUM_CUDA_CHECK_LAUNCH();
  return cudaSuccess;
}

}  // namespace

size_t gram_workspace_bytes(Dtype in, int64_t n, int64_t d) {
  AtbPlan plan;
  const cudaError_t e = in == Dtype::kFloat64 ? plan_atb<double>(n, d, d, true, &plan)
                                              : plan_atb<float>(n, d, d, true, &plan);
  return e == cudaSuccess ? plan.partial_bytes : 0;
}

cudaError_t gram(Dtype in, const void* Z, int64_t n, int64_t d, void* S, void* ws, size_t ws_bytes,
                 cudaStream_t stream) {
  switch (in) {
    case Dtype::kFloat32:
      return gram_impl<float, float>(Z, n, d, S, ws, ws_bytes, stream);
    case Dtype::kFloat64:
      return gram_impl<double, double>(Z, n, d, S, ws, ws_bytes, stream);
    case Dtype::kFloat16:
      return gram_impl<__half, float>(Z, n, d, S, ws, ws_bytes, stream);
    case Dtype::kBFloat16:
      return gram_impl<__nv_bfloat16, float>(Z, n, d, S, ws, ws_bytes, stream);
  }
  return cudaErrorInvalidValue;
}

size_t covariance_workspace_bytes(Dtype dt, int64_t D, int64_t d) {
  CovLayout L;
  const cudaError_t e =
      dt == Dtype::kFloat64 ? cov_layout<double>(D, d, &L) : cov_layout<float>(D, d, &L);
  return e == cudaSuccess ? L.total : 0;
}

cudaError_t covariance(Dtype dt, const void* theta, const void* K, int64_t D, int64_t d, void* S,
                       void* ws, size_t ws_bytes, cudaStream_t stream) {
  switch (dt) {
    case Dtype::kFloat32:
      return covariance_impl<float>(theta, K, D, d, S, ws, ws_bytes, stream);
    case Dtype::kFloat64:
      return covariance_impl<double>(theta, K, D, d, S, ws, ws_bytes, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace condnum::cuda
