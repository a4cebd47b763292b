// y = A x on the CPU for a row-major A, row by row: the Gram-Schmidt pass of every Lanczos
// step, and the product of a plain Lanczos step where the triangle kernel of
// symmetric_matvec.h does not serve (CONDNUM_MATVEC=blas, or a CPU without AVX2 and FMA).
//
// torch's BLAS is MKL in the x86 wheels, and MKL takes a generic code path on CPUs that are
// not Intel's: on an AMD EPYC (Zen 4, d = 768) torch.mv on 2 threads ran at about half the
// speed of the loop below on one (float32 62 us against 33 us, float64 107 against 64). So on
// such a CPU the solvers multiply by S with their own kernels; elsewhere through torch
// (at::mv). The same choice picks the Gram-Schmidt passes (below) and the shift-and-invert
// solve (cholesky_solve.h).
// CONDNUM_MATVEC=own|blas overrides it (read at every solve, so a test can switch it).
//
// own_matvec: y_i = sum_j A_ij x_j, rows split across threads (at::parallel_for) and taken
// several at a time, each row one dot product with one vector accumulator (AVX2 + FMA when
// the CPU has them, else 4 scalar partial sums) whose lanes are summed in a fixed order:
// bitwise the same result at any thread count. The paired product (matvec2_out) loads each
// row once for two vectors: it costs 1.0-1.3x one product through this kernel, 0.34-0.71x
// one torch.mv (AMD EPYC Zen 3, 2 threads, d = 768 to 4096), and each vector's result is
// bitwise the one the single product gives.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>

namespace condnum {

enum class Matvec { blas, own };

// Whether the CPU runs AVX2 and FMA instructions (the own kernels' fast paths).
bool cpu_has_avx2_fma();

// The kernels the solvers use now: CONDNUM_MATVEC if set (own|blas, anything else is an
// error), else own for MKL on an AMD CPU, else blas.
Matvec matvec_choice();
const char* matvec_name(Matvec kind);

// y = A x, A: (rows, cols) contiguous, x: (cols,) contiguous, y: (rows,), all one dtype
// (float32/float64); the kernel named by kind.
void matvec_out(at::Tensor& y, const at::Tensor& A, const at::Tensor& x, Matvec kind);
// y1 = A x1 and y2 = A x2: one pass over A (own), or two products (blas).
void matvec2_out(at::Tensor& y1, at::Tensor& y2, const at::Tensor& A, const at::Tensor& x1,
                 const at::Tensor& x2, Matvec kind);

// One classical Gram-Schmidt pass of w against the first `rows` rows of the contiguous basis
// V (rows of length w.numel()): h[0:rows] = V w, then w -= V^T h, both through the kernel
// named by kind (own: the product above, then w_c minus each h_r V_rc in the rows' order,
// one fused multiply-add each, on one thread; blas: at::mv and at::addmv). The own pass
// saves torch's per-call work, a large part of a Lanczos step's reorthogonalisation at
// d ~ 10^3.
void gram_schmidt_pass(const at::Tensor& V, int64_t rows, at::Tensor& w, at::Tensor& h,
                       Matvec kind);

}  // namespace condnum
