// R_ill and R_well (Zheng et al. 2025) and their analytic gradients on the GPU.
//
//   R_well(S) = lam_max^2 / 2 - ||S||_F^2 / (2k)       dR_well/dS = lam_max u u^T - S / k
//   R_ill(S)  = 1 / D,  D = max(||S||_F^2 / (2k) - lam_min^2 / 2, 64 eps ||S||_F^2 / (2k))
//                                                      dR_ill/dS = R_ill^2 (lam_min u u^T - S / k)
// S: (d, d), lam: () and u: (d,) from extreme_eigh / top_eigh, all float32 or float64.
// lam and u are treated as functions of S (d lam = u^T dS u): no eigendecomposition is
// differentiated (same semantics as csrc/cpu/regularizers.cpp).
//
// Forward (three launches, deterministic, no host sync): ||S||_F^2 and max|S| by a
// grid-stride float64 reduction into one partial each per block; when the sum overflowed or
// its squares underflowed (policy::norm_needs_rescaling), a second pass sums the squares of
// S / 2^e, 2^e = policy::power_of_two_above(max|S|) (every block of that pass decides from
// the same partials; otherwise it returns at once); then one block sums the partials in a
// fixed order and evaluates the formula in float64 in units of 2^(2e), scaled back last (as
// the CPU: D floored by policy::ill_denominator). NaN or Inf in S gives NaN (the CPU raises).
// Backward: one fused elementwise pass out[i][j] = a (b u_i u_j + c S[i][j]) with the
// coefficients (policy::ill_backward / well_backward) and the product in float64, rounded
// once to S's dtype, as on the CPU; a zero grad gives zeros for R_ill even where R = +inf.
// Grid: (ceil(d / 256), rows); coalesced along j.
// Bottleneck: memory bandwidth (one read of S forward, two for an out-of-range S; one read
// + one write backward).
#include <algorithm>

#include "cuda/common.cuh"
#include "cuda/kernels.h"
#include "solver_policy.h"

namespace condnum::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxPartials = 1024;
constexpr int64_t kElemsPerBlock = 8192;

int partial_blocks(int64_t numel) {
  return static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>(kMaxPartials, (numel + kElemsPerBlock - 1) / kElemsPerBlock)));
}

// Partials of sum_i (S_i a b)^2 into sum[blockIdx.x], and of max|S_i| into max[blockIdx.x]
// (when max != nullptr). The scaling is split in two factors: 2^-e alone overflows for a
// subnormal max|S|.
template <typename T>
__device__ void sum_squares(const T* __restrict__ S, int64_t n, double a, double b, double* sum,
                            double* max) {
  __shared__ double red[32];
  double acc = 0.0, big = 0.0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const double v = static_cast<double>(S[i]);
    const double x = v * a * b;
    acc = fma(x, x, acc);
    big = fmax(big, fabs(v));
  }
  acc = block_sum(acc, red);
  if (max != nullptr) big = block_max(big, red);
  if (threadIdx.x == 0) {
    sum[blockIdx.x] = acc;
    if (max != nullptr) max[blockIdx.x] = big;
  }
}

// Sum (or max) of the partials, in a fixed order: the same in every block.
__device__ double reduce_partials(const double* partial, int nparts, bool is_max) {
  __shared__ double red[32];
  double acc = 0.0;
  for (int i = threadIdx.x; i < nparts; i += blockDim.x)
    acc = is_max ? fmax(acc, partial[i]) : acc + partial[i];
  return is_max ? block_max(acc, red) : block_sum(acc, red);
}

// ||S||_F^2 = scale^2 * sum, as csrc/cpu/checks.cpp's squared_norm; finite = false for
// NaN or Inf in S.
struct SquaredNorm {
  double scale, sum;
  bool finite;
};

