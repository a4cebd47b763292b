#include "cpu/matvec.h"

#include <ATen/Config.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <tuple>
#include <vector>

#include "cpu/avx2.h"
#include "cpu/checks.h"

namespace condnum {
namespace {

// Each row: for each of the K vectors, four partial sums over blocks of 4, combined as
// (s0 + s1) + (s2 + s3), then the tail. The fallback where AVX2 + FMA are missing.
template <typename T, int K>
void rows_portable(const T* A, int64_t cols, const T* const* x, T* const* y, int64_t begin,
                   int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    const T* a = A + i * cols;
    T s[K][4] = {};
    int64_t j = 0;
    for (; j + 4 <= cols; j += 4)
      for (int k = 0; k < K; ++k)
        for (int q = 0; q < 4; ++q) s[k][q] += a[j + q] * x[k][j + q];
    for (int k = 0; k < K; ++k) {
      T t = (s[k][0] + s[k][1]) + (s[k][2] + s[k][3]);
      for (int64_t r = j; r < cols; ++r) t += a[r] * x[k][r];
      y[k][i] = t;
    }
  }
}

// w_c -= sum_r h_r A_rc for columns c >= c0, the rows in order, one fused multiply-add each:
// the Gram-Schmidt subtraction's fallback and the tail of its AVX2 form.
template <typename T>
void sub_columns_plain(const T* A, int64_t rows, int64_t cols, const T* h, T* w, int64_t c0) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = c0; c < cols; ++c) w[c] = std::fma(-h[r], A[r * cols + c], w[c]);
}

#ifdef CONDNUM_X86_DISPATCH
// Rows i .. i + NR - 1: for each row and each of the K vectors one accumulator over the
// row's blocks of one register, the lanes summed in a fixed order, then the scalar tail.
// Each block of the row is loaded once for all K vectors, and each block of x once for all
// NR rows; each (row, vector) result is bitwise the same for any NR and K.
template <typename T, int K, int NR>
__attribute__((target("avx2,fma"))) void row_block_avx2(const T* A, int64_t cols,
                                                         const T* const* x, T* const* y,
                                                         int64_t i) {
  using R = Avx2<T>;
  constexpr int64_t L = R::lanes;
  typename R::V acc[NR][K];
  for (int r = 0; r < NR; ++r)
    for (int k = 0; k < K; ++k) acc[r][k] = R::zero();
  const T* a = A + i * cols;
  int64_t j = 0;
  for (; j + L <= cols; j += L) {
    typename R::V xj[K];
    for (int k = 0; k < K; ++k) xj[k] = R::load(x[k] + j);
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) {
      const auto row = R::load(a + r * cols + j);
#pragma GCC unroll 2
      for (int k = 0; k < K; ++k) acc[r][k] = R::fma(row, xj[k], acc[r][k]);
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int k = 0; k < K; ++k) {
      T s = R::sum(acc[r][k]);
      for (int64_t c = j; c < cols; ++c) s += a[r * cols + c] * x[k][c];
      y[k][i + r] = s;
    }
}

// Rows in blocks of 8 / K, so that 8 independent accumulators hide the FMA latency and
// several rows stream at once, which keeps more loads from memory in flight than one row
// does: that bounds a product whose S does not fit in cache (AMD EPYC Zen 3, 2 threads,
// d = 2048 float64: 1.6x faster than one row at a time, and faster than MKL's).
template <typename T, int K>
__attribute__((target("avx2,fma"))) void rows_avx2(const T* A, int64_t cols, const T* const* x,
                                                    T* const* y, int64_t begin, int64_t end) {
  constexpr int NR = 8 / K;
  int64_t i = begin;
  for (; i + NR <= end; i += NR) row_block_avx2<T, K, NR>(A, cols, x, y, i);
  for (; i < end; ++i) row_block_avx2<T, K, 1>(A, cols, x, y, i);
}

