// R_ill and R_well (Zheng et al. 2025) and their analytic gradients on the GPU.
//
//   R_well(S) = lam_max^2 / 2 - ||S||_F^2 / (2k)       dR_well/dS = lam_max u u^T - S / k
//   R_ill(S)  = 1 / D,  D = max(||S||_F^2 / (2k) - lam_min^2 / 2, 64 eps ||S||_F^2 / (2k))
//                                                      dR_ill/dS = R_ill^2 (lam_min u u^T - S / k)
// S: (d, d), lam: () and u: (d,) from extreme_eigh / top_eigh, all float32 or float64.
// lam and u are treated as functions of S (d lam = u^T dS u): no eigendecomposition is
// differentiated (same semantics as csrc/cpu/regularizers.cpp).
//
// Forward (two launches, deterministic, no host sync): ||S||_F^2 by a grid-stride
// float64 reduction into one partial per block, then one block sums the partials in a
// fixed order and evaluates the formula in float64 from the device scalars (D floored at
// 64 eps ||S||_F^2 / (2k), as on the CPU); NaN input gives NaN.
// Backward: one fused elementwise pass out[i][j] = (c_uu u_i) u_j + c_s S[i][j], with the
// coefficients computed per thread in float64 from the device scalars (grad, r, lam) and
// rounded to S's dtype, as on the CPU. Grid: (ceil(d / 256), rows); coalesced along j.
// Bottleneck: memory bandwidth (one read of S forward; one read + one write backward).
#include <algorithm>

#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace condnum::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxPartials = 1024;
constexpr int64_t kElemsPerBlock = 8192;

int partial_blocks(int64_t numel) {
  return static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>(kMaxPartials, (numel + kElemsPerBlock - 1) / kElemsPerBlock)));
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    sumsq_kernel(const T* __restrict__ S, int64_t n, double* __restrict__ partial) {
  __shared__ double red[32];
  double acc = 0.0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const double v = static_cast<double>(S[i]);
    acc = fma(v, v, acc);
  }
  acc = block_sum(acc, red);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

template <typename T, bool kIll>
__global__ void __launch_bounds__(kThreads)
    finish_kernel(const double* __restrict__ partial, int nparts, const T* __restrict__ lam,
                  int64_t k, T* __restrict__ out) {
  __shared__ double red[32];
  double acc = 0.0;
  for (int i = threadIdx.x; i < nparts; i += blockDim.x) acc += partial[i];
  const double sq = block_sum(acc, red);  // ||S||_F^2
  if (threadIdx.x != 0) return;
  const double half_mean_sq = sq / (2.0 * static_cast<double>(k));
  const double l = static_cast<double>(*lam);
  double r;
  if (kIll) {
    // D floored at the rounding level of ||S||_F^2 / (2k), as on the CPU.
    const double D = half_mean_sq - 0.5 * l * l;
    r = isnan(D) ? D : 1.0 / fmax(D, 64.0 * Eps<T>::value * half_mean_sq);
  } else {
    r = 0.5 * l * l - half_mean_sq;
  }
  *out = static_cast<T>(r);
}

template <typename T, bool kIll>
cudaError_t forward_impl(const void* S, int64_t d, const void* lam, int64_t k, void* out, void* ws,
                         size_t ws_bytes, cudaStream_t stream) {
  const int64_t n = d * d;
  const int blocks = partial_blocks(n);
  if (ws == nullptr || ws_bytes < blocks * sizeof(double)) return cudaErrorInvalidValue;
  double* partial = static_cast<double*>(ws);
  sumsq_kernel<T><<<blocks, kThreads, 0, stream>>>(static_cast<const T*>(S), n, partial);
  CONDNUM_CUDA_CHECK_LAUNCH();
  finish_kernel<T, kIll><<<1, kThreads, 0, stream>>>(partial, blocks, static_cast<const T*>(lam), k,
                                                     static_cast<T*>(out));
  CONDNUM_CUDA_CHECK_LAUNCH();
  return cudaSuccess;
}

