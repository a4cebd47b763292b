"""Data for the paper's experiments: House Prices, MNIST digit pairs, scikit-learn digits.

Everything is returned as float64 ``torch`` tensors; nothing is downloaded. Paths are
arguments; when left out they default to subfolders of :func:`default_data_dir`.

House Prices (Kaggle ``train.csv``, 1460 rows, 81 columns), the paper's split:

- primary ``D_P``: rows with ``MSZoning != "RL"`` (309 rows), target ``LotArea``;
- harmful ``D_H``: rows with ``MSZoning == "RL"`` (1151 rows), target ``SalePrice``;
- features: the 79 columns that are neither target (``Id`` and ``MSZoning`` included),
  the same columns in file order for both sets, as in the authors' code;
- reading and preprocessing exactly as the authors' code: ``pd.read_csv`` (pandas >= 2,
  whose defaults treat ``NA``, empty and ``None`` as missing: ``MasVnrType``'s ``None``
  and ``NA`` become one category), then per set over all its rows (309 / 1151):
  missing -> 0 (``fillna(0)``; numerics may take the set's mean instead); a column is
  categorical when pandas does not parse it as numbers, and is label-encoded as
  scikit-learn's ``LabelEncoder`` on ``astype(str)`` does it (codes ``0..n-1`` over the
  set's sorted distinct strings; missing is ``"0"``, which sorts first); then every
  feature and the target standardised ``x -> (x - mean) / std`` (pandas, ``ddof=1``; a
  constant column, such as ``MSZoning`` in ``D_H``, becomes all zeros instead of NaN);
- rows kept in file order: the first 200 train, the next 100 test.

MNIST (IDX files) gives ``(images, labels)`` with the authors' pixels
``(p / 255 - 0.1307) / 0.3081`` (torchvision's ``ToTensor`` then ``Normalize``) or
``p / 255``; scikit-learn's 8x8 digits have pixels in [0, 1]. :func:`digit_pair_task`
makes a binary task of two digits and :func:`digit_pair_sets` the authors' ordered pair
(primary = one digit's images, harmful = the other's).
"""

from __future__ import annotations

import csv
import gzip
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch

__all__ = [
    "FEATURES",
    "KAGGLE_COLUMNS",
    "MNIST_MEAN",
    "MNIST_STD",
    "Task",
    "TaskPair",
    "default_data_dir",
    "digit_pair_sets",
    "digit_pair_task",
    "load_digits",
    "load_house_prices",
    "load_mnist",
    "read_idx",
]

#: The 81 columns of the Kaggle House Prices ``train.csv``, in file order.
KAGGLE_COLUMNS: tuple[str, ...] = (
    "Id", "MSSubClass", "MSZoning", "LotFrontage", "LotArea", "Street", "Alley",
    "LotShape", "LandContour", "Utilities", "LotConfig", "LandSlope", "Neighborhood",
    "Condition1", "Condition2", "BldgType", "HouseStyle", "OverallQual", "OverallCond",
    "YearBuilt", "YearRemodAdd", "RoofStyle", "RoofMatl", "Exterior1st", "Exterior2nd",
    "MasVnrType", "MasVnrArea", "ExterQual", "ExterCond", "Foundation", "BsmtQual",
    "BsmtCond", "BsmtExposure", "BsmtFinType1", "BsmtFinSF1", "BsmtFinType2",
    "BsmtFinSF2", "BsmtUnfSF", "TotalBsmtSF", "Heating", "HeatingQC", "CentralAir",
    "Electrical", "1stFlrSF", "2ndFlrSF", "LowQualFinSF", "GrLivArea", "BsmtFullBath",
    "BsmtHalfBath", "FullBath", "HalfBath", "BedroomAbvGr", "KitchenAbvGr", "KitchenQual",
    "TotRmsAbvGrd", "Functional", "Fireplaces", "FireplaceQu", "GarageType",
    "GarageYrBlt", "GarageFinish", "GarageCars", "GarageArea", "GarageQual", "GarageCond",
    "PavedDrive", "WoodDeckSF", "OpenPorchSF", "EnclosedPorch", "3SsnPorch",
    "ScreenPorch", "PoolArea", "PoolQC", "Fence", "MiscFeature", "MiscVal", "MoSold",
    "YrSold", "SaleType", "SaleCondition", "SalePrice",
)  # fmt: skip
PRIMARY_TARGET = "LotArea"
HARMFUL_TARGET = "SalePrice"
#: The 79 House Prices features: every column except the two targets.
FEATURES: tuple[str, ...] = tuple(
    c for c in KAGGLE_COLUMNS if c not in (PRIMARY_TARGET, HARMFUL_TARGET)
)