// Workspace: partial sums, partial maxima, partial rescaled sums (nparts each).
__device__ SquaredNorm squared_norm(const double* ws, int nparts) {
  SquaredNorm out{1.0, reduce_partials(ws, nparts, false), true};
  if (policy::norm_needs_rescaling(out.sum)) {
    const double m = reduce_partials(ws + nparts, nparts, true);
    out.finite = isfinite(m) && !isnan(out.sum);
    if (out.finite && m > 0) {
      int e = 0;
      out.scale = policy::power_of_two_above(m, &e);
      out.sum = reduce_partials(ws + 2 * nparts, nparts, false);
    }
  }
  return out;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    sumsq_kernel(const T* __restrict__ S, int64_t n, double* __restrict__ ws) {
  sum_squares(S, n, 1.0, 1.0, ws, ws + gridDim.x);
}

// The rescaled pass: returns at once (every block alike) unless the first sum needs it.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    rescaled_sumsq_kernel(const T* __restrict__ S, int64_t n, double* __restrict__ ws) {
  const int nparts = gridDim.x;
  if (!policy::norm_needs_rescaling(reduce_partials(ws, nparts, false))) return;
  const double m = reduce_partials(ws + nparts, nparts, true);
  if (!(isfinite(m) && m > 0)) return;
  int e = 0;
  policy::power_of_two_above(m, &e);
  sum_squares(S, n, ldexp(1.0, -e / 2), ldexp(1.0, -(e - e / 2)), ws + 2 * nparts, nullptr);
}

template <typename T, bool kIll>
__global__ void __launch_bounds__(kThreads)
    finish_kernel(const double* __restrict__ ws, int nparts, const T* __restrict__ lam, int64_t k,
                  T* __restrict__ out) {
  const SquaredNorm n = squared_norm(ws, nparts);
  if (threadIdx.x != 0) return;
  if (!n.finite) {
    *out = quiet_nan<T>();
    return;
  }
  const double l = static_cast<double>(*lam) / n.scale;
  const double half_mean_sq = n.sum / (2.0 * static_cast<double>(k));
  double r;
  if (kIll) {
    r = 1.0 / policy::ill_denominator(half_mean_sq, l, Eps<T>::value) / n.scale / n.scale;
  } else {
    r = (0.5 * l * l - half_mean_sq) * n.scale * n.scale;
  }
  *out = static_cast<T>(r);
}

template <typename T, bool kIll>
cudaError_t forward_impl(const void* S, int64_t d, const void* lam, int64_t k, void* out, void* ws,
                         size_t ws_bytes, cudaStream_t stream) {
  const int64_t n = d * d;
  const int blocks = partial_blocks(n);
  if (ws == nullptr || ws_bytes < 3 * blocks * sizeof(double)) return cudaErrorInvalidValue;
  double* partial = static_cast<double*>(ws);
  const T* s = static_cast<const T*>(S);
  sumsq_kernel<T><<<blocks, kThreads, 0, stream>>>(s, n, partial);
  CONDNUM_CUDA_CHECK_LAUNCH();
  rescaled_sumsq_kernel<T><<<blocks, kThreads, 0, stream>>>(s, n, partial);
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
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (j >= d) return;
  const double g = static_cast<double>(*grad);
  if (kIll && g == 0) {  // no push, not NaN, even where R = +inf (S = 0), as on the CPU
    for (int64_t i = blockIdx.y; i < d; i += gridDim.y) out[i * d + j] = T(0);
    return;
  }
  const double l = static_cast<double>(*lam);
  const policy::RankOnePlusScaled c = kIll ? policy::ill_backward(g, static_cast<double>(*r), l, k)
                                           : policy::well_backward(g, l, k);
  const double uj = static_cast<double>(u[j]);
  for (int64_t i = blockIdx.y; i < d; i += gridDim.y) {
    const double bi = c.b * static_cast<double>(u[i]);
    out[i * d + j] = static_cast<T>(
        policy::rank_one_plus_scaled(c, bi, uj, static_cast<double>(S[i * d + j])));
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
  return align_up(3 * partial_blocks(numel) * sizeof(double));
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
