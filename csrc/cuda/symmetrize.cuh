// W = (S + S^T) / 2 with the input checks of the CPU kernels, done on the device.
//
//   S: (d, d) float32/float64, row-major -> W: (d, d), same dtype.
//   stats: max|S_ij|, max|S_ij - S_ji| over finite entries, and a non-finite flag,
//   accumulated with atomics into a zero-initialised SymStats. The consumer decides
//   (on the device) whether S passed: finite and max_asym <= symmetry_rtol * max_abs,
//   the CPU kernels' rule (csrc/cpu/checks.h).
// Parallelisation: one 32x32 tile of W per (32, 8) block; the transposed tile of S is
// staged through shared memory so both reads are coalesced. Each element is
// (a + b) / 2 computed in float64, as on the CPU, so W is exactly symmetric.
#pragma once

#include <algorithm>

#include "cuda/common.cuh"
#include "solver_policy.h"

namespace condnum::cuda {

struct SymStats {
  unsigned long long max_abs_bits;   // double bits (non-negative)
  unsigned long long max_asym_bits;  // double bits (non-negative)
  int nonfinite;
  int pad_;
};

__device__ __forceinline__ double sym_max_abs(const SymStats* st) {
  return __longlong_as_double(static_cast<long long>(st->max_abs_bits));
}

template <typename T>
__device__ __forceinline__ bool sym_stats_ok(const SymStats* st) {
  const double max_asym = __longlong_as_double(static_cast<long long>(st->max_asym_bits));
  return st->nonfinite == 0 &&
         max_asym <= policy::symmetry_rtol(sizeof(T) == 4) * sym_max_abs(st);
}

template <typename T>
__global__ void __launch_bounds__(256)
    symmetrize_kernel(const T* __restrict__ S, T* __restrict__ W, int64_t d, SymStats* stats) {
  __shared__ T tile[32][33];
  __shared__ double red[32];
  const int64_t i0 = static_cast<int64_t>(blockIdx.y) * 32;  // rows of this W tile
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * 32;  // cols of this W tile
  const int tx = threadIdx.x, ty = threadIdx.y;              // (32, 8)
  // Stage S[j0:j0+32, i0:i0+32] (the transposed tile), coalesced along i.
  for (int r = ty; r < 32; r += 8) {
    const int64_t row = j0 + r, col = i0 + tx;
    tile[r][tx] = (row < d && col < d) ? S[row * d + col] : T(0);
  }
  __syncthreads();
  double m_abs = 0.0, m_asym = 0.0;
  int bad = 0;
  for (int r = ty; r < 32; r += 8) {
    const int64_t row = i0 + r, col = j0 + tx;
    if (row < d && col < d) {
      const double a = static_cast<double>(S[row * d + col]);
      const double b = static_cast<double>(tile[tx][r]);  // S[col][row]
      if (isfinite(a)) {
        m_abs = fmax(m_abs, fabs(a));
        if (isfinite(b)) m_asym = fmax(m_asym, fabs(a - b));
      } else {
        bad = 1;
      }
      W[row * d + col] = static_cast<T>(0.5 * (a + b));
    }
  }
  // Block reductions (threads are linearised as ty * 32 + tx: one warp per ty).
  const double blk_abs = block_max(m_abs, red);
  const double blk_asym = block_max(m_asym, red);
  const int blk_bad = __syncthreads_or(bad);
  if (tx == 0 && ty == 0) {
    if (blk_abs > 0) atomic_max_nonneg(&stats->max_abs_bits, blk_abs);
    if (blk_asym > 0) atomic_max_nonneg(&stats->max_asym_bits, blk_asym);
    if (blk_bad) atomicOr(&stats->nonfinite, 1);
  }
}

// W /= p in place, p = policy::range_scale(max|S|) (a power of two, exact), written to
// *scale by block 0; every block derives p from the same stats. Grid-stride over W.
template <typename T>
__global__ void __launch_bounds__(256)
    range_scale_kernel(T* __restrict__ W, int64_t n, const SymStats* stats, double* scale) {
  const double p = policy::range_scale(sym_max_abs(stats), sizeof(T) == 4);
  if (blockIdx.x == 0 && threadIdx.x == 0) *scale = p;
  if (p == 1.0) return;
  // A division (1 / p may overflow for a subnormal max|S|), rounded once to T: the CPU's W / p.
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    W[i] = static_cast<T>(static_cast<double>(W[i]) / p);
}

template <typename T>
cudaError_t launch_range_scale(T* W, int64_t d, const SymStats* stats, double* scale,
                               cudaStream_t stream) {
  const int blocks = static_cast<int>(std::min<int64_t>(1024, std::max<int64_t>(1, d * d / 2048)));
  range_scale_kernel<T><<<blocks, 256, 0, stream>>>(W, d * d, stats, scale);
  CONDNUM_CUDA_CHECK_LAUNCH();
  return cudaSuccess;
}

template <typename T>
cudaError_t launch_symmetrize(const T* S, T* W, int64_t d, SymStats* stats, cudaStream_t stream) {
  const int nt = ceil_div(d, 32);
  if (nt > 65535) return cudaErrorInvalidValue;
  symmetrize_kernel<T><<<dim3(nt, nt), dim3(32, 8), 0, stream>>>(S, W, d, stats);
  CONDNUM_CUDA_CHECK_LAUNCH();
  return cudaSuccess;
}

}  // namespace condnum::cuda
