"""Immunization: make a harmful task's linear probe ill-conditioned, keep the primary's easy.

Linear extractors (``theta`` (D_in, d), features ``X theta``):

- :func:`immunize_linear`: the paper's Algorithm 1 with balanced, safeguarded steps
  (recommended; :mod:`condnum.immunize.algorithm1` explains every difference);
- :func:`algorithm1`: Algorithm 1 exactly as printed (fixed step and lambdas, ridge
  ``(K + rho I)^-1``);
- :func:`immunize_linear_authors`: the authors' released code (affine extractor, Adam,
  mini-batches of 64, per-batch ridge on the other side of ``theta``);
- :func:`opt_kappa`: the "Opt kappa" baseline;
- :func:`orthogonal_mix`: rotate an immunized extractor's features at random, which keeps
  every kappa and RIR and defeats the attacker's per-feature standardization and diagonal
  preconditioners (Adam, RMSprop); the command line's House Prices, MNIST and digits
  default (:func:`harden` picks it or none);
- :func:`simultaneous_diagonalization`: a closed-form extractor (generalized eigenvectors
  of the two covariances, then mixed) whose harmful spectrum is spread over the whole rank.

Any ``nn.Module`` extractor: :class:`ImmunizationLoss` and :func:`train_immunized`.
Measuring: :mod:`condnum.metrics` (RIR) and :mod:`condnum.attack` (the bad actor);
:mod:`condnum.immunize.runs` ties them together for the paper's experiments.
"""

from condnum.immunize.algorithm1 import algorithm1, immunize_linear, initial_head, lstsq_head
from condnum.immunize.authors import immunize_linear_authors
from condnum.immunize.baselines import opt_kappa
from condnum.immunize.control import ImmunizationWarning, StepControl, StepEvent
from condnum.immunize.harden import HARDENINGS, harden, orthogonal_mix, random_orthogonal
from condnum.immunize.problem import LinearProblem, whitening
from condnum.immunize.result import LinearImmunization, load_extractor, save_extractor
from condnum.immunize.simultaneous import simultaneous_diagonalization
from condnum.immunize.trainer import ImmunizationLoss, TrainResult, train_immunized

__all__ = [
    "HARDENINGS",
    "ImmunizationLoss",
    "ImmunizationWarning",
    "LinearImmunization",
    "LinearProblem",
    "StepControl",
    "StepEvent",
    "TrainResult",
    "algorithm1",
    "harden",
    "immunize_linear",
    "immunize_linear_authors",
    "initial_head",
    "load_extractor",
    "lstsq_head",
    "opt_kappa",
    "orthogonal_mix",
    "random_orthogonal",
    "save_extractor",
    "simultaneous_diagonalization",
    "train_immunized",
    "whitening",
]
