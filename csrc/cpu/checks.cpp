#include "cpu/checks.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cmath>

namespace condnum {

namespace {

// One pass over S: finiteness, max|S|, max|S_ij - S_ji|, and W = (S + S^T) / 2.
template <typename scalar_t, typename work_t>
void symmetrize_and_measure(const at::Tensor& S, at::Tensor& W, double& max_abs,
                            double& max_asym, bool& finite) {
  const int64_t d = S.size(0), rs = S.stride(0), cs = S.stride(1);
  const scalar_t* s = S.const_data_ptr<scalar_t>();
  work_t* w = W.mutable_data_ptr<work_t>();
  std::vector<double> row_abs(d, 0.0), row_asym(d, 0.0);
  std::vector<char> row_finite(d, 1);
  at::parallel_for(0, d, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      double m_abs = 0.0, m_asym = 0.0;
      bool fin = true;
      for (int64_t j = 0; j < d; ++j) {
        const double a = s[i * rs + j * cs], b = s[j * rs + i * cs];
        fin = fin && std::isfinite(a);
        m_abs = std::max(m_abs, std::abs(a));
        m_asym = std::max(m_asym, std::abs(a - b));
        w[i * d + j] = static_cast<work_t>(0.5 * (a + b));
      }
      row_abs[i] = m_abs;
      row_asym[i] = m_asym;
      row_finite[i] = fin;
    }
  });
  max_abs = *std::max_element(row_abs.begin(), row_abs.end());
  max_asym = *std::max_element(row_asym.begin(), row_asym.end());
  finite = std::all_of(row_finite.begin(), row_finite.end(), [](char f) { return f; });
}

}  // namespace

at::Tensor symmetrized(const at::Tensor& S, const char* op, const char* arg,
                       at::ScalarType work_dtype) {
  check_square(S, op, arg);
  auto W = at::empty(S.sizes(), S.options().dtype(work_dtype));
  double max_abs = 0, max_asym = 0;
  bool finite = true;
  AT_DISPATCH_FLOATING_TYPES(S.scalar_type(), "symmetrized", [&] {
    const double rtol = symmetry_rtol<scalar_t>();
    if (work_dtype == at::kDouble) {
      symmetrize_and_measure<scalar_t, double>(S, W, max_abs, max_asym, finite);
    } else {
      symmetrize_and_measure<scalar_t, float>(S, W, max_abs, max_asym, finite);
    }
    TORCH_CHECK_VALUE(finite, "condnum.", op, ": ", arg, " contains NaN or Inf");
    TORCH_CHECK_VALUE(max_asym <= rtol * max_abs, "condnum.", op, ": ", arg,
                      " must be symmetric, got max|S - S^T| = ", max_asym, " > ", rtol,
                      " * max|S| = ", rtol * max_abs);
  });
  return W;
}

double squared_norm(const at::Tensor& S) {
  return at::linalg_vector_norm(S, 2, std::nullopt, false, at::kDouble).square().item<double>();
}

}  // namespace condnum
