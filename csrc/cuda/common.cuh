// Shared device helpers for the condnum CUDA kernels (plain CUDA C++, no torch headers).
//
//   - CONDNUM_CUDA_TRY: return the first failing cudaError_t to the caller (the torch
//     binding turns it into a TORCH_CHECK);
//   - deterministic warp/block reductions (fixed shuffle/tree order, so every block
//     that reduces the same numbers gets bit-identical results: the persistent kernels
//     rely on this to take uniform decisions without extra synchronisation);
//   - type helpers (to_acc / from_acc, quiet NaN), splitmix64;
//   - cooperative-launch helpers (grid size from occupancy, cudaLaunchCooperativeKernel).
#pragma once

#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

// Variadic so that template arguments with commas need no extra parentheses.
#define CONDNUM_CUDA_TRY(...)                             \
  do {                                                    \
    const cudaError_t condnum_err_ = (__VA_ARGS__);       \
    if (condnum_err_ != cudaSuccess) return condnum_err_; \
  } while (0)

// Checks the launch that was just issued (configuration errors are reported here;
// asynchronous faults surface at the next synchronising call, outside our ops).
#define CONDNUM_CUDA_CHECK_LAUNCH() CONDNUM_CUDA_TRY(cudaGetLastError())

namespace condnum::cuda {

constexpr int kWarp = 32;

// ----------------------------------------------------------------------------- types

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(double x) { return static_cast<float>(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

// Conversion of an input element to the accumulation type Acc (float or double).
template <typename Acc, typename In>
__device__ __forceinline__ Acc to_acc(In x) {
  return static_cast<Acc>(to_float(x));
}
template <>
__device__ __forceinline__ double to_acc<double, double>(double x) {
  return x;
}
template <>
__device__ __forceinline__ double to_acc<double, float>(float x) {
  return static_cast<double>(x);
}
template <>
__device__ __forceinline__ float to_acc<float, float>(float x) {
  return x;
}

template <typename T>
__device__ __forceinline__ T quiet_nan();
template <>
__device__ __forceinline__ float quiet_nan<float>() {
  return __int_as_float(0x7fc00000);
}
template <>
__device__ __forceinline__ double quiet_nan<double>() {
  return __longlong_as_double(0x7ff8000000000000LL);
}

__device__ __forceinline__ double dbl_inf() { return __longlong_as_double(0x7ff0000000000000LL); }

// Machine epsilon of the storage type.
template <typename T>
struct Eps;
template <>
struct Eps<float> {
  static constexpr double value = 1.1920928955078125e-07;
};
template <>
struct Eps<double> {
  static constexpr double value = 2.220446049250313e-16;
};

// ----------------------------------------------------------------------------- random

// splitmix64 of the index mapped to [-1, 1): the same deterministic start vector as the
// CPU kernels (csrc/cpu/lanczos.cpp, pseudo_random_unit, stream `stream`), before
// normalisation.
__host__ __device__ __forceinline__ double splitmix_unit(uint64_t i, uint64_t stream) {
  uint64_t z = i + 0x9E3779B97F4A7C15ULL * (stream + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * (2.0 / 9007199254740992.0) - 1.0;
}

// ----------------------------------------------------------------------------- reductions

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

__device__ __forceinline__ int linear_tid() {
  return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}
__device__ __forceinline__ int block_threads() { return blockDim.x * blockDim.y * blockDim.z; }

// Sum over the block (any shape; a multiple of 32 threads); every thread gets the
// result. `scratch` holds >= 32 values. Deterministic: the order of additions depends
// only on the block shape.
template <typename T>
__device__ T block_sum(T v, T* scratch) {
  const int tid = linear_tid();
  const int lane = tid % kWarp, warp = tid / kWarp;
  const int nwarps = (block_threads() + kWarp - 1) / kWarp;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T r = lane < nwarps ? scratch[lane] : T(0);
  r = warp_sum(r);
  return r;
}

template <typename T>
__device__ T block_max(T v, T* scratch) {
  const int tid = linear_tid();
  const int lane = tid % kWarp, warp = tid / kWarp;
  const int nwarps = (block_threads() + kWarp - 1) / kWarp;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T r = lane < nwarps ? scratch[lane] : scratch[0];
  r = warp_max(r);
  return r;
}

// atomicMax for non-negative doubles: their IEEE bit patterns order like the values.
__device__ __forceinline__ void atomic_max_nonneg(unsigned long long* addr, double v) {
  atomicMax(addr, static_cast<unsigned long long>(__double_as_longlong(v)));
}

// ----------------------------------------------------------------------------- launches

inline int ceil_div(int64_t a, int64_t b) { return static_cast<int>((a + b - 1) / b); }

inline size_t align_up(size_t n, size_t a = 256) { return (n + a - 1) / a * a; }

// Bump allocator over a caller-provided workspace (the binding allocates it with the
// caching allocator, so ops stay capturable in CUDA graphs).
struct Carver {
  char* base;
  size_t used = 0;
  template <typename T>
  T* take(size_t count) {
    T* p = base ? reinterpret_cast<T*>(base + used) : nullptr;
    used += align_up(count * sizeof(T));
    return p;
  }
};

// Largest grid of `threads`-thread blocks with `smem` dynamic shared memory that can be
// co-resident (required by cudaLaunchCooperativeKernel), capped at `wanted`.
template <typename Kernel>
cudaError_t cooperative_grid(Kernel kernel, int threads, size_t smem, int wanted, int* grid) {
  int dev = 0, sms = 0, coop = 0, per_sm = 0;
  CONDNUM_CUDA_TRY(cudaGetDevice(&dev));
  CONDNUM_CUDA_TRY(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev));
  if (!coop) return cudaErrorNotSupported;
  CONDNUM_CUDA_TRY(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  CONDNUM_CUDA_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &per_sm, reinterpret_cast<const void*>(kernel), threads, smem));
  if (per_sm < 1) return cudaErrorLaunchOutOfResources;
  const int most = per_sm * sms;
  *grid = wanted < most ? (wanted < 1 ? 1 : wanted) : most;
  return cudaSuccess;
}

inline cudaError_t sm_count(int* sms) {
  int dev = 0;
  CONDNUM_CUDA_TRY(cudaGetDevice(&dev));
  return cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, dev);
}

template <typename Kernel, typename... Args>
cudaError_t launch_cooperative(Kernel kernel, int grid, int threads, size_t smem,
                               cudaStream_t stream, Args... args) {
  void* ptrs[] = {static_cast<void*>(&args)...};
  return cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), dim3(grid),
                                     dim3(threads), ptrs, smem, stream);
}

}  // namespace condnum::cuda
