// gram(Z) = Z^T Z and covariance(theta, K) = theta^T K theta on the CPU.
//
// Both are symmetric products A^T B with A^T B = B^T A. Only the upper triangle is
// computed, as row panels S[i0:i1, i0:d] = A[:, i0:i1]^T B[:, i0:d] (one BLAS GEMM
// each, written in place), then mirrored, so the result is exactly symmetric and
// costs about (1/2 + b/(2d)) of a full GEMM for panel height b.
//   Z: (N, d) -> S: (d, d)        2 N d^2 / 2 flops
//   theta: (D, d), K: (D, D)      K theta: 2 D^2 d, then theta^T (K theta): D d^2
// Half-precision Z is converted to float32 first (float32 accumulation). float32 products
// run in float64, rounded once, while torch may run float32 matmuls on the CPU in bfloat16 or
// TF32 (oneDNN, on CPUs with such units): S feeds the eigen-solves.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <torch/library.h>
#include <torch/version.h>

#include "cpu/checks.h"

namespace condnum {
namespace {

constexpr int64_t kPanel = 128;  // panel height: large enough for GEMM efficiency

// Copies the strict upper triangle of the d x d contiguous S onto the lower one.
void mirror_upper(at::Tensor& S) {
  const int64_t d = S.size(0);
  AT_DISPATCH_FLOATING_TYPES(S.scalar_type(), "mirror_upper", [&] {
    scalar_t* s = S.mutable_data_ptr<scalar_t>();
    constexpr int64_t tile = 64;  // transpose tile-by-tile to stay in cache
    at::parallel_for(0, (d + tile - 1) / tile, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t bi = b0; bi < b1; ++bi)
        for (int64_t bj = 0; bj <= bi; ++bj)
          for (int64_t i = bi * tile; i < std::min(d, (bi + 1) * tile); ++i)
            for (int64_t j = bj * tile; j < std::min(i, (bj + 1) * tile); ++j)
              s[i * d + j] = s[j * d + i];
    });
  });
}

// Whether torch may run a float32 matmul on the CPU below float32 precision: on torch >= 2.13
// its oneDNN matmul setting (resolved from its parents); before, the global setting, whose
// getter raises once the per-backend ones of torch >= 2.9 have been set: then it is assumed
// reduced.
bool reduced_fp32_matmul() {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 13)
  const auto p =
      at::globalContext().float32Precision(at::Float32Backend::MKLDNN, at::Float32Op::MATMUL);
  return p == at::Float32Precision::BF16 || p == at::Float32Precision::TF32;
#else
  try {
    return at::globalContext().float32MatmulPrecision() != at::Float32MatmulPrecision::HIGHEST;
  } catch (const c10::Error&) {
    return true;
  }
#endif
}

// The dtype products of dtype t are formed in: float64 for float32 while torch may run its
// matmuls below float32 precision (the result is rounded to float32 once), else t.
at::ScalarType product_dtype(at::ScalarType t) {
  return t == at::kFloat && reduced_fp32_matmul() ? at::kDouble : t;
}

// S = A^T B for A, B: (n, d) whose product is known to be symmetric.
at::Tensor symmetric_atb(const at::Tensor& A, const at::Tensor& B) {
  const int64_t d = A.size(1);
  auto S = at::empty({d, d}, A.options());
  for (int64_t i0 = 0; i0 < d; i0 += kPanel) {
    const int64_t h = std::min(kPanel, d - i0);
    auto panel = S.narrow(0, i0, h).narrow(1, i0, d - i0);  // row-major, ld = d
    at::mm_out(panel, A.narrow(1, i0, h).t(), B.narrow(1, i0, d - i0));
  }
  mirror_upper(S);
  return S;
}

at::Tensor gram_cpu(const at::Tensor& Z) {
  check_matrix(Z, "gram", "Z", /*allow_half=*/true);
  // Contiguous, so that BLAS (and the last bits of S) do not depend on Z's layout.
  const auto Zf = (at::elementSize(Z.scalar_type()) < 4 ? Z.to(at::kFloat) : Z).contiguous();
  const auto Zp = Zf.to(product_dtype(Zf.scalar_type()));
  return symmetric_atb(Zp, Zp).to(Zf.scalar_type());
}

at::Tensor covariance_cpu(const at::Tensor& theta, const at::Tensor& K) {
  check_matrix(theta, "covariance", "theta");
  check_square(K, "covariance", "K");
  check_same(theta, K, "covariance", "theta", "K");
  TORCH_CHECK_VALUE(K.size(0) == theta.size(0), "condnum.covariance: K must be (D, D) for theta ",
                    "of shape (D, d), got K ", K.sizes(), " and theta ", theta.sizes());
  const auto Ks = symmetrized(K, "covariance", "K", K.scalar_type()).W;
  const auto t = theta.contiguous();
  const auto dt = product_dtype(t.scalar_type());
  const auto tp = t.to(dt);
  return symmetric_atb(tp, at::mm(Ks.to(dt), tp)).to(t.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(condnum, CPU, m) {
  m.impl("gram", &gram_cpu);
  m.impl("covariance", &covariance_cpu);
}

}  // namespace condnum
