"""Deep networks: the paper's ImageNet experiments (Table 3) and the K^-1 "dummy layer".

- :mod:`condnum.deep.preconditioner`: :func:`precondition` / :class:`KInversePreconditioner`,
  identity forward and ``(K + rho I)^-1``-preconditioned backward (the paper's Fig. 4);
- :mod:`condnum.deep.run`: ``condnum immunize imagenet`` and ``condnum probe-deep``
  (timm and torchvision are imported only there and in the modules they use);
- :mod:`condnum.deep.config`, :mod:`~condnum.deep.data`, :mod:`~condnum.deep.models`,
  :mod:`~condnum.deep.train`, :mod:`~condnum.deep.evaluate`, :mod:`~condnum.deep.probe`:
  the settings, the data, the models, the training loop, the measurements, the attacker.
"""

from condnum.deep.preconditioner import KInversePreconditioner, precondition, ridge_inverse_apply

__all__ = ["KInversePreconditioner", "precondition", "ridge_inverse_apply"]
