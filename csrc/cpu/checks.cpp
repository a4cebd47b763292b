#include "cpu/checks.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <utility>
#include <vector>

namespace condnum {

namespace {

// Tiles of kTile x kTile: the pair (S_IJ, S_JI) of two tiles stays in L1 while compared.
constexpr int64_t kTile = 32;

struct Measure {
  double max_abs = 0, max_asym = 0;
  bool finite = true;
};

// Upper-triangle tile pairs (I <= J), so the work can be split evenly between threads.
std::vector<std::pair<int64_t, int64_t>> tile_pairs(int64_t d) {
  const int64_t nt = (d + kTile - 1) / kTile;
  std::vector<std::pair<int64_t, int64_t>> pairs;
  pairs.reserve(nt * (nt + 1) / 2);
  for (int64_t I = 0; I < nt; ++I)
    for (int64_t J = I; J < nt; ++J) pairs.emplace_back(I * kTile, J * kTile);
  return pairs;
}

// Visits the tile pairs of S (d x d, unit column stride, row stride ld) in parallel. For
// each pair, `fn(i0, rows, j0, cols, a, bt)` gets a = &S[i0, j0] (row stride ld) and
// bt = S[j0:j0+cols, i0:i0+rows]^T copied into a kTile x kTile buffer, so that
// a[r * ld + c] and bt[r * kTile + c] are the two mirror entries S_ij and S_ji.
template <typename scalar_t, typename F>
void for_tile_pairs(const scalar_t* s, int64_t d, int64_t ld, F fn) {
  const auto pairs = tile_pairs(d);
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 15) / (kTile * kTile));
  at::parallel_for(0, static_cast<int64_t>(pairs.size()), grain, [&](int64_t begin, int64_t end) {
    alignas(64) scalar_t bt[kTile * kTile];
    for (int64_t p = begin; p < end; ++p) {
      const auto [i0, j0] = pairs[p];
      const int64_t rows = std::min(kTile, d - i0), cols = std::min(kTile, d - j0);
      for (int64_t c = 0; c < cols; ++c) {
        const scalar_t* src = s + (j0 + c) * ld + i0;
        for (int64_t r = 0; r < rows; ++r) bt[r * kTile + c] = src[r];
      }
      fn(p, i0, rows, j0, cols, s + i0 * ld + j0, bt);
    }
  });
}

#if defined(__GNUC__) && !defined(__clang__)
#define CONDNUM_ALWAYS_INLINE inline __attribute__((always_inline))
#define CONDNUM_VECTOR_TRANSPOSE 1
#else
#define CONDNUM_ALWAYS_INLINE inline
#define CONDNUM_VECTOR_TRANSPOSE 0
#endif

// Running maxima of |S_ij| and |S_ij - S_ji| and a NaN probe (x * 0 is NaN exactly when x
// is not finite), over mirror entries x = S_ij, y = S_ji.
struct Acc {
  double m_abs = 0, m_asym = 0, probe = 0;
  template <typename T>
  CONDNUM_ALWAYS_INLINE void add(T x, T y) {
    probe += x * 0 + y * 0;
    m_abs = std::max({m_abs, static_cast<double>(std::abs(x)), static_cast<double>(std::abs(y))});
    m_asym = std::max(m_asym, static_cast<double>(std::abs(x - y)));
  }
};