def default_data_dir() -> Path | None:
    """The shared data folder: ``$CONDNUM_DATA`` if set, else ``<checkout>/../shared/data``.

    Returns None when that folder does not exist (e.g. an installed, non-editable copy).
    """
    env = os.environ.get("CONDNUM_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return path if path.is_dir() else None


def _resolve(path: str | Path | None, subpath: str, what: str) -> Path:
    """``path`` if given, else ``default_data_dir() / subpath``; clear error when absent."""
    if path is None:
        root = default_data_dir()
        if root is None:
            raise FileNotFoundError(
                f"{what}: no path given and no default data folder (set CONDNUM_DATA or "
                f"pass the path); expected <data>/{subpath}"
            )
        path = root / subpath
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what}: expected {path}, which does not exist")
    return path


@dataclass(frozen=True, eq=False)
class Task:
    """A supervised task split into train and test rows.

    ``X_*`` are float64 of shape (N, D). ``y_*`` are float64 regression targets or,
    for classification tasks, int64 class ids.
    """

    name: str
    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    feature_names: tuple[str, ...] = ()

    @property
    def n_features(self) -> int:
        return self.X_train.shape[1]


@dataclass(frozen=True, eq=False)
class TaskPair:
    """The primary task ``D_P`` (kept easy) and the harmful task ``D_H`` (made hard)."""

    primary: Task
    harmful: Task


# --------------------------------------------------------------------------- House Prices


def _read_csv(path: Path) -> pd.DataFrame:
    """``train.csv`` read the authors' way (``pd.read_csv`` defaults), after checking the file.

    pandas >= 2 treats ``""``, ``"NA"`` and ``"None"`` (among others) as missing, so the
    ``MasVnrType`` value ``None`` is missing here, like ``NA``. ``pd.read_csv`` pads a
    short row silently, so the number of fields of every row is checked first.
    """
    with path.open(newline="") as f:
        fields = [len(row) for row in csv.reader(f) if row]
    if not fields:
        raise ValueError(f"{path} is empty")
    for line, n in enumerate(fields[1:], start=2):
        if n != fields[0]:
            raise ValueError(f"{path}:{line}: {n} fields, the header has {fields[0]}")
    df = pd.read_csv(path)
    header = list(df.columns)
    missing = [c for c in KAGGLE_COLUMNS if c not in header]
    extra = [c for c in header if c not in KAGGLE_COLUMNS]
    if missing or extra:
        raise ValueError(
            f"{path} is not the Kaggle House Prices train.csv: missing columns {missing}, "
            f"unexpected columns {extra} (pandas renames a repeated column X to X.1)"
        )
    return df


def _encode(column: pd.Series, nan_fill: Literal["zero", "mean"]) -> np.ndarray:
    """float64 values of one column of one set, as the authors' code computes them.

    Categorical (a non-numeric dtype over the whole file): ``fillna(0)``, then
    scikit-learn's ``LabelEncoder`` on ``astype(str)``, i.e. codes ``0..n-1`` over the
    set's sorted distinct strings, missing becoming ``"0"``, which sorts before every
    Kaggle category. Numeric: missing -> 0 (``nan_fill="zero"``, the authors') or the
    set's mean.
    """
    if not pd.api.types.is_numeric_dtype(column):
        text = column.astype(object).fillna(0).astype(str).to_numpy()
        return np.unique(text, return_inverse=True)[1].astype(np.float64)
    fill = 0.0 if nan_fill == "zero" else column.mean()
    return column.fillna(0.0 if pd.isna(fill) else fill).to_numpy(dtype=np.float64)


def _standardize(frame: pd.DataFrame, rows: slice) -> pd.DataFrame:
    """``(x - mean) / std`` per column (pandas, ``ddof=1``) with statistics over ``rows``.

    A column constant over those rows gets ``mean`` = its value and ``std = 1``, so it
    becomes exact zeros there (no NaN from ``0 / 0``, no rounding noise blown up).
    """
    ref = frame.iloc[rows]
    constant = (ref == ref.iloc[0]).all()
    mean = ref.mean().where(~constant, ref.iloc[0])
    return (frame - mean) / ref.std().where(~constant, 1.0)


