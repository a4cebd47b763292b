"""Immunization as the authors' released code does it (a mode for comparison).

Differences from Algorithm 1 as printed (:func:`~condnum.immunize.algorithm1`):

- an affine extractor ``Z = X theta + b`` (``nn.Linear(D_in, D_in)``, its default random
  init), and a head ``omega ~ N(0, 1)`` without intercept;
- mini-batches: row ``i`` of ``X_P`` is paired with row ``i`` of ``X_H``, batches of 64
  drawn from a seeded shuffle each epoch (the last partial batch dropped); the
  regularizers see only the batch's Gram ``Z_b^T Z_b`` (rank <= 64) with ``k = D_in``;
- Adam on ``(theta, b, omega)`` instead of gradient descent;
- the preconditioner is a per-batch ridge ``(X_b^T X_b + rho I)^-1`` applied to the weight
  gradient ``dW = g^T X_b`` from the left, ``(X_b^T X_b + rho I)^-1 g^T X_b`` with
  ``W = theta^T``: in ``theta``'s terms it multiplies ``grad_theta`` from the *right*
  (the output side; it type-checks only because ``d = D_in``), where the paper's ``K^-1``
  multiplies from the left. ``rho`` is 1 for the primary batch and ``ridge_h`` for the
  harmful one (1 on House Prices, 1e-7 on MNIST in the released configs); the task loss
  is not preconditioned;
- fixed ``lam_p``, ``lam_h`` (released House Prices config: 100 and 1e7, lr 5e-3, 10
  epochs; MNIST: 1 and 5e7, lr 1e-3, 30 epochs).

``sigma_min`` follows this library's numerical-range rule (the authors' code takes the
smallest eigenvalue of ``S + 1e-6 I`` above 1e-6). A batch whose loss or gradients are not
finite is skipped and the learning rate halved (logged, and warned about at the end).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from condnum.immunize.control import StepControl
from condnum.immunize.problem import LinearProblem
from condnum.immunize.result import LinearImmunization
from condnum.immunize.spectral import Implementation, Spectral

__all__ = ["immunize_linear_authors"]


class _RidgePreconditionedLinear(torch.autograd.Function):
    """``Z = X W^T + b``; backward ``dW = (X^T X + rho I)^-1 (g^T X)`` (the authors' side)."""

    @staticmethod
    def forward(ctx, X: torch.Tensor, W: torch.Tensor, b: torch.Tensor, rho: float):
        ctx.save_for_backward(X, W)
        ctx.rho = rho
        return X @ W.T + b

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        X, W = ctx.saved_tensors
        K = X.T @ X + ctx.rho * torch.eye(X.shape[1], dtype=X.dtype)
        return g @ W, torch.linalg.solve(K, g.T @ X), g.sum(0), None


def immunize_linear_authors(
    X_P: torch.Tensor,
    X_H: torch.Tensor,
    y_P: torch.Tensor | None = None,
    *,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 5e-3,
    lam_p: float = 100.0,
    lam_h: float = 1e7,
    ridge_p: float = 1.0,
    ridge_h: float = 1.0,
    rtol: float | None = None,
    seed: int = 0,
    backend: Implementation = "condnum",
    progress: bool = False,
) -> LinearImmunization:
    """Train an affine extractor the way the authors' code does (module doc); float64.

    Returns a :class:`~condnum.immunize.result.LinearImmunization` with ``bias`` set and
    ``intercept`` 0 (the head has none). ``history`` holds per-batch ``loss`` and the
    batch ``kappa_P``/``kappa_H`` are not tracked (they are rank-deficient batch Grams).
    """
    prob = LinearProblem.from_data(X_P, X_H, y_P)
    if epochs < 1 or batch_size < 2 or not lr > 0:
        raise ValueError(
            f"need epochs >= 1, batch_size >= 2, lr > 0; got {epochs}, {batch_size}, {lr}"
        )
    n = min(prob.X_P.shape[0], prob.X_H.shape[0])
    if n < batch_size:
        raise ValueError(f"need at least batch_size={batch_size} paired rows, got {n}")
    D = prob.d_in
    spec = Spectral(backend, rtol, k=D)
    gen = torch.Generator().manual_seed(seed)
    bound = D**-0.5  # nn.Linear's default init
    W = ((torch.rand(D, D, generator=gen, dtype=torch.float64) * 2 - 1) * bound).requires_grad_()
    b = ((torch.rand(D, generator=gen, dtype=torch.float64) * 2 - 1) * bound).requires_grad_()
    omega = torch.randn(D, generator=gen, dtype=torch.float64).requires_grad_()
    opt = torch.optim.Adam([W, b, omega], lr=lr)
    ctrl = StepControl.for_lr(lr)
    hist: dict[str, list[float]] = {"loss": []}
    for epoch in tqdm(range(epochs), disable=not progress, desc="immunize (authors' mode)"):
        order = torch.randperm(n, generator=gen)
        for i in range(n // batch_size):
            idx = order[i * batch_size : (i + 1) * batch_size]
            X1, X2 = prob.X_P[idx], prob.X_H[idx]
            Z1 = _RidgePreconditionedLinear.apply(X1, W, b, ridge_p)
            Z2 = _RidgePreconditionedLinear.apply(X2, W, b, ridge_h)
            reason = "non-finite loss"
            try:
                loss = lam_p * spec.r_well(Z1.T @ Z1) + lam_h * spec.r_ill(Z2.T @ Z2)
            except (FloatingPointError, ValueError, RuntimeError) as err:
                loss, reason = torch.tensor(float("nan"), dtype=torch.float64), str(err)
            if prob.y_P is not None:
                pred = (X1 @ W.T + b) @ omega
                loss = loss + (pred - prob.y_P[idx]).square().mean()
            opt.zero_grad()
            if torch.isfinite(loss):
                loss.backward()
            grads_ok = all(
                p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in (W, b)
            )
            if not (torch.isfinite(loss) and grads_ok):
                reason = reason if grads_ok else "non-finite gradient"
                if not ctrl.reject_optimizer_step(opt, epoch, reason):
                    break
                continue
            opt.step()
            ctrl.accept()
            hist["loss"].append(float(loss.detach()))
        if ctrl.stalled:
            break
    ctrl.finish("condnum.immunize_linear_authors")
    settings = dict(
        method="authors", epochs=epochs, batch_size=batch_size, lr=lr, lam_p=lam_p, lam_h=lam_h,
        ridge_p=ridge_p, ridge_h=ridge_h, rtol=spec.rtol, seed=seed, backend=backend,
    )  # fmt: skip
    has_head = prob.y_P is not None
    return LinearImmunization(
        W.detach().T.contiguous(), b.detach().clone(), omega.detach().clone() if has_head else None,
        torch.zeros((), dtype=torch.float64) if has_head else None, hist, ctrl.events, settings,
    )  # fmt: skip
