"""The bad actor: linear probes on frozen features, and a suite of attackers.

- :mod:`condnum.attack.probes`: the paper's attacker (least squares by steepest descent
  with exact line search, :func:`linear_probe_least_squares`) and a cross-entropy
  classifier probe (:func:`linear_probe_classifier`);
- :mod:`condnum.attack.problem`: the probe's quadratic in three views of the features
  (as released, standardized per feature, fully whitened);
- :mod:`condnum.attack.attackers`: one small object per attacker (gradient descent with
  exact line search or step 1/L, heavy ball, Nesterov, Adam, RMSprop, L-BFGS, conjugate
  gradient, the closed-form solve);
- :mod:`condnum.attack.bounds`: the largest slowdown any affine extractor can force on
  conjugate gradient and the closed form (finite termination, exact arithmetic);
- :mod:`condnum.attack.suite`: every attacker in every view on raw inputs and on
  immunized features, the slowdowns, a table and JSON (:func:`run_suite`);
  :mod:`condnum.attack.plots` draws the convergence curves.
"""

from condnum.attack.attackers import (
    GRIDS,
    LBFGS,
    Adam,
    Attacker,
    ClosedForm,
    ConjugateGradient,
    GradientDescent,
    HeavyBall,
    LineSearchGD,
    Nesterov,
    RMSprop,
    Trace,
    default_attackers,
)
from condnum.attack.bounds import affine_rank, numerical_rank
from condnum.attack.probes import (
    ClassifierProbe,
    LeastSquaresProbe,
    linear_probe_classifier,
    linear_probe_least_squares,
)
from condnum.attack.problem import VIEWS, ProbeProblem, make_problem
from condnum.attack.suite import Run, SuiteResult, Verdict, run_suite

__all__ = [
    "GRIDS",
    "LBFGS",
    "VIEWS",
    "Adam",
    "Attacker",
    "ClassifierProbe",
    "ClosedForm",
    "ConjugateGradient",
    "GradientDescent",
    "HeavyBall",
    "LeastSquaresProbe",
    "LineSearchGD",
    "Nesterov",
    "ProbeProblem",
    "RMSprop",
    "Run",
    "SuiteResult",
    "Trace",
    "Verdict",
    "affine_rank",
    "default_attackers",
    "linear_probe_classifier",
    "linear_probe_least_squares",
    "make_problem",
    "numerical_rank",
    "run_suite",
]