def load_house_prices(
    path: str | Path | None = None,
    *,
    n_train: int = 200,
    n_test: int = 100,
    nan_fill: Literal["zero", "mean"] = "zero",
    standardize_on: Literal["set", "train"] = "set",
) -> TaskPair:
    """The paper's House Prices split (module docstring): ``primary`` D_P, ``harmful`` D_H.

    Args:
        path: ``train.csv`` or a folder holding it; default
            ``default_data_dir() / "house_prices" / "train.csv"``.
        n_train, n_test: rows ``[0, n_train)`` train, ``[n_train, n_train + n_test)`` test,
            in file order, per set.
        nan_fill: missing numerics become 0 (``"zero"``, as the authors') or the set's mean.
        standardize_on: statistics over every row of the set (``"set"``, as the authors'
            code, so test rows inform them) or only its training rows (``"train"``).

    Raises:
        FileNotFoundError: the file is absent (the message says where it was expected).
        ValueError: columns missing or unexpected, ragged rows, too few rows for the split.
    """
    if n_train < 2 or n_test < 0:
        raise ValueError(f"need n_train >= 2 and n_test >= 0, got {n_train}, {n_test}")
    if nan_fill not in ("zero", "mean") or standardize_on not in ("set", "train"):
        raise ValueError(f"bad nan_fill={nan_fill!r} or standardize_on={standardize_on!r}")
    path = _resolve(path, "house_prices/train.csv", "House Prices")
    if path.is_dir():
        path = _resolve(path / "train.csv", "", "House Prices")
    df = _read_csv(path)
    for target in (PRIMARY_TARGET, HARMFUL_TARGET):
        if not pd.api.types.is_numeric_dtype(df[target]):
            raise ValueError(f"{path}: target column {target} is not numeric")
    zoning = df["MSZoning"]
    sets = {
        "primary": (df[zoning != "RL"], PRIMARY_TARGET),
        "harmful": (df[zoning == "RL"], HARMFUL_TARGET),
    }
    sizes = {name: len(rows) for name, (rows, _) in sets.items()}
    if min(sizes.values()) < n_train + n_test:
        raise ValueError(
            f"{path}: the primary set has {sizes['primary']} rows and the harmful set "
            f"{sizes['harmful']}; the split needs {n_train + n_test} in each"
        )

    def make(name: str, rows: pd.DataFrame, target: str) -> Task:
        if bool(rows[target].isna().any()):
            raise ValueError(f"{path}: set {name} has missing {target} values")
        X = pd.DataFrame({c: _encode(rows[c], nan_fill) for c in FEATURES})
        y = rows[[target]].reset_index(drop=True).astype(np.float64)
        ref = slice(None) if standardize_on == "set" else slice(0, n_train)
        X, y = (torch.tensor(_standardize(a, ref).to_numpy(np.float64)) for a in (X, y))
        tr, te = slice(0, n_train), slice(n_train, n_train + n_test)
        return Task(name, X[tr], y[tr, 0], X[te], y[te, 0], FEATURES)

    return TaskPair(*(make(f"house_prices/{name}", *spec) for name, spec in sets.items()))


# --------------------------------------------------------------------------- digit images

_IDX_MAGIC = {3: 0x00000803, 1: 0x00000801}  # unsigned-byte images (3-D), labels (1-D)


def read_idx(path: str | Path, ndim: int) -> torch.Tensor:
    """Read an IDX file of unsigned bytes (``.gz`` or raw, told apart by content).

    Format: big-endian magic ``0x0000 08 ndim``, then ``ndim`` uint32 sizes, then the data.
    Returns a uint8 tensor of those sizes.

    Raises:
        FileNotFoundError: the file is absent.
        ValueError: wrong magic number (not IDX, or not ``ndim``-dimensional unsigned
            bytes) or a size that disagrees with the file length.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file: expected {path}, which does not exist")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise ValueError(f"{path}: {len(raw)} bytes, shorter than an IDX header ({head})")
    magic, *shape = struct.unpack(f">{1 + ndim}I", raw[:head])
    if magic != _IDX_MAGIC[ndim]:
        raise ValueError(
            f"{path}: magic number {magic:#010x}, expected {_IDX_MAGIC[ndim]:#010x} "
            f"(IDX, unsigned bytes, {ndim}-D)"
        )
    if len(raw) - head != math.prod(shape):
        raise ValueError(
            f"{path}: header says shape {tuple(shape)} ({math.prod(shape)} bytes), "
            f"the file holds {len(raw) - head} data bytes"
        )
    data = torch.frombuffer(bytearray(raw[head:]), dtype=torch.uint8)
    return data.reshape(shape)


#: The authors' MNIST transform ``Normalize((0.1307,), (0.3081,))``: mean and std of the pixels.
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def load_mnist(
    path: str | Path | None = None,
    *,
    split: Literal["t10k", "train"] = "t10k",
    pixels: Literal["authors", "unit"] = "authors",
) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST from its standard IDX files: ``(images, labels)``.

    Args:
        path: folder holding ``{split}-images-idx3-ubyte[.gz]`` and
            ``{split}-labels-idx1-ubyte[.gz]``; default ``default_data_dir() / "mnist"``.
        split: file prefix; the shared folder holds the 10 000-image test set ``t10k``.
        pixels: ``"authors"``: ``(p / 255 - 0.1307) / 0.3081``, the authors' transform
            (``ToTensor()`` then ``Normalize((0.1307,), (0.3081,))``); ``"unit"``: ``p / 255``
            in [0, 1]. Blank pixels are 0 under ``"unit"`` (null directions of ``X^T X``)
            and -0.4242 under ``"authors"`` (one shared direction), which changes every kappa.

    Returns:
        images: float64 (N, rows*cols); labels: int64 (N,), digits 0-9.
    """
    if pixels not in ("authors", "unit"):
        raise ValueError(f"pixels must be 'authors' or 'unit', got {pixels!r}")
    folder = _resolve(path, "mnist", "MNIST")

    def find(kind: str, ndim: int) -> Path:
        name = f"{split}-{kind}-idx{ndim}-ubyte"
        for candidate in (folder / f"{name}.gz", folder / name):
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(f"MNIST: expected {folder / name}[.gz], which does not exist")

    images = read_idx(find("images", 3), 3)
    labels = read_idx(find("labels", 1), 1)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"MNIST: {images.shape[0]} images but {labels.shape[0]} labels")
    if labels.numel() and int(labels.max()) > 9:
        raise ValueError(f"MNIST: label {int(labels.max())} is not a digit")
    unit = images.reshape(images.shape[0], -1).double() / 255.0
    if pixels == "authors":
        return (unit - MNIST_MEAN) / MNIST_STD, labels.long()
    return unit, labels.long()


