// The 256-bit AVX2 registers of the own CPU kernels (products, Gram-Schmidt, Cholesky solves), for
// the x86 builds that can dispatch to them (CONDNUM_X86_DISPATCH); the kernels call them only
// where the CPU has AVX2 and FMA (cpu_has_avx2_fma in matvec.h).
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define CONDNUM_X86_DISPATCH 1
#include <immintrin.h>

#include <cstdint>

namespace condnum {

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
  CONDNUM_AVX2 static V broadcast(float x) { return _mm256_set1_ps(x); }
  CONDNUM_AVX2 static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  CONDNUM_AVX2 static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  CONDNUM_AVX2 static V fnma(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); }  // c - a b
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
  CONDNUM_AVX2 static V broadcast(double x) { return _mm256_set1_pd(x); }
  CONDNUM_AVX2 static void store(double* p, V v) { _mm256_storeu_pd(p, v); }
  CONDNUM_AVX2 static V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  CONDNUM_AVX2 static V fnma(V a, V b, V c) { return _mm256_fnmadd_pd(a, b, c); }  // c - a b
  CONDNUM_AVX2 static double sum(V v) {  // lanes (0+2, 1+3), then pairwise
    const __m128d h = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_hadd_pd(h, h));
  }
};

#undef CONDNUM_AVX2

}  // namespace condnum
#endif
