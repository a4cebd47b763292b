#include "cpu/matvec.h"

#include <ATen/Config.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define CONDNUM_X86_DISPATCH 1
#include <immintrin.h>
#endif

namespace condnum {
namespace {

// Each row: four partial sums over blocks of 4, combined as (s0 + s1) + (s2 + s3), then the
// tail. The fallback where AVX2 + FMA are missing.
template <typename T>
void rows_portable(const T* A, int64_t cols, const T* x, T* y, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    const T* a = A + i * cols;
    T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int64_t j = 0;
    for (; j + 4 <= cols; j += 4) {
      s0 += a[j] * x[j];
      s1 += a[j + 1] * x[j + 1];
      s2 += a[j + 2] * x[j + 2];
      s3 += a[j + 3] * x[j + 3];
    }
    T s = (s0 + s1) + (s2 + s3);
    for (; j < cols; ++j) s += a[j] * x[j];
    y[i] = s;
  }
}

#ifdef CONDNUM_X86_DISPATCH
bool has_avx2_fma() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
}

#define CONDNUM_AVX2 __attribute__((target("avx2,fma"))) inline

// The 256-bit registers of each dtype: 8 float or 4 double lanes.
template <typename T>
struct Avx2;
template <>
struct Avx2<float> {
  using V = __m256;
  static constexpr int64_t lanes = 8;
  CONDNUM_AVX2 static V zero() { return _mm256_setzero_ps(); }
  CONDNUM_AVX2 static V load(const float* p) { return _mm256_loadu_ps(p); }
  CONDNUM_AVX2 static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  CONDNUM_AVX2 static V add(V a, V b) { return _mm256_add_ps(a, b); }
  CONDNUM_AVX2 static float sum(V v) {  // lanes (0+4, 1+5, 2+6, 3+7), then pairwise
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    h = _mm_hadd_ps(h, h);
    return _mm_cvtss_f32(_mm_hadd_ps(h, h));
  }
};
template <>
struct Avx2<double> {
  using V = __m256d;
  static constexpr int64_t lanes = 4;
  CONDNUM_AVX2 static V zero() { return _mm256_setzero_pd(); }
  CONDNUM_AVX2 static V load(const double* p) { return _mm256_loadu_pd(p); }
  CONDNUM_AVX2 static V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  CONDNUM_AVX2 static V add(V a, V b) { return _mm256_add_pd(a, b); }
  CONDNUM_AVX2 static double sum(V v) {  // lanes (0+2, 1+3), then pairwise
    const __m128d h = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_hadd_pd(h, h));
  }
};

// Each row: four accumulators over blocks of 4 registers, summed as (a0 + a1) + (a2 + a3),
// the lanes in a fixed order, then the scalar tail.
template <typename T>
__attribute__((target("avx2,fma"))) void rows_avx2(const T* A, int64_t cols, const T* x, T* y,
                                                    int64_t begin, int64_t end) {
  using R = Avx2<T>;
  constexpr int64_t L = R::lanes;
  for (int64_t i = begin; i < end; ++i) {
    const T* a = A + i * cols;
    auto a0 = R::zero(), a1 = a0, a2 = a0, a3 = a0;
    int64_t j = 0;
    for (; j + 4 * L <= cols; j += 4 * L) {
      a0 = R::fma(R::load(a + j), R::load(x + j), a0);
      a1 = R::fma(R::load(a + j + L), R::load(x + j + L), a1);
      a2 = R::fma(R::load(a + j + 2 * L), R::load(x + j + 2 * L), a2);
      a3 = R::fma(R::load(a + j + 3 * L), R::load(x + j + 3 * L), a3);
    }
    T s = R::sum(R::add(R::add(a0, a1), R::add(a2, a3)));
    for (; j < cols; ++j) s += a[j] * x[j];
    y[i] = s;
  }
}
#undef CONDNUM_AVX2
#endif

bool mkl_on_amd() {
#if defined(CONDNUM_X86_DISPATCH) && AT_MKL_ENABLED()
  static const bool yes = __builtin_cpu_is("amd") && has_avx2_fma();
  return yes;
#else
  return false;
#endif
}

template <typename T>
void own_matvec(const T* A, int64_t rows, int64_t cols, const T* x, T* y) {
  // Threads only for products worth ~32k multiply-adds per chunk.
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, cols));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
#ifdef CONDNUM_X86_DISPATCH
    if (has_avx2_fma()) return rows_avx2(A, cols, x, y, begin, end);
#endif
    rows_portable(A, cols, x, y, begin, end);
  });
}

}  // namespace

Matvec matvec_choice() {
  const char* env = std::getenv("CONDNUM_MATVEC");
  if (env == nullptr || *env == '\0') return mkl_on_amd() ? Matvec::own : Matvec::blas;
  if (std::strcmp(env, "own") == 0) return Matvec::own;
  TORCH_CHECK_VALUE(std::strcmp(env, "blas") == 0,
                    "condnum: CONDNUM_MATVEC must be 'own' or 'blas', got '", env, "'");
  return Matvec::blas;
}

const char* matvec_name(Matvec kind) { return kind == Matvec::own ? "own" : "blas"; }

void matvec_out(at::Tensor& y, const at::Tensor& A, const at::Tensor& x, Matvec kind) {
  if (kind == Matvec::blas) {
    at::mv_out(y, A, x);
    return;
  }
  TORCH_INTERNAL_ASSERT(A.dim() == 2 && A.is_contiguous() && x.is_contiguous() &&
                        y.is_contiguous() && x.numel() == A.size(1) && y.numel() == A.size(0));
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "condnum::matvec", [&] {
    own_matvec(A.const_data_ptr<scalar_t>(), A.size(0), A.size(1), x.const_data_ptr<scalar_t>(),
               y.mutable_data_ptr<scalar_t>());
  });
}

namespace {

at::Tensor own_matvec_op(const at::Tensor& A, const at::Tensor& x) {
  TORCH_CHECK_VALUE(A.dim() == 2 && x.dim() == 1 && x.size(0) == A.size(1),
                    "condnum._matvec: A must be (rows, cols) and x (cols,), got ", A.sizes(),
                    " and ", x.sizes());
  TORCH_CHECK_VALUE(A.scalar_type() == x.scalar_type() &&
                        (A.scalar_type() == at::kFloat || A.scalar_type() == at::kDouble),
                    "condnum._matvec: A and x must both be float32 or both float64");
  auto y = at::empty({A.size(0)}, A.options());
  matvec_out(y, A.contiguous(), x.contiguous(), Matvec::own);
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(condnum, CPU, m) { m.impl("_matvec", &own_matvec_op); }

}  // namespace condnum