// Compares the block S[i0:i0+rows, j0:j0+cols] with the mirror block S[j0:.., i0:..]^T
// (row stride ld). 8 x 8 blocks are transposed in registers (GCC vector shuffles); the
// ragged edge is compared element by element.
template <typename T>
CONDNUM_ALWAYS_INLINE void compare_tile(const T* s, int64_t ld, int64_t i0, int64_t rows,
                                        int64_t j0, int64_t cols, Acc& acc) {
  int64_t r8 = 0, c8 = 0;
#if CONDNUM_VECTOR_TRANSPOSE
  using I = std::conditional_t<sizeof(T) == 8, int64_t, int32_t>;
  typedef T V __attribute__((vector_size(8 * sizeof(T)), aligned(sizeof(T)), may_alias));
  typedef I M __attribute__((vector_size(8 * sizeof(T))));
  r8 = rows - rows % 8;
  c8 = cols - cols % 8;
  const V z = {};
  V va = z, vd = z, vp = z;
  // |v| by clearing the sign bits (those of -0.0)
  const M sign = reinterpret_cast<M>(-z);
  const auto abs_mask = [sign](V v) { return reinterpret_cast<V>(reinterpret_cast<M>(v) & ~sign); };
  for (int64_t br = 0; br < r8; br += 8) {
    for (int64_t bc = 0; bc < c8; bc += 8) {
      V y[8], t[8], u[8];
      // y[k] = S[j0 + bc + k, i0 + br .. +8]; transposed, y[k] = S[j0 + bc .. +8, i0 + br + k]
      for (int k = 0; k < 8; ++k)
        y[k] = *reinterpret_cast<const V*>(s + (j0 + bc + k) * ld + i0 + br);
      for (int k = 0; k < 8; k += 2) {
        t[k] = __builtin_shuffle(y[k], y[k + 1], M{0, 8, 2, 10, 4, 12, 6, 14});
        t[k + 1] = __builtin_shuffle(y[k], y[k + 1], M{1, 9, 3, 11, 5, 13, 7, 15});
      }
      for (int k = 0; k < 8; k += 4) {
        u[k] = __builtin_shuffle(t[k], t[k + 2], M{0, 1, 8, 9, 4, 5, 12, 13});
        u[k + 2] = __builtin_shuffle(t[k], t[k + 2], M{2, 3, 10, 11, 6, 7, 14, 15});
        u[k + 1] = __builtin_shuffle(t[k + 1], t[k + 3], M{0, 1, 8, 9, 4, 5, 12, 13});
        u[k + 3] = __builtin_shuffle(t[k + 1], t[k + 3], M{2, 3, 10, 11, 6, 7, 14, 15});
      }
      for (int k = 0; k < 4; ++k) {
        y[k] = __builtin_shuffle(u[k], u[k + 4], M{0, 1, 2, 3, 8, 9, 10, 11});
        y[k + 4] = __builtin_shuffle(u[k], u[k + 4], M{4, 5, 6, 7, 12, 13, 14, 15});
      }
      for (int k = 0; k < 8; ++k) {
        const V x = *reinterpret_cast<const V*>(s + (i0 + br + k) * ld + j0 + bc);
        const V df = x - y[k];
        vp += df * z;  // NaN when x or y is NaN or +-Inf
        const V ax = abs_mask(x), ay = abs_mask(y[k]), ad = abs_mask(df);
        const V am = ax > ay ? ax : ay;
        va = va > am ? va : am;
        vd = vd > ad ? vd : ad;
      }
    }
  }
  for (int k = 0; k < 8; ++k) {
    acc.m_abs = std::max(acc.m_abs, static_cast<double>(va[k]));
    acc.m_asym = std::max(acc.m_asym, static_cast<double>(vd[k]));
    acc.probe += vp[k];
  }
#endif
  // the ragged edge: rows [r8, rows) x all columns, and rows [0, r8) x columns [c8, cols)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = r < r8 ? c8 : 0; c < cols; ++c)
      acc.add(s[(i0 + r) * ld + j0 + c], s[(j0 + c) * ld + i0 + r]);
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define CONDNUM_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CONDNUM_CLONES
#endif

CONDNUM_CLONES void compare_tile_f(const float* s, int64_t ld, int64_t i0, int64_t rows, int64_t j0,
                                   int64_t cols, Acc& acc) {
  compare_tile<float>(s, ld, i0, rows, j0, cols, acc);
}
CONDNUM_CLONES void compare_tile_d(const double* s, int64_t ld, int64_t i0, int64_t rows,
                                   int64_t j0, int64_t cols, Acc& acc) {
  compare_tile<double>(s, ld, i0, rows, j0, cols, acc);
}

// One read of every entry: finiteness, max|S_ij| and max|S_ij - S_ji|. Panel p compares
// rows [8p, 8p + 8) right of the diagonal with the mirror strip S[8p:, 8p:8p+8]: both are
// read in address order (prefetch-friendly). Panels p and np-1-p go to the same task, so
// the threads get equal work.
template <typename scalar_t>
Measure measure(const scalar_t* s, int64_t d, int64_t ld) {
  constexpr int64_t P = 8;
  const int64_t np = (d + P - 1) / P;
  std::vector<Acc> per_task((np + 1) / 2);
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / (P * d));
  at::parallel_for(0, static_cast<int64_t>(per_task.size()), grain,
                   [&](int64_t begin, int64_t end) {
                     auto panel = [&](int64_t p, Acc& acc) {
                       const int64_t i0 = p * P, rows = std::min(P, d - i0);
                       if constexpr (std::is_same_v<scalar_t, float>) {
                         compare_tile_f(s, ld, i0, rows, i0, d - i0, acc);
                       } else {
                         compare_tile_d(s, ld, i0, rows, i0, d - i0, acc);
                       }
                     };
                     for (int64_t t = begin; t < end; ++t) {
                       panel(t, per_task[t]);
                       if (np - 1 - t != t) panel(np - 1 - t, per_task[t]);
                     }
                   });
  Measure m;
  for (const auto& a : per_task) {
    m.max_abs = std::max(m.max_abs, a.m_abs);  // NaN in m_abs is ignored: the probe catches it
    m.max_asym = std::max(m.max_asym, a.m_asym);
    m.finite = m.finite && a.probe == 0;
  }
  return m;
}

