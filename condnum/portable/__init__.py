"""The portable implementation of every condnum op, on torch operations only.

Matrix products, ``torch.linalg.cholesky_ex`` / ``ldl_factor_ex`` and their solves, and a
small host-side ``eigh`` of the Lanczos tridiagonal: cuBLAS/cuSOLVER on CUDA, LAPACK/BLAS
on the CPU, whatever torch provides elsewhere. It follows the CPU kernels' rules (the
same defaults, error bound, warm starts, sign convention, range scaling and error
messages) and reads its solver policy from ``condnum._policy``.

Files: ``checks`` (input checks, range scaling), ``lanczos`` (the Krylov basis),
``shift_invert`` (the bottom end through a factorisation), ``eigh`` (extreme_eigh,
top_eigh), ``fixed_budget`` (both with tol = 0: num_iters steps, no host
synchronisation), ``products`` (gram, covariance), ``regularizers`` (R_ill, R_well),
``registration`` (dispatch, and the native/portable switch).
"""