// w_c -= sum_r h_r A_rc for columns c in [c0, c0 + NT L): NT registers of w kept while the
// rows stream past, the rows in order, one fused multiply-add each.
template <typename T, int NT>
__attribute__((target("avx2,fma"))) void sub_columns_avx2(const T* A, int64_t rows, int64_t cols,
                                                           const T* h, T* w, int64_t c0) {
  using R = Avx2<T>;
  constexpr int64_t L = R::lanes;
  typename R::V acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = R::load(w + c0 + t * L);
  for (int64_t r = 0; r < rows; ++r) {
    const auto hr = R::broadcast(h[r]);
    const T* a = A + r * cols + c0;
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) acc[t] = R::fnma(R::load(a + t * L), hr, acc[t]);
  }
  for (int t = 0; t < NT; ++t) R::store(w + c0 + t * L, acc[t]);
}

template <typename T>
__attribute__((target("avx2,fma"))) void sub_transposed_avx2(const T* A, int64_t rows,
                                                              int64_t cols, const T* h, T* w) {
  constexpr int64_t L = Avx2<T>::lanes;
  int64_t c = 0;
  for (; c + 8 * L <= cols; c += 8 * L) sub_columns_avx2<T, 8>(A, rows, cols, h, w, c);
  for (; c + L <= cols; c += L) sub_columns_avx2<T, 1>(A, rows, cols, h, w, c);
  sub_columns_plain(A, rows, cols, h, w, c);
}
#endif

// w -= A^T h, each w_c minus h_r A_rc in the order of the rows, one fused multiply-add each.
template <typename T>
void sub_transposed(const T* A, int64_t rows, int64_t cols, const T* h, T* w) {
#ifdef CONDNUM_X86_DISPATCH
  if (cpu_has_avx2_fma()) return sub_transposed_avx2<T>(A, rows, cols, h, w);
#endif
  sub_columns_plain(A, rows, cols, h, w, 0);
}

bool mkl_on_amd() {
#if defined(CONDNUM_X86_DISPATCH) && AT_MKL_ENABLED()
  static const bool yes = __builtin_cpu_is("amd") && cpu_has_avx2_fma();
  return yes;
#else
  return false;
#endif
}

// y_k = A x_k for the K vectors, in one pass over A.
template <typename T, int K>
void own_matvec(const T* A, int64_t rows, int64_t cols, const T* const* x, T* const* y) {
  // Threads only for products worth ~32k multiply-adds per chunk.
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, K * cols));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
#ifdef CONDNUM_X86_DISPATCH
    if (cpu_has_avx2_fma()) return rows_avx2<T, K>(A, cols, x, y, begin, end);
#endif
    rows_portable<T, K>(A, cols, x, y, begin, end);
  });
}

// y[k] = A x[k] for the K pairs by own_matvec, after checking each one's shapes and dtype.
template <int K>
void own_products(const at::Tensor& A, const at::Tensor* const (&x)[K],
                  at::Tensor* const (&y)[K]) {
  for (int k = 0; k < K; ++k)
    TORCH_INTERNAL_ASSERT(A.dim() == 2 && A.is_contiguous() && x[k]->is_contiguous() &&
                          y[k]->is_contiguous() && x[k]->numel() == A.size(1) &&
                          y[k]->numel() == A.size(0) &&
                          x[k]->scalar_type() == A.scalar_type() &&
                          y[k]->scalar_type() == A.scalar_type());
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "condnum::matvec", [&] {
    const scalar_t* xs[K];
    scalar_t* ys[K];
    for (int k = 0; k < K; ++k) {
      xs[k] = x[k]->template const_data_ptr<scalar_t>();
      ys[k] = y[k]->template mutable_data_ptr<scalar_t>();
    }
    own_matvec<scalar_t, K>(A.const_data_ptr<scalar_t>(), A.size(0), A.size(1), xs, ys);
  });
}

}  // namespace

bool cpu_has_avx2_fma() {
#ifdef CONDNUM_X86_DISPATCH
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
#else
  return false;
#endif
}

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
  own_products<1>(A, {&x}, {&y});
}

