"""Immunizing the last block of a deep network (the paper's deep setting and Figure 3), on CPU.

The paper immunizes the last block of an ImageNet ResNet18 / ViT-B against Stanford Cars.
This is the same recipe scaled down to digits, so it runs on a CPU in minutes:

- data: the MNIST test set (10 000 images 28x28, ``--data`` or the shared data folder) or,
  when that is absent or with ``--dataset digits`` / ``--quick``, scikit-learn's bundled
  8x8 digits (1797 images). Primary task: classify digits 0-4; harmful task: classify
  digits 5-9. Each digit's images are split 70/30 into train/test rows (seeded).
- network ``f_theta = block o trunk``: trunk = 2 x (conv 3x3, batch norm, ReLU, max-pool),
  frozen after pre-training (ResNet18's layer1-3); last block = Linear(., 128), batch norm,
  ReLU, Linear(128, d = 64) whose output is the feature ``Z`` (ResNet18's layer4); head =
  Linear(64, 5). Batch-norm statistics stay those of ``theta_0`` while immunizing.
- ``theta_0``: the whole network pre-trained on the primary train rows (SGD + momentum).
- immunization: the last block and the head train by SGD with momentum (as the paper) on

      loss = CE(head(Z_P), y_P) + lam_P R_well(S_P) + lam_H R_ill(S_H),
      S = Z^T Z / ||Z||_F^2   (the trace-normalised Gram of a batch),

  with mini-batches of 128 primary / harmful train rows (harmful labels are never used),
  through :func:`condnum.immunize.train_immunized`.
- lambda. ``R_ill`` falls as ``||S||`` grows (its gradient scales like ``1/||S||^3``) and
  ``R_well`` as it shrinks, so on raw features both can be lowered by rescaling ``Z``
  without changing any condition number: with a fixed lambda the harmful features blow up
  (``R_ill -> 0``, float overflow) and the primary ones shrink. Normalising by ``tr(S)``
  (a scalar, so ``kappa`` is unchanged) leaves only the spectrum's shape to move and pins
  the scales: ``R_well`` in [0, 1/2], ``R_ill`` in [2k, inf). ``lam_P``, ``lam_H`` are then
  set once, automatically, by balancing gradient norms (the paper's rule): each
  regularizer's gradient w.r.t. the last block at ``theta_0`` gets norm ``--grad-p`` /
  ``--grad-h`` (mean over 8 batches). The trainer's per-step balancing against the task
  gradient is not used: at a converged ``theta_0`` that gradient is ~1e-3 and noisy.
- measured: RIR relative to ``theta_0`` (:func:`condnum.metrics.rir_deep`, 20 groups of
  100 test rows, the paper's and the relative kappa rule); primary test accuracy; the
  attacker (:func:`condnum.attack.linear_probe_classifier`): a softmax probe on frozen
  features, full-batch gradient descent with the best fixed step for its curvature,
  ``lr = 1 / lambda_max([Z, 1]^T [Z, 1] / N)`` per model, trained on the train rows and
  scored on the test rows after every epoch, on the harmful and the primary task, for
  ``theta_0``, the immunized model and a control fine-tuned the same way without the
  regularizers.

Run:  python examples/deep_immunization.py [--quick] [--out DIR] [--seed N] [--data DIR]
          [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from condnum import datasets
from condnum.attack import ClassifierProbe
from condnum.deep.probe import probe_features
from condnum.immunize import ImmunizationLoss, train_immunized
from condnum.metrics import RIRResult, format_report, rir_deep

PRIMARY_DIGITS = (0, 1, 2, 3, 4)
HARMFUL_DIGITS = (5, 6, 7, 8, 9)
FEATURES = 64  # d: the last block's output, the features Z the regularizers see
HIDDEN = 128
BATCH = 128
MODELS = ("theta_0", "no regularizers", "immunized")


@dataclass(frozen=True)
class Split:
    """A task's images (N, 1, side, side) float32 and digit labels (N,) int64."""

    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor


def load_tasks(
    dataset: str, data: str | None, seed: int, train_fraction: float = 0.7
) -> tuple[str, Split, Split]:
    """``(name, primary, harmful)`` of ``dataset`` "mnist" or "digits": 0-4 and 5-9."""
    images, labels = datasets.load_mnist(data) if dataset == "mnist" else datasets.load_digits()
    side = math.isqrt(images.shape[1])
    images = images.float().reshape(-1, 1, side, side)
    gen = torch.Generator().manual_seed(seed)

    def split(digits: tuple[int, ...]) -> Split:
        train, test = [], []
        for digit in digits:
            idx = torch.nonzero(labels == digit).flatten()
            idx = idx[torch.randperm(idx.numel(), generator=gen)]
            n_train = round(train_fraction * idx.numel())
            train.append(idx[:n_train])
            test.append(idx[n_train:])
        tr, te = torch.cat(train), torch.cat(test)
        return Split(images[tr], labels[tr], images[te], labels[te])

    return f"{dataset} {side}x{side}", split(PRIMARY_DIGITS), split(HARMFUL_DIGITS)


class Net(nn.Module):
    """``head(block(trunk(x)))``; ``features(x) = block(trunk(x))`` is ``f_theta``."""

    def __init__(self, side: int, classes: int = len(PRIMARY_DIGITS)) -> None:
        super().__init__()

        def conv(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]

        self.trunk = nn.Sequential(
            *conv(1, 16), nn.MaxPool2d(2), *conv(16, 32), nn.MaxPool2d(2), nn.Flatten()
        )
        self.block = nn.Sequential(
            nn.Linear(32 * (side // 4) ** 2, HIDDEN),
            nn.BatchNorm1d(HIDDEN),
            nn.ReLU(),
            nn.Linear(HIDDEN, FEATURES),
        )
        self.head = nn.Linear(FEATURES, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.trunk(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def class_ids(y: torch.Tensor) -> torch.Tensor:
    """Primary digits -> class ids 0..4."""
    return torch.searchsorted(torch.tensor(PRIMARY_DIGITS), y)


def loader(X: torch.Tensor, y: torch.Tensor | None, batch: int, seed: int) -> DataLoader:
    tensors = (X,) if y is None else (X, y)
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(*tensors), batch_size=batch, shuffle=True, generator=gen)


def pretrain(net: Net, task: Split, *, epochs: int, seed: int, progress: bool = True) -> None:
    """``theta_0``: cross-entropy on the primary train rows, SGD with momentum."""
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    data = loader(task.X_train, class_ids(task.y_train), 64, seed)
    net.train()
    for _ in tqdm(range(epochs), desc="pre-train theta_0", disable=not progress):
        for x, y in data:
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    net.eval()


@torch.no_grad()
def accuracy(net: Net, task: Split) -> float:
    """Primary test accuracy of ``head o f_theta``."""
    return float((net(task.X_test).argmax(1) == class_ids(task.y_test)).double().mean())


def balanced_lambdas(
    block: nn.Module,
    loss: ImmunizationLoss,
    H_P: torch.Tensor,
    H_H: torch.Tensor,
    grad_p: float,
    grad_h: float,
    *,
    batches: int = 8,
    seed: int = 0,
) -> tuple[float, float]:
    """``(lam_P, lam_H)`` with ``||lam grad_theta R|| = grad_p`` / ``grad_h`` at ``theta_0``.

    ``lam = grad / mean_b ||d R(block(H_b)) / d theta_block||`` over ``batches`` random
    batches of trunk outputs ``H_P`` / ``H_H`` (``R`` = ``loss.r_well`` / ``loss.r_ill``).
    """
    params = list(block.parameters())
    gen = torch.Generator().manual_seed(seed)
    norms = [0.0, 0.0]
    for _ in range(batches):
        for i, (H, r) in enumerate(((H_P, loss.r_well), (H_H, loss.r_ill))):
            idx = torch.randperm(H.shape[0], generator=gen)[:BATCH]
            grads = torch.autograd.grad(r(block(H[idx])), params)
            norms[i] += float(torch.cat([g.flatten() for g in grads]).norm()) / batches
    return grad_p / norms[0], grad_h / norms[1]


def immunize(
    net: Net,
    primary: Split,
    harmful: Split,
    *,
    epochs: int,
    grad_p: float,
    grad_h: float,
    lr: float,
    seed: int,
    progress: bool = True,
) -> dict[str, list[float]]:
    """Immunize ``net.block`` in place (trunk frozen); the head keeps training on the primary.

    The frozen trunk's outputs are computed once, so each step runs only the last block.
    ``grad_p = grad_h = 0`` is plain fine-tuning (the control). Returns the trainer's
    per-step history (task loss, R_well, R_ill, lambdas).
    """
    net.eval()  # batch-norm statistics stay those of theta_0
    with torch.no_grad():
        H_P, H_H = net.trunk(primary.X_train), net.trunk(harmful.X_train)
    loss = ImmunizationLoss(balance="fixed", normalize=True)
    if grad_p or grad_h:
        loss.lam_p, loss.lam_h = balanced_lambdas(
            net.block, loss, H_P, H_H, grad_p, grad_h, seed=seed
        )
    else:
        loss.lam_p = loss.lam_h = 0.0
    params = [*net.block.parameters(), *net.head.parameters()]
    result = train_immunized(
        net.block,
        net.head,
        loader(H_P, class_ids(primary.y_train), BATCH, seed),
        loader(H_H, None, BATCH, seed + 1),
        task_loss=F.cross_entropy,
        optimizer=torch.optim.SGD(params, lr=lr, momentum=0.9),
        loss=loss,
        epochs=epochs,
        progress=progress,
    )
    return result.history


def attack(net: Net, task: Split, epochs: int) -> ClassifierProbe:
    """The bad actor: a softmax linear probe on frozen features, step ``1 / lambda_max``."""
    with torch.no_grad():
        Z_tr, Z_te = net.features(task.X_train), net.features(task.X_test)
    return probe_features(Z_tr, task.y_train, Z_te, task.y_test, epochs=epochs)


@dataclass(frozen=True)
class Outcome:
    """RIR of each model against ``theta_0``, primary accuracy, attacker curves, lambdas."""

    name: str
    rir: dict[str, RIRResult]
    accuracy: dict[str, float]
    attacks: dict[str, dict[str, ClassifierProbe]]
    lam: tuple[float, float]


def run(
    dataset: str = "digits",
    data: str | None = None,
    *,
    seed: int = 0,
    pretrain_epochs: int = 10,
    epochs: int = 10,
    attack_epochs: int = 200,
    grad_p: float = 2.0,
    grad_h: float = 2.0,
    lr: float = 0.01,
    groups: int = 20,
    progress: bool = True,
) -> Outcome:
    """Pre-train ``theta_0``, immunize a copy and fine-tune a control copy, then measure."""
    torch.manual_seed(seed)
    name, primary, harmful = load_tasks(dataset, data, seed)
    theta_0 = Net(primary.X_train.shape[-1])
    pretrain(theta_0, primary, epochs=pretrain_epochs, seed=seed, progress=progress)
    nets = {model: copy.deepcopy(theta_0) for model in MODELS}
    train = dict(epochs=epochs, lr=lr, seed=seed, progress=progress)
    immunize(nets["no regularizers"], primary, harmful, grad_p=0.0, grad_h=0.0, **train)
    history = immunize(nets["immunized"], primary, harmful, grad_p=grad_p, grad_h=grad_h, **train)

    def measure(model: str, rule: str) -> RIRResult:
        return rir_deep(
            theta_0.features,
            nets[model].features,
            primary.X_test,
            harmful.X_test,
            groups=groups,
            seed=seed,
            rule=rule,
        )

    rir = {
        "immunized": measure("immunized", "paper"),
        "immunized, relative κ rule": measure("immunized", "relative"),
        "no regularizers": measure("no regularizers", "paper"),
        "no regularizers, relative κ rule": measure("no regularizers", "relative"),
    }
    tasks = {"harmful": harmful, "primary": primary}
    attacks = {
        task: {model: attack(nets[model], split, attack_epochs) for model in MODELS}
        for task, split in tqdm(tasks.items(), desc="attacker", disable=not progress)
    }
    acc = {model: accuracy(net, primary) for model, net in nets.items()}
    return Outcome(name, rir, acc, attacks, (history["lam_p"][-1], history["lam_h"][-1]))


def plot(outcome: Outcome, path: Path) -> Path:
    """Attacker's test accuracy per epoch, one panel per task (the paper's Figure 3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = outcome.attacks
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for ax, (task, probes) in zip(axes[0], tasks.items(), strict=True):
        for model, probe in probes.items():
            acc = probe.test_accuracy
            ax.plot(range(1, acc.numel() + 1), 100 * acc.numpy(), label=model)
        ax.set(
            xlabel="attacker epochs (full-batch GD)",
            ylabel="test accuracy (%)",
            title=f"linear probing, {task} digits",
            xscale="log",
        )
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{outcome.name}: last block immunized (d = {FEATURES})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def report(outcome: Outcome, attack_epochs: int) -> str:
    """The RIR table, primary accuracies and the attacker's accuracy at a few budgets."""
    acc = ", ".join(f"{m} {100 * a:.2f} %" for m, a in outcome.accuracy.items())
    marks = [e for e in (1, 10, 50, 100, 200, 500, 1000, 2000) if e <= attack_epochs]
    lines = [
        format_report(outcome.rir, title=f"RIR relative to theta_0 ({outcome.name})"),
        f"lam_P = {outcome.lam[0]:.3g}, lam_H = {outcome.lam[1]:.3g} (balanced at theta_0)",
        f"primary test accuracy: {acc}",
        "attacker's test accuracy (%) after N epochs of linear probing:",
        "| task | model | " + " | ".join(f"N={e}" for e in marks) + " |",
        "|---|---|" + "---|" * len(marks),
    ]
    for task, probes in outcome.attacks.items():
        for model, probe in probes.items():
            cells = " | ".join(f"{100 * float(probe.test_accuracy[e - 1]):.1f}" for e in marks)
            lines.append(f"| {task} | {model} | {cells} |")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="digits 8x8, seconds")
    p.add_argument("--out", default="out/deep_immunization", help="folder for PNG and JSON")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--dataset",
        choices=["auto", "mnist", "digits"],
        default="auto",
        help="auto: MNIST when --data or the shared folder has it, else digits",
    )
    p.add_argument("--data", default=None, help="folder with t10k-*-idx*-ubyte[.gz]")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--pretrain-epochs", type=int, default=None, help="default 10 (MNIST 8)")
    p.add_argument("--epochs", type=int, default=10, help="immunization epochs")
    p.add_argument("--lr", type=float, default=0.01, help="immunization SGD learning rate")
    p.add_argument(
        "--grad-p",
        type=float,
        default=2.0,
        help="||lam_P grad R_well|| w.r.t. the last block at theta_0",
    )
    p.add_argument(
        "--grad-h",
        type=float,
        default=2.0,
        help="||lam_H grad R_ill|| w.r.t. the last block at theta_0",
    )
    p.add_argument(
        "--attack-epochs",
        type=int,
        default=None,
        help="attacker's budget (default 500 quick, 2000 full)",
    )
    return p


def main(argv: list[str] | None = None) -> Outcome:
    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dataset = "digits" if args.quick and args.dataset == "auto" else args.dataset
    if dataset == "auto":
        dataset = "mnist" if args.data is not None or datasets.default_data_dir() else "digits"
    attack_epochs = args.attack_epochs or (500 if args.quick else 2000)
    t0 = time.perf_counter()
    outcome = run(
        dataset,
        args.data,
        seed=args.seed,
        pretrain_epochs=args.pretrain_epochs or (8 if dataset == "mnist" else 10),
        epochs=args.epochs,
        attack_epochs=attack_epochs,
        grad_p=args.grad_p,
        grad_h=args.grad_h,
        lr=args.lr,
    )
    seconds = time.perf_counter() - t0
    out = Path(args.out)
    png = plot(outcome, out / "attacker_accuracy.png")
    print(report(outcome, attack_epochs))
    results = {
        "data": outcome.name,
        "args": vars(args),
        "rir": {name: r.__dict__ for name, r in outcome.rir.items()},
        "primary_accuracy": outcome.accuracy,
        "lam_p": outcome.lam[0],
        "lam_h": outcome.lam[1],
        "attack_test_accuracy": {
            task: {model: p.test_accuracy.tolist() for model, p in probes.items()}
            for task, probes in outcome.attacks.items()
        },
        "seconds": seconds,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {png} and {out / 'results.json'} ({seconds:.0f} s)")
    return outcome


if __name__ == "__main__":
    main()
