#include "cpu/symmetric_matvec.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "cpu/avx2.h"
#include "cpu/checks.h"

namespace condnum {
namespace {

// S's size from which the triangle kernel serves the solvers (symmetric_matvec.h).
constexpr int64_t kTriangleBytes = int64_t{4} << 20;
// d / kChunkRows chunks, at most kMaxChunks: enough for the threads to share (d = 768 makes
// 4), few enough that the chunks' column buffers (one pass over d each) stay cheap.
constexpr int64_t kChunkRows = 192;
constexpr int64_t kMaxChunks = 16;
// Rows a block of the own kernel takes at once: its column terms are added to the buffer
// once per block. The same for one vector and two, so that each vector's bits do not depend
// on whether it is paired.
constexpr int kBlockRows = 4;

// Chunk boundaries, multiples of the block height: chunk c starts at the row above which a
// fraction c / chunks of the upper triangle's area lies.
std::vector<int64_t> chunk_bounds(int64_t d) {
  const int64_t chunks = std::clamp<int64_t>(d / kChunkRows, 1, kMaxChunks);
  std::vector<int64_t> b(chunks + 1, d);
  for (int64_t c = 0; c < chunks; ++c) {
    const double row = d * (1.0 - std::sqrt(1.0 - static_cast<double>(c) / chunks));
    b[c] = std::min<int64_t>(d, std::llround(row / kBlockRows) * kBlockRows);
  }
  return b;
}

#ifdef CONDNUM_X86_DISPATCH
// Rows i .. i + NR - 1 of the upper triangle, for K vectors: each row's own terms
// sum_{j >= i} S_ij x_j into y_i, and its column terms S_ij x_i (j > i) added to the chunk's
// buffers col. The NR x NR block on the diagonal and the tail past the last full register
// go one entry at a time; in between, each register of S is loaded once for both sums.
template <typename T, int K, int NR>
__attribute__((target("avx2,fma"))) void triangle_rows_avx2(const T* S, int64_t d,
                                                             const T* const* x, T* const* y,
                                                             T* const* col, int64_t i) {
  using R = Avx2<T>;
  constexpr int64_t L = R::lanes;
  T own[NR][K];
  for (int r = 0; r < NR; ++r) {
    const T* s = S + (i + r) * d;
    for (int k = 0; k < K; ++k) own[r][k] = s[i + r] * x[k][i + r];
    for (int64_t j = i + r + 1; j < i + NR; ++j)
      for (int k = 0; k < K; ++k) {
        own[r][k] = std::fma(s[j], x[k][j], own[r][k]);
        col[k][j] = std::fma(s[j], x[k][i + r], col[k][j]);
      }
  }
  // x_i of each row in registers: a store to col could alias x, so they are read once here.
  typename R::V acc[NR][K], xi[NR][K];
  for (int r = 0; r < NR; ++r)
    for (int k = 0; k < K; ++k) {
      acc[r][k] = R::zero();
      xi[r][k] = R::broadcast(x[k][i + r]);
    }
  int64_t j = i + NR;
  for (; j + L <= d; j += L) {
    typename R::V xj[K], cj[K];
    for (int k = 0; k < K; ++k) {
      xj[k] = R::load(x[k] + j);
      cj[k] = R::load(col[k] + j);
    }
#pragma GCC unroll 4
    for (int r = 0; r < NR; ++r) {
      const auto s = R::load(S + (i + r) * d + j);
#pragma GCC unroll 2
      for (int k = 0; k < K; ++k) {
        acc[r][k] = R::fma(s, xj[k], acc[r][k]);
        cj[k] = R::fma(s, xi[r][k], cj[k]);
      }
    }
    for (int k = 0; k < K; ++k) R::store(col[k] + j, cj[k]);
  }
  for (; j < d; ++j)
    for (int r = 0; r < NR; ++r)
      for (int k = 0; k < K; ++k) {
        const T s = S[(i + r) * d + j];
        own[r][k] = std::fma(s, x[k][j], own[r][k]);
        col[k][j] = std::fma(s, x[k][i + r], col[k][j]);
      }
  for (int r = 0; r < NR; ++r)
    for (int k = 0; k < K; ++k) y[k][i + r] = R::sum(acc[r][k]) + own[r][k];
}
#endif

}  // namespace

bool triangle_pays(const at::Tensor& S) { return S.nbytes() >= kTriangleBytes; }

SymmetricProduct::SymmetricProduct(const at::Tensor& S, Matvec kind, bool triangle)
    : S_(S), kind_(kind), bounds_(chunk_bounds(S.size(0))) {
  TORCH_INTERNAL_ASSERT(S.dim() == 2 && S.size(0) == S.size(1) && S.is_contiguous());
#ifdef CONDNUM_X86_DISPATCH
  if (triangle && kind_ == Matvec::own && cpu_has_avx2_fma()) {
    const auto chunks = static_cast<int64_t>(bounds_.size()) - 1;
    columns_ = at::empty({chunks, 2, S.size(0)}, S.options());
  }
#endif
}

template <int K>
void SymmetricProduct::own(const at::Tensor* const (&x)[K], at::Tensor* const (&y)[K]) {
#ifdef CONDNUM_X86_DISPATCH
  const int64_t d = S_.size(0);
  for (int k = 0; k < K; ++k)
    TORCH_INTERNAL_ASSERT(x[k]->is_contiguous() && y[k]->is_contiguous() &&
                          x[k]->numel() == d && y[k]->numel() == d &&
                          x[k]->scalar_type() == S_.scalar_type() &&
                          y[k]->scalar_type() == S_.scalar_type());
  const auto& b = bounds_;
  const int64_t chunks = static_cast<int64_t>(b.size()) - 1;
  AT_DISPATCH_FLOATING_TYPES(S_.scalar_type(), "condnum::symmetric_matvec", [&] {
    const scalar_t* s = S_.const_data_ptr<scalar_t>();
    scalar_t* columns = columns_.mutable_data_ptr<scalar_t>();
    const scalar_t* xs[K];
    scalar_t* ys[K];
    for (int k = 0; k < K; ++k) {
      xs[k] = x[k]->template const_data_ptr<scalar_t>();
      ys[k] = y[k]->template mutable_data_ptr<scalar_t>();
    }
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        scalar_t* col[K];
        for (int k = 0; k < K; ++k) {
          col[k] = columns + (2 * c + k) * d;
          std::fill(col[k] + b[c], col[k] + d, scalar_t(0));
        }
        int64_t i = b[c];
        for (; i + kBlockRows <= b[c + 1]; i += kBlockRows)
          triangle_rows_avx2<scalar_t, K, kBlockRows>(s, d, xs, ys, col, i);
        for (; i < b[c + 1]; ++i) triangle_rows_avx2<scalar_t, K, 1>(s, d, xs, ys, col, i);
      }
    });
    // y_i += the chunks' column terms, chunk by chunk (a chunk has none below its first row).
    at::parallel_for(0, d, 4096, [&](int64_t i0, int64_t i1) {
      for (int64_t c = 0; c < chunks; ++c)
        for (int k = 0; k < K; ++k) {
          const scalar_t* col = columns + (2 * c + k) * d;
          for (int64_t i = std::max(i0, b[c]); i < i1; ++i) ys[k][i] += col[i];
        }
    });
  });