def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled 8x8 digits (1797 images, no download): ``(images, labels)``.

    images: float64 (1797, 64) scaled to [0, 1] (pixel values 0-16 divided by 16);
    labels: int64 (1797,).
    """
    from sklearn.datasets import load_digits as _sk_digits

    d = _sk_digits()
    return torch.from_numpy(d.data).double() / 16.0, torch.from_numpy(d.target).long()


def _check_digits(images: torch.Tensor, labels: torch.Tensor, *digits: int) -> torch.Tensor:
    """Validate a labelled image set and the digits asked for; return images as (N, D)."""
    if images.ndim not in (2, 3):
        raise ValueError(f"images must be (N, D) or (N, H, W), got shape {tuple(images.shape)}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"labels must be (N,) with N = {images.shape[0]} images, got {tuple(labels.shape)}"
        )
    if len(set(digits)) != len(digits):
        raise ValueError(f"the two digits must differ, got {digits}")
    for d in digits:
        if not bool((labels == d).any()):
            raise ValueError(f"digit {d} has no samples")
    return images.reshape(images.shape[0], -1).double()


def digit_pair_task(
    images: torch.Tensor,
    labels: torch.Tensor,
    a: int,
    b: int,
    *,
    train_fraction: float = 0.5,
    max_per_class: int | None = None,
    seed: int = 0,
) -> Task:
    """Binary classification of digit ``a`` (label 0) against digit ``b`` (label 1).

    Labels are 0/1 int64 (the authors' ``{a: 0, b: 1}`` map, for a logistic loss).
    Split, deterministic given ``seed``: each class's samples are permuted by a
    ``torch.Generator`` seeded with ``seed``, optionally truncated to ``max_per_class``,
    and the first ``round(train_fraction * n_class)`` (at least 1, at most n_class - 1)
    go to train, the rest to test. Rows are ordered class a first, then class b.

    Raises:
        ValueError: ``a == b``, a digit without samples, a class with one sample,
            mismatched shapes, ``train_fraction`` outside (0, 1).
    """
    X = _check_digits(images, labels, a, b)
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    gen = torch.Generator().manual_seed(seed)
    parts: dict[str, list[torch.Tensor]] = {"Xtr": [], "ytr": [], "Xte": [], "yte": []}
    for cls, digit in enumerate((a, b)):
        idx = torch.nonzero(labels == digit).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=gen)][:max_per_class]
        if idx.numel() < 2:
            raise ValueError(f"digit {digit} has {idx.numel()} sample(s), need 2 to split")
        n_tr = min(max(round(train_fraction * idx.numel()), 1), idx.numel() - 1)
        for key, sel in (("tr", idx[:n_tr]), ("te", idx[n_tr:])):
            parts["X" + key].append(X[sel])
            parts["y" + key].append(torch.full((sel.numel(),), cls, dtype=torch.long))
    return Task(
        f"digits_{a}_vs_{b}",
        torch.cat(parts["Xtr"]),
        torch.cat(parts["ytr"]),
        torch.cat(parts["Xte"]),
        torch.cat(parts["yte"]),
    )


def digit_pair_sets(
    images: torch.Tensor, labels: torch.Tensor, p: int, h: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(X_P, X_H)``: all images of digit ``p`` and of digit ``h``, (N, D) float64.

    This is how the authors' code forms an ordered MNIST pair ``(p, h)``: the primary
    set is digit ``p``'s images, the harmful set digit ``h``'s (labels are not needed
    for the condition numbers and RIR).
    """
    X = _check_digits(images, labels, p, h)
    return X[labels == p], X[labels == h]
