// CUDA implementations of the condnum ops: argument checks, output and workspace
// allocation, and one call into the raw-pointer launchers of csrc/cuda/kernels.h.
// Built only in CUDA builds (CMakeLists.txt, CONDNUM_CUDA). The schemas are in
// csrc/registration.cpp; the semantics are those of the CPU kernels (csrc/cpu/), except
// that value-dependent errors, which would need a host synchronisation, become NaN
// outputs (see kernels.h). Nothing here synchronises the device or reads a tensor value:
// every op runs on the current stream, under a device guard, and can be captured in a
// CUDA graph. Workspaces come from the caching allocator (at::empty).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "cpu/checks.h"
#include "cuda/kernels.h"

namespace condnum {
namespace {

namespace kc = condnum::cuda;

kc::Dtype dtype_of(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return kc::Dtype::kFloat32;
    case at::kDouble:
      return kc::Dtype::kFloat64;
    case at::kHalf:
      return kc::Dtype::kFloat16;
    case at::kBFloat16:
      return kc::Dtype::kBFloat16;
    default:
      TORCH_CHECK(false, "condnum: unsupported dtype ", t);
  }
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "condnum.", op,
              ": CUDA kernel launch failed: ", cudaGetErrorString(err), " (", static_cast<int>(err),
              ")");
}

at::Tensor workspace(size_t bytes, const at::Tensor& like) {
  return at::empty({static_cast<int64_t>(std::max<size_t>(bytes, 1))},
                   like.options().dtype(at::kByte));
}

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// ----------------------------------------------------------------------------- gram, covariance

at::Tensor gram_cuda(const at::Tensor& Z) {
  check_matrix(Z, "gram", "Z", /*allow_half=*/true);
  const c10::cuda::CUDAGuard guard(Z.device());
  const auto Zc = Z.contiguous();
  const int64_t n = Zc.size(0), d = Zc.size(1);
  const auto out_dtype = Zc.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto S = at::empty({d, d}, Zc.options().dtype(out_dtype));
  const auto dt = dtype_of(Zc.scalar_type());
  auto ws = workspace(kc::gram_workspace_bytes(dt, n, d), Zc);
  check_launch(kc::gram(dt, Zc.const_data_ptr(), n, d, S.mutable_data_ptr(), ws.mutable_data_ptr(),
                        static_cast<size_t>(ws.numel()), current_stream()),
               "gram");
  return S;
}

at::Tensor covariance_cuda(const at::Tensor& theta, const at::Tensor& K) {
  check_matrix(theta, "covariance", "theta");
  check_square(K, "covariance", "K");
  check_same(theta, K, "covariance", "theta", "K");
  TORCH_CHECK_VALUE(K.size(0) == theta.size(0), "condnum.covariance: K must be (D, D) for theta ",
                    "of shape (D, d), got K ", K.sizes(), " and theta ", theta.sizes());
  const c10::cuda::CUDAGuard guard(theta.device());
  const auto th = theta.contiguous();
  const auto Kc = K.contiguous();
  const int64_t D = th.size(0), d = th.size(1);
  auto S = at::empty({d, d}, th.options());
  const auto dt = dtype_of(th.scalar_type());
  auto ws = workspace(kc::covariance_workspace_bytes(dt, D, d), th);
  check_launch(
      kc::covariance(dt, th.const_data_ptr(), Kc.const_data_ptr(), D, d, S.mutable_data_ptr(),
                     ws.mutable_data_ptr(), static_cast<size_t>(ws.numel()), current_stream()),
      "covariance");
  return S;
}

// ----------------------------------------------------------------------------- eigenpairs

void check_steps(int64_t num_iters, int64_t d, const char* op) {
  TORCH_CHECK_VALUE(std::min(num_iters, d) <= kc::kMaxLanczosSteps, "condnum.", op,
                    ": min(num_iters, d) = ", std::min(num_iters, d),
                    " Lanczos steps exceed the CUDA kernels' limit of ", kc::kMaxLanczosSteps,
                    "; pass num_iters <= ", kc::kMaxLanczosSteps);
}

