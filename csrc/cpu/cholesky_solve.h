// x = (U^T U)^{-1} b on the CPU: the shift-and-invert operator applied through its float64
// Cholesky factor, S + tau I = U^T U, for one right-hand side or two in one pass.
//
// U is upper triangular, held in the upper triangle of a row-major (d, d) float64 matrix
// (LAPACK's lower factor L = U^T of the column-major view; the lower triangle is not read).
// The right-hand sides are the rows of a contiguous (nrhs, d) float64 x, overwritten by
// the solutions.
//
// Kernels, by the choice that picks the product (matvec.h): `blas` calls LAPACK's trsm twice
// (U^T y = b, then U x = y); `own` runs the two substitutions here, in panels of 64 rows, the
// rows within a panel in blocks of 4: U^T y = b by column sweeps (y_i = b_i / u_ii, then
// b_j -= y_i u_ij for j > i, one pass over each block's 4 rows for every right-hand side);
// U x = y by dot products of each row with the solved x_j, summed per panel. One thread solves
// each panel's triangle while the others (torch's intra-op threads, from d = 512) apply the
// panel before it to the rest, one barrier per panel. Each right-hand side's arithmetic is
// the same whether it is solved alone or with another (bitwise the same x), and the order of
// every sum is fixed by the panels (bitwise the same at any thread count). Why: MKL takes a
// generic path on AMD CPUs, where its trsm with two right-hand sides cost 2.2-4.2x one (AMD
// EPYC Zen 3, d = 768 and 2048, 1 thread), while these loops solve two for 1.2-1.3x the cost
// of one; a second thread takes 1.3x (d = 768) to 1.5-1.9x (d = 2048, 4096) off a paired
// solve, where the panels cost 0-16 % on one thread (bench/bench_cholesky_solve.py).
#pragma once
#include <ATen/ATen.h>

#include "cpu/matvec.h"

namespace condnum {

// x (nrhs, d), nrhs 1 or 2, <- (U^T U)^{-1} x by the kernel named by kind.
void cholesky_solve_rows(const at::Tensor& U, const at::Tensor& x, Matvec kind);

}  // namespace condnum