template <typename T, bool kIll>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const T* __restrict__ grad, const T* __restrict__ S, const T* __restrict__ r,
                    const T* __restrict__ lam, const T* __restrict__ u, int64_t d, int64_t k,
                    T* __restrict__ out) {
  double g = static_cast<double>(*grad);
  if (kIll && g != 0) {  // a zero grad stays zero even where R = +inf (S = 0), as on the CPU
    const double rv = static_cast<double>(*r);
    g = g * rv * rv;
  }
  const T a = static_cast<T>(g * static_cast<double>(*lam));
  const T c = static_cast<T>(-g / static_cast<double>(k));
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (j >= d) return;
  const T uj = u[j];
  for (int64_t i = blockIdx.y; i < d; i += gridDim.y) {
    const T ai = a * u[i];
    out[i * d + j] = ai * uj + c * S[i * d + j];
  }
}

template <typename T, bool kIll>
cudaError_t backward_impl(const void* grad, const void* S, const void* r, const void* lam,
                          const void* u, int64_t d, int64_t k, void* out, cudaStream_t stream) {
  const dim3 grid(ceil_div(d, kThreads), static_cast<unsigned>(std::min<int64_t>(d, 65535)));
  backward_kernel<T, kIll><<<grid, kThreads, 0, stream>>>(
      static_cast<const T*>(grad), static_cast<const T*>(S), static_cast<const T*>(r),
      static_cast<const T*>(lam), static_cast<const T*>(u), d, k, static_cast<T*>(out));
  CONDNUM_CUDA_CHECK_LAUNCH();
  return cudaSuccess;
}

}  // namespace

size_t regularizer_workspace_bytes(int64_t numel) {
  return align_up(partial_blocks(numel) * sizeof(double));
}

cudaError_t r_ill(Dtype dt, const void* S, int64_t d, const void* lam_min, int64_t k, void* out,
                  void* ws, size_t ws_bytes, cudaStream_t stream) {
  if (dt == Dtype::kFloat32)
    return forward_impl<float, true>(S, d, lam_min, k, out, ws, ws_bytes, stream);
  if (dt == Dtype::kFloat64)
    return forward_impl<double, true>(S, d, lam_min, k, out, ws, ws_bytes, stream);
  return cudaErrorInvalidValue;
}

cudaError_t r_well(Dtype dt, const void* S, int64_t d, const void* lam_max, int64_t k, void* out,
                   void* ws, size_t ws_bytes, cudaStream_t stream) {
  if (dt == Dtype::kFloat32)
    return forward_impl<float, false>(S, d, lam_max, k, out, ws, ws_bytes, stream);
  if (dt == Dtype::kFloat64)
    return forward_impl<double, false>(S, d, lam_max, k, out, ws, ws_bytes, stream);
  return cudaErrorInvalidValue;
}

cudaError_t r_ill_backward(Dtype dt, const void* grad, const void* S, const void* r,
                           const void* lam_min, const void* u_min, int64_t d, int64_t k, void* out,
                           cudaStream_t stream) {
  if (dt == Dtype::kFloat32)
    return backward_impl<float, true>(grad, S, r, lam_min, u_min, d, k, out, stream);
  if (dt == Dtype::kFloat64)
    return backward_impl<double, true>(grad, S, r, lam_min, u_min, d, k, out, stream);
  return cudaErrorInvalidValue;
}

cudaError_t r_well_backward(Dtype dt, const void* grad, const void* S, const void* lam_max,
                            const void* u_max, int64_t d, int64_t k, void* out,
                            cudaStream_t stream) {
  if (dt == Dtype::kFloat32)
    return backward_impl<float, false>(grad, S, nullptr, lam_max, u_max, d, k, out, stream);
  if (dt == Dtype::kFloat64)
    return backward_impl<double, false>(grad, S, nullptr, lam_max, u_max, d, k, out, stream);
  return cudaErrorInvalidValue;
}

}  // namespace condnum::cuda
