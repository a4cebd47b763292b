// Host launchers of the condnum CUDA kernels: plain C++ over raw device pointers and a
// stream, so that the kernels compile with `nvcc -c` on a machine without torch or a GPU.
// The torch binding (csrc/cuda/ops_cuda.cpp) validates arguments, allocates outputs and
// workspaces with the caching allocator, and turns a returned error into a TORCH_CHECK.
//
// Conventions for every launcher:
//   - all pointers are device pointers to contiguous, row-major data;
//   - work is queued on `stream`; nothing synchronises the device or reads a value back
//     to the host, so every op can be captured in a CUDA graph;
//   - value-dependent failures that the CPU kernels raise as errors (NaN/Inf input, a
//     non-symmetric or indefinite S) cannot be raised without a host sync: the outputs
//     are NaN instead, as documented per launcher;
//   - the solver policy (tolerances, stopping rules, shifts, floors) is the CPU kernels',
//     from csrc/solver_policy.h;
//   - the return value is the first CUDA error met while queueing the work.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace condnum::cuda {

enum class Dtype : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

// Most Lanczos steps per call on the GPU: the tridiagonal T and the projections h of a
// step live in shared memory, which stays under the 48 KiB a kernel may use without an
// opt-in. The binding rejects a larger min(num_iters, d) with a clear error.
constexpr int64_t kMaxLanczosSteps = 1024;

// ----------------------------------------------------------------------------- gram.cu
// S = Z^T Z. Z: (n, d) row-major in `in` (float32/float64/float16/bfloat16);
// S: (d, d), float64 for float64 input, float32 otherwise (float32 accumulation for the
// half types; plain FMA, no TF32). Only the upper-triangle tiles are computed, then
// mirrored: S is exactly symmetric.
size_t gram_workspace_bytes(Dtype in, int64_t n, int64_t d);
cudaError_t gram(Dtype in, const void* Z, int64_t n, int64_t d, void* S, void* workspace,
                 size_t workspace_bytes, cudaStream_t stream);

// S = theta^T K theta with K symmetrised first, Ks = (K + K^T) / 2, forming only
// P = Ks theta (D, d) and the upper triangle of theta^T P. theta: (D, d), K: (D, D),
// S: (d, d), all float32 or all float64. A K that is not finite or not symmetric to
// within sqrt(eps) * max|K| (the CPU kernel's error) makes S all NaN.
size_t covariance_workspace_bytes(Dtype dt, int64_t D, int64_t d);
cudaError_t covariance(Dtype dt, const void* theta, const void* K, int64_t D, int64_t d, void* S,
                       void* workspace, size_t workspace_bytes, cudaStream_t stream);

// ----------------------------------------------------------------------------- extreme_eigh.cu
// Extreme eigenpairs of a symmetric PSD S (d, d), float32/float64 (see extreme_eigh.cu):
// lam_min = smallest eigenvalue above rtol * lam_max, lam_max, unit u_min/u_max (d,) with
// their largest-magnitude component positive, all in S's dtype, and err (float64, 0-dim):
// the larger relative error bound of the two eigenvalues. v0_min / v0_max (d,) warm starts
// in S's dtype, or nullptr (a zero or non-finite warm start is ignored).
// Outputs are NaN when S is not finite or not symmetric (all four), when S is indefinite
// (a Ritz value below -sqrt(eps) lam_max, or no Cholesky shift up to sqrt(eps) lam_max
// works) or the bottom end cannot be found (lam_min and u_min).
// Each call is two solves: the answer and its restart check, a second solve from an
// independent pseudo-random start that replaces an end the first settled on a neighbour of
// (extreme_eigh.cu, step 6).
struct EighArgs {
  Dtype dtype;
  const void* S;
  int64_t d;
  int64_t num_iters;
  double rtol;
  double tol;
  const void* v0_min;  // may be nullptr
  const void* v0_max;  // may be nullptr
  void* lam_min;       // () dtype of S
  void* lam_max;       // ()
  void* u_min;         // (d,)
  void* u_max;         // (d,)
  double* err;         // () float64
};
size_t extreme_eigh_workspace_bytes(Dtype dt, int64_t d, int64_t num_iters, cudaError_t* error);
cudaError_t extreme_eigh(const EighArgs& args, void* workspace, size_t workspace_bytes,
                         cudaStream_t stream);

// Top eigenpair only: lam_max, u_max, err (lam_min / u_min / v0_min unused, rtol ignored).
size_t top_eigh_workspace_bytes(Dtype dt, int64_t d, int64_t num_iters, cudaError_t* error);
cudaError_t top_eigh(const EighArgs& args, void* workspace, size_t workspace_bytes,
                     cudaStream_t stream);

// ----------------------------------------------------------------------------- regularizers.cu
// Forward values, written to the 0-dim `out` (dtype of S), computed in float64 on the
// device from ||S||_F^2 (float64 accumulation, rescaled by a power of two when its squares
// would leave float64's range) and the 0-dim lam (dtype of S):
//   r_ill  = 1 / D, D = max(||S||_F^2 / (2k) - lam_min^2 / 2, kIllFloor eps ||S||_F^2 / (2k))
//   r_well = lam_max^2 / 2 - ||S||_F^2 / (2k)
// NaN when S contains NaN or Inf; a value beyond S's dtype is +-inf.
size_t regularizer_workspace_bytes(int64_t numel);
cudaError_t r_ill(Dtype dt, const void* S, int64_t d, const void* lam_min, int64_t k, void* out,
                  void* workspace, size_t workspace_bytes, cudaStream_t stream);
cudaError_t r_well(Dtype dt, const void* S, int64_t d, const void* lam_max, int64_t k, void* out,
                   void* workspace, size_t workspace_bytes, cudaStream_t stream);

// Backward: out (d, d) = a (b u u^T + c S) in float64 per entry, rounded once, with, for
// grad g (0-dim, dtype of S; policy::ill_backward / well_backward),
//   r_ill:  a = g r, b = r lam_min, c = -r / k   (r = the forward value; zeros when g = 0)
//   r_well: a = g,   b = lam_max,   c = -1 / k
cudaError_t r_ill_backward(Dtype dt, const void* grad, const void* S, const void* r,
                           const void* lam_min, const void* u_min, int64_t d, int64_t k, void* out,
                           cudaStream_t stream);
cudaError_t r_well_backward(Dtype dt, const void* grad, const void* S, const void* lam_max,
                            const void* u_max, int64_t d, int64_t k, void* out,
                            cudaStream_t stream);

}  // namespace condnum::cuda
