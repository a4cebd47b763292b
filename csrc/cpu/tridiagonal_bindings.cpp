// The CPU kernel's tridiagonal routines as functions of condnum._C, for the portable path:
// its Lanczos runs its steps through torch on any device and its convergence checks here,
// on the host, with the same code as the CPU kernel's checks (one implementation of the
// T side, and no Python loop over T at every step). Arguments are float64 arrays passed as
// bytes (alpha: m values, beta: at least m - 1, the rest ignored), the Python limited API
// having no buffer protocol before 3.11:
//   _ritz_value(alpha, beta, i, hint_value, hint_bound) -> float   (hint_bound < 0: none)
//   _ritz_vector(alpha, beta, theta) -> bytes                      (m float64 values)
//   _sturm_count(alpha, beta, x) -> int
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "cpu/lanczos.h"

#include <vector>

namespace condnum {
namespace {

// T viewing the two byte strings; false, with a Python ValueError set, when they do not fit.
bool parse_tridiagonal(const char* a, Py_ssize_t a_len, const char* b, Py_ssize_t b_len,
                       Tridiagonal& T) {
  const auto m = static_cast<int64_t>(a_len / sizeof(double));
  if (a_len % static_cast<Py_ssize_t>(sizeof(double)) != 0 || m < 1 ||
      b_len < static_cast<Py_ssize_t>((m - 1) * sizeof(double))) {
    PyErr_SetString(PyExc_ValueError,
                    "condnum._C: alpha must hold m >= 1 float64 values and beta at least m - 1");
    return false;
  }
  T = {reinterpret_cast<const double*>(a), reinterpret_cast<const double*>(b), m};
  return true;
}

PyObject* ritz_value_py(PyObject*, PyObject* args) {
  const char *a, *b;
  Py_ssize_t a_len, b_len, i;
  double hint_value, hint_bound;
  if (!PyArg_ParseTuple(args, "y#y#ndd", &a, &a_len, &b, &b_len, &i, &hint_value,
                        &hint_bound))
    return nullptr;
  Tridiagonal T{};
  if (!parse_tridiagonal(a, a_len, b, b_len, T)) return nullptr;
  if (i < 0 || i >= T.m) {
    PyErr_SetString(PyExc_ValueError, "condnum._C._ritz_value: i must be in [0, m)");
    return nullptr;
  }
  const RitzHint hint{hint_value, hint_bound};
  return PyFloat_FromDouble(ritz_value(T, i, hint_bound >= 0 ? &hint : nullptr));
}

// Arguments (alpha, beta, x): T and x; false, with a Python error set, when they do not fit.
// T views the argument bytes, which live as long as the call.
bool parse_tridiagonal_and_point(PyObject* args, Tridiagonal& T, double& x) {
  const char *a, *b;
  Py_ssize_t a_len, b_len;
  return PyArg_ParseTuple(args, "y#y#d", &a, &a_len, &b, &b_len, &x) &&
         parse_tridiagonal(a, a_len, b, b_len, T);
}

PyObject* ritz_vector_py(PyObject*, PyObject* args) {
  Tridiagonal T{};
  double theta = 0;
  if (!parse_tridiagonal_and_point(args, T, theta)) return nullptr;
  std::vector<double> s(T.m), work;
  tridiagonal_eigenvector(T, theta, s.data(), work);
  return PyBytes_FromStringAndSize(reinterpret_cast<const char*>(s.data()),
                                   static_cast<Py_ssize_t>(T.m * sizeof(double)));
}

PyObject* sturm_count_py(PyObject*, PyObject* args) {
  Tridiagonal T{};
  double x = 0;
  if (!parse_tridiagonal_and_point(args, T, x)) return nullptr;
  return PyLong_FromLongLong(sturm_count(T, x));
}

PyMethodDef methods[] = {
    {"_ritz_value", ritz_value_py, METH_VARARGS,
     "Ritz value i of the tridiagonal (alpha, beta), optionally from a hint."},
    {"_ritz_vector", ritz_vector_py, METH_VARARGS,
     "Unit eigenvector of the tridiagonal (alpha, beta) for its eigenvalue theta."},
    {"_sturm_count", sturm_count_py, METH_VARARGS,
     "Number of eigenvalues of the tridiagonal (alpha, beta) below x."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

PyMethodDef* tridiagonal_methods() { return methods; }

}  // namespace condnum