void matvec2_out(at::Tensor& y1, at::Tensor& y2, const at::Tensor& A, const at::Tensor& x1,
                 const at::Tensor& x2, Matvec kind) {
  if (kind == Matvec::blas) {
    at::mv_out(y1, A, x1);
    at::mv_out(y2, A, x2);
    return;
  }
  own_products<2>(A, {&x1, &x2}, {&y1, &y2});
}

void gram_schmidt_pass(const at::Tensor& V, int64_t rows, at::Tensor& w, at::Tensor& h,
                       Matvec kind) {
  // A profiler range whose inputs give the basis' shape (built only while profiling).
  RECORD_FUNCTION("condnum::gram_schmidt_pass",
                  std::vector<c10::IValue>({V.narrow(0, 0, rows), w}));
  if (kind == Matvec::blas) {
    const auto basis = V.narrow(0, 0, rows);
    auto hr = h.narrow(0, 0, rows);
    at::mv_out(hr, basis, w);
    at::addmv_out(w, w, basis.t(), hr, /*beta=*/1, /*alpha=*/-1);
    return;
  }
  TORCH_INTERNAL_ASSERT(V.dim() == 2 && V.is_contiguous() && rows <= V.size(0) &&
                        w.is_contiguous() && w.numel() == V.size(1) && h.is_contiguous() &&
                        h.numel() >= rows && w.scalar_type() == V.scalar_type() &&
                        h.scalar_type() == V.scalar_type());
  AT_DISPATCH_FLOATING_TYPES(V.scalar_type(), "condnum::gram_schmidt_pass", [&] {
    const scalar_t* a = V.const_data_ptr<scalar_t>();
    const scalar_t* x[1] = {w.const_data_ptr<scalar_t>()};
    scalar_t* y[1] = {h.mutable_data_ptr<scalar_t>()};
    own_matvec<scalar_t, 1>(a, rows, V.size(1), x, y);
    sub_transposed<scalar_t>(a, rows, V.size(1), y[0], w.mutable_data_ptr<scalar_t>());
  });
}

namespace {

// x: (cols,) -> A x, or (2, cols) -> its rows' products as rows, by the paired kernel.
at::Tensor own_matvec_op(const at::Tensor& A, const at::Tensor& x) {
  check_one_or_two_vectors(A, x, /*square=*/false, "_matvec", "A", "x");
  check_same_float(A, x, "_matvec", "A", "x");
  const auto a = A.contiguous();
  const auto xc = x.contiguous();
  if (x.dim() == 1) {
    auto y = at::empty({A.size(0)}, A.options());
    matvec_out(y, a, xc, Matvec::own);
    return y;
  }
  auto y = at::empty({2, A.size(0)}, A.options());
  auto y1 = y[0], y2 = y[1];
  matvec2_out(y1, y2, a, xc[0], xc[1], Matvec::own);
  return y;
}

// (w - V^T h, h) with h = V w, by the own Gram-Schmidt pass.
std::tuple<at::Tensor, at::Tensor> own_gram_schmidt_op(const at::Tensor& V, const at::Tensor& w) {
  TORCH_CHECK_VALUE(V.dim() == 2 && w.dim() == 1 && w.size(0) == V.size(1),
                    "condnum._gram_schmidt_pass: V must be (rows, cols) and w (cols,), got ",
                    V.sizes(), " and ", w.sizes());
  check_same_float(V, w, "_gram_schmidt_pass", "V", "w");
  auto out = w.contiguous().clone();
  auto h = at::empty({V.size(0)}, V.options());
  gram_schmidt_pass(V.contiguous(), V.size(0), out, h, Matvec::own);
  return {out, h};
}

}  // namespace

TORCH_LIBRARY_IMPL(condnum, CPU, m) {
  m.impl("_matvec", &own_matvec_op);
  m.impl("_gram_schmidt_pass", &own_gram_schmidt_op);
}

}  // namespace condnum