#else
  TORCH_INTERNAL_ASSERT(false, "condnum: the symmetric product's own kernel needs x86");
#endif
}

void SymmetricProduct::operator()(at::Tensor& y, const at::Tensor& x) {
  if (!columns_.defined()) return matvec_out(y, S_, x, kind_);
  own<1>({&x}, {&y});
}

void SymmetricProduct::operator()(at::Tensor& y1, at::Tensor& y2, const at::Tensor& x1,
                                  const at::Tensor& x2) {
  if (!columns_.defined()) return matvec2_out(y1, y2, S_, x1, x2, kind_);
  own<2>({&x1, &x2}, {&y1, &y2});
}

namespace {

// x: (d,) -> S x, or (2, d) -> its rows' products as rows, by the own kernel (S's upper
// triangle; the row-by-row kernel where the CPU lacks AVX2 and FMA).
at::Tensor symmetric_matvec_op(const at::Tensor& S, const at::Tensor& x) {
  check_one_or_two_vectors(S, x, /*square=*/true, "_symmetric_matvec", "S", "x");
  check_same_float(S, x, "_symmetric_matvec", "S", "x");
  SymmetricProduct product(S.contiguous(), Matvec::own, /*triangle=*/true);
  const auto xc = x.contiguous();
  auto y = at::empty(x.sizes(), S.options());
  if (x.dim() == 1) {
    product(y, xc);
  } else {
    auto y1 = y[0], y2 = y[1];
    product(y1, y2, xc[0], xc[1]);
  }
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(condnum, CPU, m) { m.impl("_symmetric_matvec", &symmetric_matvec_op); }

}  // namespace condnum