// W = (S + S^T) / 2 in work_t (W: d x d, contiguous).
template <typename scalar_t, typename work_t>
void symmetrize(const scalar_t* s, int64_t d, int64_t ld, work_t* w) {
  for_tile_pairs<scalar_t>(
      s, d, ld,
      [&](int64_t, int64_t i0, int64_t rows, int64_t j0, int64_t cols, const scalar_t* a,
          const scalar_t* bt) {
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t c = 0; c < cols; ++c) {
            const auto v =
                static_cast<work_t>(0.5 * (static_cast<double>(a[r * ld + c]) + bt[r * kTile + c]));
            w[(i0 + r) * d + j0 + c] = v;
            w[(j0 + c) * d + i0 + r] = v;
          }
      });
}

}  // namespace

// When S is exactly symmetric, already in work_dtype and row- or column-contiguous, the
// result is S itself (as a contiguous view; S^T = S): no copy is made. Otherwise one
// tiled pass checks and a second writes W = (S + S^T) / 2.
Symmetrized symmetrized(const at::Tensor& S, const char* op, const char* arg,
                        at::ScalarType work_dtype) {
  check_square(S, op, arg);
  // A row-major view of S (S^T when S is column-major; the checks are symmetric in i, j).
  at::Tensor R = S.stride(1) == 1 ? S : S.stride(0) == 1 ? S.t() : S.contiguous();
  const int64_t d = R.size(0), ld = R.stride(0);
  at::Tensor W;
  double max_abs = 0;
  AT_DISPATCH_FLOATING_TYPES(S.scalar_type(), "symmetrized", [&] {
    const double rtol = symmetry_rtol<scalar_t>();
    const scalar_t* s = R.const_data_ptr<scalar_t>();
    const Measure m = measure<scalar_t>(s, d, ld);
    max_abs = m.max_abs;
    TORCH_CHECK_VALUE(m.finite, "condnum.", op, ": ", arg, " contains NaN or Inf");
    TORCH_CHECK_VALUE(m.max_asym <= rtol * m.max_abs, "condnum.", op, ": ", arg,
                      " must be symmetric, got max|S - S^T| = ", m.max_asym, " > ", rtol,
                      " * max|S| = ", rtol * m.max_abs);
    if (m.max_asym == 0 && S.scalar_type() == work_dtype && R.is_contiguous()) {
      W = R;  // exactly symmetric: S itself (or S^T = S), no copy
      return;
    }
    W = at::empty(S.sizes(), S.options().dtype(work_dtype));
    if (work_dtype == at::kDouble) {
      symmetrize<scalar_t, double>(s, d, ld, W.mutable_data_ptr<double>());
    } else {
      symmetrize<scalar_t, float>(s, d, ld, W.mutable_data_ptr<float>());
    }
  });
  return {W, max_abs};
}

double range_scale(double max_abs, at::ScalarType dtype) {
  return policy::range_scale(max_abs, dtype == at::kFloat);
}

namespace {

// sum_j (s_j * a * b)^2 over one row, in float64 with 8 interleaved partial sums (fixed
// order). The scaling is split in two factors: 2^-e alone overflows for a denormal max|S|.
template <typename scalar_t>
double row_sum_squares(const scalar_t* s, int64_t n, double a, double b) {
  double acc[8] = {};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int t = 0; t < 8; ++t) {
      const double x = static_cast<double>(s[j + t]) * a * b;
      acc[t] += x * x;
    }
  for (; j < n; ++j) {
    const double x = static_cast<double>(s[j]) * a * b;
    acc[j % 8] += x * x;
  }
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

template <typename scalar_t>
double max_abs_of(const scalar_t* s, int64_t numel) {
  double m = 0;
  for (int64_t i = 0; i < numel; ++i) m = std::max(m, std::abs(static_cast<double>(s[i])));
  return m;
}

}  // namespace

SquaredNorm squared_norm(const at::Tensor& S) {
  const auto Sc = S.contiguous();  // index order whatever the layout
  const int64_t rows = Sc.size(0), cols = Sc.size(1);
  SquaredNorm out;
  AT_DISPATCH_FLOATING_TYPES(Sc.scalar_type(), "squared_norm", [&] {
    const scalar_t* s = Sc.const_data_ptr<scalar_t>();
    std::vector<double> per_row(rows);
    auto sum_rows = [&](double a, double b) {
      at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i)
          per_row[i] = row_sum_squares(s + i * cols, cols, a, b);
      });
      double total = 0;
      for (double r : per_row) total += r;
      return total;
    };
    out.sum = sum_rows(1.0, 1.0);
    // A sum that overflowed, or squares lost to underflow: redo it scaled by a power of 2.
    if (policy::norm_needs_rescaling(out.sum)) {
      const double m = max_abs_of(s, Sc.numel());
      out.finite = std::isfinite(m) && !std::isnan(out.sum);
      if (out.finite && m > 0) {
        int e = 0;
        out.scale = policy::power_of_two_above(m, &e);
        out.sum = sum_rows(std::ldexp(1.0, -e / 2), std::ldexp(1.0, -(e - e / 2)));
      }
    }
  });
  return out;
}

}  // namespace condnum