// Shape, device and dtype of a warm start (its norm cannot be checked without a host sync:
// a zero or non-finite warm start is ignored on CUDA).
at::Tensor warm_start(const std::optional<at::Tensor>& v, const at::Tensor& S, const char* op,
                      const char* arg) {
  if (!v.has_value()) return {};
  const auto& t = *v;
  check_vector_for(t, S, op, arg);
  return t.contiguous();
}

const void* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.const_data_ptr() : nullptr; }

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> extreme_eigh_cuda(
    const at::Tensor& S, int64_t num_iters, double rtol, double tol,
    const std::optional<at::Tensor>& v0_min, const std::optional<at::Tensor>& v0_max) {
  check_square(S, "extreme_eigh", "S");
  check_budget(num_iters, tol, "extreme_eigh");
  check_rtol(rtol, "extreme_eigh");
  const auto a = warm_start(v0_max, S, "extreme_eigh", "v0_max");
  const auto b = warm_start(v0_min, S, "extreme_eigh", "v0_min");
  const int64_t d = S.size(0);
  check_steps(num_iters, d, "extreme_eigh");
  const c10::cuda::CUDAGuard guard(S.device());
  const auto Sc = S.contiguous();
  const auto dt = dtype_of(Sc.scalar_type());
  cudaError_t plan_err = cudaSuccess;
  const size_t bytes = kc::extreme_eigh_workspace_bytes(dt, d, num_iters, &plan_err);
  TORCH_CHECK(plan_err == cudaSuccess,
              "condnum.extreme_eigh: cannot plan the CUDA solve for d = ", d,
              ", num_iters = ", num_iters, ": ", cudaGetErrorString(plan_err));
  auto ws = workspace(bytes, Sc);
  auto lam_min = at::empty({}, Sc.options());
  auto lam_max = at::empty({}, Sc.options());
  auto u_min = at::empty({d}, Sc.options());
  auto u_max = at::empty({d}, Sc.options());
  auto err = at::empty({}, Sc.options().dtype(at::kDouble));
  const kc::EighArgs args{dt,
                          Sc.const_data_ptr(),
                          d,
                          num_iters,
                          rtol,
                          tol,
                          ptr_or_null(b),
                          ptr_or_null(a),
                          lam_min.mutable_data_ptr(),
                          lam_max.mutable_data_ptr(),
                          u_min.mutable_data_ptr(),
                          u_max.mutable_data_ptr(),
                          err.mutable_data_ptr<double>()};
  check_launch(kc::extreme_eigh(args, ws.mutable_data_ptr(), bytes, current_stream()),
               "extreme_eigh");
  return {lam_min, lam_max, u_min, u_max, err};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> top_eigh_cuda(const at::Tensor& S, int64_t num_iters,
                                                             double tol,
                                                             const std::optional<at::Tensor>& v0) {
  check_square(S, "top_eigh", "S");
  check_budget(num_iters, tol, "top_eigh");
  const auto a = warm_start(v0, S, "top_eigh", "v0");
  const int64_t d = S.size(0);
  check_steps(num_iters, d, "top_eigh");
  const c10::cuda::CUDAGuard guard(S.device());
  const auto Sc = S.contiguous();
  const auto dt = dtype_of(Sc.scalar_type());
  cudaError_t plan_err = cudaSuccess;
  const size_t bytes = kc::top_eigh_workspace_bytes(dt, d, num_iters, &plan_err);
  TORCH_CHECK(plan_err == cudaSuccess, "condnum.top_eigh: cannot plan the CUDA solve for d = ", d,
              ", num_iters = ", num_iters, ": ", cudaGetErrorString(plan_err));
  auto ws = workspace(bytes, Sc);
  auto lam_max = at::empty({}, Sc.options());
  auto u_max = at::empty({d}, Sc.options());
  auto err = at::empty({}, Sc.options().dtype(at::kDouble));
  const kc::EighArgs args{dt,
                          Sc.const_data_ptr(),
                          d,
                          num_iters,
                          0.0,
                          tol,
                          nullptr,
                          ptr_or_null(a),
                          nullptr,
                          lam_max.mutable_data_ptr(),
                          nullptr,
                          u_max.mutable_data_ptr(),
                          err.mutable_data_ptr<double>()};
  check_launch(kc::top_eigh(args, ws.mutable_data_ptr(), bytes, current_stream()), "top_eigh");
  return {lam_max, u_max, err};
}

// ----------------------------------------------------------------------------- regularizers

// A scalar operand (grad, r) as a 1-element tensor on S's device in S's dtype.
at::Tensor scalar_like(const at::Tensor& t, const at::Tensor& S, const char* op, const char* arg) {
  TORCH_CHECK_VALUE(t.numel() == 1, "condnum.", op, ": ", arg, " must have one element, got shape ",
                    t.sizes());
  return t.to(S.options()).contiguous();
}

template <bool kIll>
at::Tensor regularizer_cuda(const at::Tensor& S, const at::Tensor& lam, const at::Tensor& u,
                            int64_t k) {
  const char* op = kIll ? "r_ill" : "r_well";
  check_spectral_operands(S, lam, u, k, op, kIll ? "lam_min" : "lam_max", kIll ? "u_min" : "u_max");
  const c10::cuda::CUDAGuard guard(S.device());
  const auto Sc = S.contiguous();
  const auto lc = lam.contiguous();
  const int64_t d = Sc.size(0);
  auto out = at::empty({}, Sc.options());
  auto ws = workspace(kc::regularizer_workspace_bytes(d * d), Sc);
  const auto dt = dtype_of(Sc.scalar_type());
  const auto fn = kIll ? kc::r_ill : kc::r_well;
  check_launch(fn(dt, Sc.const_data_ptr(), d, lc.const_data_ptr(), k, out.mutable_data_ptr(),
                  ws.mutable_data_ptr(), static_cast<size_t>(ws.numel()), current_stream()),
               op);
  return out;
}

at::Tensor r_ill_backward_cuda(const at::Tensor& grad, const at::Tensor& S, const at::Tensor& r,
                               const at::Tensor& lam_min, const at::Tensor& u_min, int64_t k) {
  check_spectral_operands(S, lam_min, u_min, k, "_r_ill_backward", "lam_min", "u_min");
  const c10::cuda::CUDAGuard guard(S.device());
  const auto Sc = S.contiguous();
  const auto g = scalar_like(grad, Sc, "_r_ill_backward", "grad");
  const auto rc = scalar_like(r, Sc, "_r_ill_backward", "r");
  const auto lc = lam_min.contiguous();
  const auto uc = u_min.contiguous();
  auto out = at::empty_like(Sc);
  check_launch(
      kc::r_ill_backward(dtype_of(Sc.scalar_type()), g.const_data_ptr(), Sc.const_data_ptr(),
                         rc.const_data_ptr(), lc.const_data_ptr(), uc.const_data_ptr(), Sc.size(0),
                         k, out.mutable_data_ptr(), current_stream()),
      "_r_ill_backward");
  return out;
}

at::Tensor r_well_backward_cuda(const at::Tensor& grad, const at::Tensor& S,
                                const at::Tensor& lam_max, const at::Tensor& u_max, int64_t k) {
  check_spectral_operands(S, lam_max, u_max, k, "_r_well_backward", "lam_max", "u_max");
  const c10::cuda::CUDAGuard guard(S.device());
  const auto Sc = S.contiguous();
  const auto g = scalar_like(grad, Sc, "_r_well_backward", "grad");
  const auto lc = lam_max.contiguous();
  const auto uc = u_max.contiguous();
  auto out = at::empty_like(Sc);
  check_launch(kc::r_well_backward(dtype_of(Sc.scalar_type()), g.const_data_ptr(),
                                   Sc.const_data_ptr(), lc.const_data_ptr(), uc.const_data_ptr(),
                                   Sc.size(0), k, out.mutable_data_ptr(), current_stream()),
               "_r_well_backward");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(condnum, CUDA, m) {
  m.impl("gram", &gram_cuda);
  m.impl("covariance", &covariance_cuda);
  m.impl("extreme_eigh", &extreme_eigh_cuda);
  m.impl("top_eigh", &top_eigh_cuda);
  m.impl("r_ill", &regularizer_cuda<true>);
  m.impl("r_well", &regularizer_cuda<false>);
  m.impl("_r_ill_backward", &r_ill_backward_cuda);
  m.impl("_r_well_backward", &r_well_backward_cuda);
}

}  // namespace condnum
