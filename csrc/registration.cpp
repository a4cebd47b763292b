// The condnum op surface: every schema in one place. Kernels register per device
// (csrc/cpu/*.cpp for CPU, csrc/cuda/ops_cuda.cpp for CUDA); fake kernels and
// autograd are attached from Python (condnum/_ops.py).
#include <Python.h>
#include <torch/library.h>

#include <string>

#include "cpu/matvec.h"

TORCH_LIBRARY(condnum, m) {
  // S = Z^T Z, exactly symmetric. Z: (N, d) -> S: (d, d).
  m.def("gram(Tensor Z) -> Tensor");
  // S = theta^T K theta. theta: (D, d), K: (D, D) symmetric -> S: (d, d).
  m.def("covariance(Tensor theta, Tensor K) -> Tensor");
  // Extreme eigenpairs of a symmetric PSD S: (lam_min, lam_max, u_min, u_max, err);
  // lam_min is the smallest eigenvalue above rtol * lam_max; err (float64) bounds the
  // eigenvalues' relative error (the Python wrappers warn when err > tol).
  m.def(
      "extreme_eigh(Tensor S, int num_iters, float rtol, float tol, Tensor? v0_min, "
      "Tensor? v0_max) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // The bottom of the spectrum floored at sigma = rtol * lam_max (what R_ill's floor needs):
  // (lam_min, lam_max, u_min, u_max, err, saturated); saturated (bool): lam_1 <= sigma by a
  // float64 Cholesky of S - sigma I, lam_min = sigma then, else lam_1 through that factor.
  m.def(
      "floored_min(Tensor S, int num_iters, float rtol, float tol, Tensor? v0_min, "
      "Tensor? v0_max) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Top eigenpair only (what R_well needs): (lam_max, u_max, err).
  m.def("top_eigh(Tensor S, int num_iters, float tol, Tensor? v0) -> (Tensor, Tensor, Tensor)");
  // R_ill = 1 / (||S||_F^2 / (2k) - lam_min^2 / 2) and its gradient w.r.t. S.
  m.def("r_ill(Tensor S, Tensor lam_min, Tensor u_min, int k) -> Tensor");
  m.def(
      "_r_ill_backward(Tensor grad, Tensor S, Tensor r, Tensor lam_min, Tensor u_min, "
      "int k) -> Tensor");
  // R_well = lam_max^2 / 2 - ||S||_F^2 / (2k) and its gradient w.r.t. S.
  m.def("r_well(Tensor S, Tensor lam_max, Tensor u_max, int k) -> Tensor");
  m.def("_r_well_backward(Tensor grad, Tensor S, Tensor lam_max, Tensor u_max, int k) -> Tensor");
  m.def("_built_with_cuda() -> bool", []() -> bool { return CONDNUM_WITH_CUDA; });
  // The CPU solvers' product S v (csrc/cpu/matvec.h): which kernel they use now ("own" or
  // "blas"), and the own kernel itself, y = A x for a 2-D float32/float64 A, x of shape (cols,),
  // or the paired kernel for x of shape (2, cols) (rows: the two vectors) (for tests).
  m.def("_matvec_choice() -> str",
        []() -> std::string { return condnum::matvec_name(condnum::matvec_choice()); });
  m.def("_matvec(Tensor A, Tensor x) -> Tensor");
  // The own kernel of the plain Lanczos steps' product (csrc/cpu/symmetric_matvec.h): S x
  // from the upper triangle of a (d, d) float32/float64 S (the lower one is not read), x of
  // shape (d,), or (2, d) for the paired product (for tests).
  m.def("_symmetric_matvec(Tensor S, Tensor x) -> Tensor");
  // The own kernel of the CPU solvers' shift-and-invert solve (csrc/cpu/cholesky_solve.h):
  // (U^T U)^{-1} b for a float64 U upper triangular in the upper triangle of a (d, d) tensor
  // (the lower triangle is not read), b of shape (d,), or (2, d) for the paired solve (for
  // tests).
  m.def("_cholesky_solve(Tensor U, Tensor b) -> Tensor");
  // The own kernel of the CPU solvers' Gram-Schmidt pass (csrc/cpu/matvec.h) against the rows
  // of V (rows, cols): (w - V^T h, h) with h = V w, for float32/float64 V and w (cols,) (for
  // tests).
  m.def("_gram_schmidt_pass(Tensor V, Tensor w) -> (Tensor, Tensor)");
}

namespace condnum {
PyMethodDef* tridiagonal_methods();  // csrc/cpu/tridiagonal_bindings.cpp
}

// Importing the Python module runs the static registrations above; its only functions are
// the tridiagonal routines that the portable path's convergence checks call.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1,
                                   condnum::tridiagonal_methods(), nullptr, nullptr, nullptr,
                                   nullptr};
  return PyModule_Create(&module_def);
}
