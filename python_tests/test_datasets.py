"""condnum.datasets: the paper's House Prices split, MNIST IDX files, digit-pair tasks."""

from __future__ import annotations

import csv
import gzip
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.preprocessing import LabelEncoder

from condnum.datasets import (
    FEATURES,
    KAGGLE_COLUMNS,
    default_data_dir,
    digit_pair_sets,
    digit_pair_task,
    load_digits,
    load_house_prices,
    load_mnist,
    read_idx,
)

DATA = default_data_dir()
HOUSE = DATA / "house_prices" / "train.csv" if DATA else None
MNIST = DATA / "mnist" if DATA else None
needs_house = pytest.mark.skipif(
    HOUSE is None or not HOUSE.is_file(), reason="shared House Prices train.csv absent"
)
needs_mnist = pytest.mark.skipif(
    MNIST is None or not (MNIST / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="shared MNIST files absent",
)


def standardize(v: torch.Tensor) -> torch.Tensor:
    """The documented rule: (v - mean) / std, ddof=1, zero std -> 1."""
    std = v.std(correction=1)
    return (v - v.mean()) / (std if std > 0 else 1.0)


# ----------------------------------------------------------------- House Prices, real file


@pytest.mark.data
@needs_house
def test_house_prices_split_shapes_and_features():
    hp = load_house_prices()
    for task in (hp.primary, hp.harmful):
        assert task.X_train.shape == (200, 79) and task.X_test.shape == (100, 79)
        assert task.y_train.shape == (200,) and task.y_test.shape == (100,)
        assert task.X_train.dtype == torch.float64 and task.y_train.dtype == torch.float64
        assert task.feature_names == FEATURES
        assert torch.isfinite(task.X_train).all() and torch.isfinite(task.X_test).all()
    assert len(FEATURES) == 79 and "Id" in FEATURES and "MSZoning" in FEATURES
    assert "LotArea" not in FEATURES and "SalePrice" not in FEATURES
    # every harmful row has MSZoning == "RL": a constant column, standardised to zeros
    z = FEATURES.index("MSZoning")
    assert (hp.harmful.X_train[:, z] == 0).all() and (hp.harmful.X_test[:, z] == 0).all()
    assert hp.primary.X_train[:, z].std() > 0


@pytest.mark.data
@needs_house
def test_house_prices_set_sizes_309_and_1151():
    load_house_prices(n_train=209, n_test=100)  # D_P has exactly 309 rows
    with pytest.raises(ValueError, match="primary set has 309 rows and the harmful set 1151"):
        load_house_prices(n_train=210, n_test=100)


@pytest.mark.data
@needs_house
def test_house_prices_targets_match_the_file():
    """Targets are LotArea (D_P) and SalePrice (D_H), file order, standardised per set."""
    with HOUSE.open(newline="") as f:
        rows = list(csv.DictReader(f))
    lot = torch.tensor([float(r["LotArea"]) for r in rows if r["MSZoning"] != "RL"])
    price = torch.tensor([float(r["SalePrice"]) for r in rows if r["MSZoning"] == "RL"])
    hp = load_house_prices()
    lot, price = standardize(lot.double()), standardize(price.double())
    torch.testing.assert_close(hp.primary.y_train, lot[:200])
    torch.testing.assert_close(hp.primary.y_test, lot[200:300])
    torch.testing.assert_close(hp.harmful.y_train, price[:200])
    ids = torch.tensor([float(r["Id"]) for r in rows if r["MSZoning"] == "RL"]).double()
    torch.testing.assert_close(hp.harmful.X_train[:, FEATURES.index("Id")], standardize(ids)[:200])


@pytest.mark.data
@needs_house
def test_house_prices_standardisation():
    # "set" statistics (the authors'): over all 309 rows of D_P
    hp = load_house_prices(n_train=209, n_test=100)
    X = torch.cat([hp.primary.X_train, hp.primary.X_test])
    y = torch.cat([hp.primary.y_train, hp.primary.y_test])
    varying = X.std(dim=0) > 0
    torch.testing.assert_close(X.mean(dim=0), torch.zeros(79, dtype=torch.float64))
    torch.testing.assert_close(X.std(dim=0)[varying], torch.ones(int(varying.sum()), dtype=X.dtype))
    assert (X[:, ~varying] == 0).all()
    assert abs(float(y.mean())) < 1e-12 and abs(float(y.std()) - 1) < 1e-12
    # "train" statistics: over the 200 training rows only
    hp = load_house_prices(standardize_on="train")
    Xtr = hp.harmful.X_train
    varying = Xtr.std(dim=0) > 0
    assert Xtr.mean(dim=0).abs().max() < 1e-12
    torch.testing.assert_close(
        Xtr.std(dim=0)[varying], torch.ones(int(varying.sum()), dtype=Xtr.dtype)
    )
    assert abs(float(hp.harmful.y_train.std()) - 1) < 1e-12


@pytest.mark.data
@needs_house
def test_house_prices_deterministic():
    a, b = load_house_prices(), load_house_prices()
    assert torch.equal(a.primary.X_train, b.primary.X_train)
    assert torch.equal(a.harmful.X_test, b.harmful.X_test)


def authors_matrices(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The authors' preprocessing, written out independently with pandas and scikit-learn:
    ``read_csv``, split on MSZoning, ``fillna(0)``, ``LabelEncoder`` on ``astype(str)`` for
    every non-numeric column, then ``(x - mean) / std`` (constant columns -> 0)."""
    df = pd.read_csv(path)
    out = {}
    for name, rows, target in (
        ("primary", df[df["MSZoning"] != "RL"], "LotArea"),
        ("harmful", df[df["MSZoning"] == "RL"], "SalePrice"),
    ):
        X = rows.drop(columns=["LotArea", "SalePrice"]).astype(object).fillna(0)
        for c in X.columns:
            if not pd.api.types.is_numeric_dtype(df[c]):
                X[c] = LabelEncoder().fit_transform(X[c].astype(str))
        X = X.astype(np.float64).reset_index(drop=True)
        y = rows[[target]].astype(np.float64).reset_index(drop=True)
        mats = []
        for frame in (X, y):
            std = frame.std()
            constant = frame.nunique() == 1
            mats.append(((frame - frame.mean().where(~constant, frame.iloc[0]))
                         / std.where(~constant, 1.0)).to_numpy())  # fmt: skip
        out[name] = (mats[0], mats[1][:, 0])
    return out


@pytest.mark.data
@needs_house
def test_house_prices_bit_for_bit_the_authors_matrices():
    hp = load_house_prices(n_train=200, n_test=100)
    ref = authors_matrices(HOUSE)
    for name, task in (("primary", hp.primary), ("harmful", hp.harmful)):
        X, y = ref[name]
        assert torch.equal(task.X_train, torch.tensor(X[:200]))
        assert torch.equal(task.X_test, torch.tensor(X[200:300]))
        assert torch.equal(task.y_train, torch.tensor(y[:200]))
        assert torch.equal(task.y_test, torch.tensor(y[200:300]))
    # MasVnrType: the file's "None" is missing, one category with "NA", coded first (0)
    raw = pd.read_csv(HOUSE, dtype=str, keep_default_na=False)
    harmful = raw[raw["MSZoning"] == "RL"].reset_index(drop=True)
    col = hp.harmful.X_train[:, FEATURES.index("MasVnrType")]
    none_rows = torch.tensor((harmful["MasVnrType"][:200] == "None").to_numpy())
    assert bool(none_rows.any())
    assert float(col[none_rows].max()) == float(col.min())  # code 0, standardised


# ----------------------------------------------------------------- House Prices, tiny csv

CATEGORICAL = ("MSZoning", "Street", "Alley")


def write_csv(path: Path, rows: list[dict[str, str]], columns=KAGGLE_COLUMNS) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in rows:
            w.writerow([r.get(c, "1") for c in columns])
    return path


def tiny_rows() -> list[dict[str, str]]:
    """3 primary rows (RM/FV) and 3 harmful rows (RL); every other column numeric."""
    rows = []
    for i, (zone, street, alley, frontage) in enumerate(
        [
            ("RM", "Pave", "NA", "60"),
            ("FV", "NA", "Grvl", "NA"),
            ("RM", "Grvl", "Pave", "90"),
            ("RL", "Pave", "NA", "70"),
            ("RL", "Pave", "Grvl", "80"),
            ("RL", "Grvl", "", "NA"),
        ]
    ):
        row = {c: str(i + 1 + j % 3) for j, c in enumerate(KAGGLE_COLUMNS)}
        row.update(
            Id=str(i + 1), MSZoning=zone, Street=street, Alley=alley, LotFrontage=frontage,
            LotArea=str(1000 * (i + 1)), SalePrice=str(5000 + 7 * i * i), PoolArea="0",
            MiscVal="0.1",
        )  # fmt: skip
        rows.append(row)
    return rows


def test_tiny_csv_label_encoding_and_fill(tmp_path):
    hp = load_house_prices(write_csv(tmp_path / "t.csv", tiny_rows()), n_train=2, n_test=1)
    P = torch.cat([hp.primary.X_train, hp.primary.X_test])
    col = FEATURES.index
    # Street in D_P: Pave, NA, Grvl -> missing first, then sorted: NA=0, Grvl=1, Pave=2
    expected = standardize(torch.tensor([2.0, 0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(P[:, col("Street")], expected)
    # MSZoning in D_P: RM, FV, RM -> FV=0, RM=1
    expected = standardize(torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(P[:, col("MSZoning")], expected)
    # Alley in D_H: NA, Grvl, "" -> both spellings of missing share code 0, Grvl=1
    H = torch.cat([hp.harmful.X_train, hp.harmful.X_test])
    expected = standardize(torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(H[:, col("Alley")], expected)
    # LotFrontage NA -> 0 ("zero", the authors') or the set's mean
    expected = standardize(torch.tensor([60.0, 0.0, 90.0], dtype=torch.float64))
    torch.testing.assert_close(P[:, col("LotFrontage")], expected)
    mean = load_house_prices(tmp_path / "t.csv", n_train=2, n_test=1, nan_fill="mean")
    Pm = torch.cat([mean.primary.X_train, mean.primary.X_test])
    expected = standardize(torch.tensor([60.0, 75.0, 90.0], dtype=torch.float64))
    torch.testing.assert_close(Pm[:, col("LotFrontage")], expected)
    # constant columns (PoolArea, MiscVal = 0.1, MSZoning in D_H) become exact zeros
    for c in ("PoolArea", "MiscVal"):
        assert (P[:, col(c)] == 0).all() and (H[:, col(c)] == 0).all()
    assert (H[:, col("MSZoning")] == 0).all()
    assert torch.isfinite(P).all() and torch.isfinite(H).all()
    torch.testing.assert_close(
        hp.primary.y_train, standardize(torch.tensor([1e3, 2e3, 3e3], dtype=torch.float64))[:2]
    )


def test_tiny_csv_encoding_ignores_first_seen_order(tmp_path):
    """Codes come from sorted values, so reversing the rows reverses the features."""
    rows = tiny_rows()
    fwd = load_house_prices(write_csv(tmp_path / "a.csv", rows), n_train=2, n_test=1)
    rev = load_house_prices(write_csv(tmp_path / "b.csv", rows[::-1]), n_train=2, n_test=1)
    for a, b in ((fwd.primary, rev.primary), (fwd.harmful, rev.harmful)):
        Xa = torch.cat([a.X_train, a.X_test])
        Xb = torch.cat([b.X_train, b.X_test])
        torch.testing.assert_close(Xa, Xb.flip(0))


def test_csv_missing_columns_named(tmp_path):
    cols = tuple(c for c in KAGGLE_COLUMNS if c not in ("SalePrice", "Alley"))
    path = write_csv(tmp_path / "t.csv", tiny_rows(), cols)
    with pytest.raises(ValueError, match=r"missing columns \['Alley', 'SalePrice'\]"):
        load_house_prices(path, n_train=2, n_test=1)


def test_csv_unexpected_column_and_ragged_row(tmp_path):
    path = write_csv(tmp_path / "x.csv", tiny_rows(), (*KAGGLE_COLUMNS, "Extra"))
    with pytest.raises(ValueError, match=r"unexpected columns \['Extra'\]"):
        load_house_prices(path, n_train=2, n_test=1)
    path = write_csv(tmp_path / "r.csv", tiny_rows())
    lines = path.read_text().splitlines()
    lines[3] += ",surplus"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"r.csv:4: 82 fields, the header has 81"):
        load_house_prices(path, n_train=2, n_test=1)
    lines[3] = lines[3].rsplit(",", 3)[0]  # three fields short: pandas would pad it
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"r.csv:4: 79 fields, the header has 81"):
        load_house_prices(path, n_train=2, n_test=1)
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(ValueError, match=r"e.csv is empty"):
        load_house_prices(tmp_path / "e.csv", n_train=2, n_test=1)


def test_csv_too_few_rows_and_bad_arguments(tmp_path):
    path = write_csv(tmp_path / "t.csv", tiny_rows())
    with pytest.raises(
        ValueError, match="primary set has 3 rows and the harmful set 3; the split needs 4"
    ):
        load_house_prices(path, n_train=3, n_test=1)
    with pytest.raises(ValueError, match="n_train >= 2"):
        load_house_prices(path, n_train=1, n_test=1)
    with pytest.raises(ValueError, match="nan_fill"):
        load_house_prices(path, n_train=2, n_test=1, nan_fill="median")


def test_csv_folder_argument_and_missing_file(tmp_path):
    write_csv(tmp_path / "train.csv", tiny_rows())
    assert load_house_prices(tmp_path, n_train=2, n_test=1).primary.n_features == 79
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        load_house_prices(tmp_path / "nowhere.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty/train\.csv"):
        load_house_prices(tmp_path / "empty")


def test_default_data_dir_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("CONDNUM_DATA", str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.setenv("CONDNUM_DATA", str(tmp_path / "absent"))
    assert default_data_dir() is None
    with pytest.raises(FileNotFoundError, match="CONDNUM_DATA"):
        load_house_prices()
    with pytest.raises(FileNotFoundError, match="CONDNUM_DATA"):
        load_mnist()


# ----------------------------------------------------------------- IDX / MNIST


def write_idx(path: Path, magic: int, shape: tuple[int, ...], data: bytes, gz: bool) -> Path:
    blob = struct.pack(f">{1 + len(shape)}I", magic, *shape) + data
    path.write_bytes(gzip.compress(blob) if gz else blob)
    return path


def tiny_mnist(folder: Path, gz: bool = True, n_labels: int = 5) -> torch.Tensor:
    pixels = torch.arange(5 * 2 * 3, dtype=torch.uint8) * 8
    pixels[-1] = 255
    suffix = ".gz" if gz else ""
    write_idx(
        folder / f"t10k-images-idx3-ubyte{suffix}", 0x803, (5, 2, 3), pixels.numpy().tobytes(), gz
    )
    labels = bytes([3, 1, 4, 1, 5][:n_labels])
    write_idx(folder / f"t10k-labels-idx1-ubyte{suffix}", 0x801, (n_labels,), labels, gz)
    return pixels


@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip(tmp_path, gz):
    pixels = tiny_mnist(tmp_path, gz)
    images, labels = load_mnist(tmp_path, pixels="unit")
    assert images.shape == (5, 6) and images.dtype == torch.float64
    torch.testing.assert_close(images.flatten(), pixels.double() / 255)
    assert float(images.max()) == 1.0 and float(images.min()) == 0.0
    assert labels.tolist() == [3, 1, 4, 1, 5] and labels.dtype == torch.int64


def test_mnist_authors_normalization_is_the_default(tmp_path):
    """ToTensor() then Normalize((0.1307,), (0.3081,)), computed here from the bytes."""
    pixels = tiny_mnist(tmp_path)
    images, _ = load_mnist(tmp_path)
    expected = (pixels.double() / 255 - 0.1307) / 0.3081
    torch.testing.assert_close(images.flatten(), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="pixels must be"):
        load_mnist(tmp_path, pixels="zscore")


def test_idx_bad_magic_size_and_count(tmp_path):
    bad = write_idx(tmp_path / "bad", 0x801, (2, 2, 2), bytes(8), gz=False)
    with pytest.raises(ValueError, match="magic number 0x00000801, expected 0x00000803"):
        read_idx(bad, 3)
    short = write_idx(tmp_path / "short", 0x803, (2, 2, 2), bytes(7), gz=True)
    with pytest.raises(ValueError, match=r"shape \(2, 2, 2\) \(8 bytes\).* 7 data bytes"):
        read_idx(short, 3)
    (tmp_path / "stub").write_bytes(b"\x00\x00")
    with pytest.raises(ValueError, match="shorter than an IDX header"):
        read_idx(tmp_path / "stub", 1)
    tiny_mnist(tmp_path, n_labels=4)
    with pytest.raises(ValueError, match="5 images but 4 labels"):
        load_mnist(tmp_path)


def test_mnist_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"t10k-images-idx3-ubyte\[\.gz\]"):
        load_mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        load_mnist(tmp_path / "no_such_folder")


@pytest.mark.data
@needs_mnist
def test_mnist_test_set():
    images, labels = load_mnist(pixels="unit")
    assert images.shape == (10000, 784) and labels.shape == (10000,)
    assert 0.0 <= float(images.min()) and float(images.max()) == 1.0
    normalized, _ = load_mnist()
    assert abs(float(normalized.mean())) < 0.02 and abs(float(normalized.std()) - 1) < 0.02
    assert sorted(set(labels.tolist())) == list(range(10))
    X_P, X_H = digit_pair_sets(images, labels, 3, 8)
    assert X_P.shape[0] == int((labels == 3).sum()) and X_H.shape == (int((labels == 8).sum()), 784)


# ----------------------------------------------------------------- digit pairs


def test_load_digits():
    images, labels = load_digits()
    assert images.shape == (1797, 64) and labels.shape == (1797,)
    assert float(images.max()) == 1.0 and float(images.min()) == 0.0


def test_digit_pair_task_split():
    images, labels = load_digits()
    task = digit_pair_task(images, labels, 3, 8, train_fraction=0.6)
    n3, n8 = int((labels == 3).sum()), int((labels == 8).sum())
    assert task.X_train.shape[0] + task.X_test.shape[0] == n3 + n8
    assert int((task.y_train == 0).sum()) == round(0.6 * n3)
    assert set(task.y_train.tolist()) == {0, 1} and set(task.y_test.tolist()) == {0, 1}

    # train + test is a partition of the two digits' images: class 0 = digit 3, 1 = digit 8
    def rows(X: torch.Tensor) -> list[tuple[float, ...]]:
        return sorted(tuple(r) for r in X.tolist())

    X = torch.cat([task.X_train, task.X_test])
    y = torch.cat([task.y_train, task.y_test])
    assert rows(X[y == 0]) == rows(images[labels == 3])
    assert rows(X[y == 1]) == rows(images[labels == 8])


def test_digit_pair_task_deterministic_and_seeded():
    images, labels = load_digits()
    a = digit_pair_task(images, labels, 1, 7, seed=3)
    b = digit_pair_task(images, labels, 1, 7, seed=3)
    c = digit_pair_task(images, labels, 1, 7, seed=4)
    assert torch.equal(a.X_train, b.X_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.X_train, c.X_train)
    small = digit_pair_task(images, labels, 1, 7, max_per_class=10)
    assert small.X_train.shape[0] + small.X_test.shape[0] == 20


def test_digit_pair_bad_input():
    images, labels = load_digits()
    with pytest.raises(ValueError, match="must differ"):
        digit_pair_task(images, labels, 4, 4)
    with pytest.raises(ValueError, match="must differ"):
        digit_pair_sets(images, labels, 2, 2)
    keep = labels != 5
    with pytest.raises(ValueError, match="digit 5 has no samples"):
        digit_pair_task(images[keep], labels[keep], 5, 6)
    with pytest.raises(ValueError, match=r"labels must be \(N,\)"):
        digit_pair_task(images, labels[:-1], 0, 1)
    with pytest.raises(ValueError, match="images must be"):
        digit_pair_task(images[0], labels, 0, 1)
    with pytest.raises(ValueError, match="train_fraction"):
        digit_pair_task(images, labels, 0, 1, train_fraction=1.0)
    one = torch.nonzero(labels == 9).flatten()[:1]
    sel = torch.cat([torch.nonzero(labels == 0).flatten(), one])
    with pytest.raises(ValueError, match="digit 9 has 1 sample"):
        digit_pair_task(images[sel], labels[sel], 0, 9)
    # (N, H, W) images are accepted and flattened
    task = digit_pair_task(images.reshape(-1, 8, 8), labels, 0, 1)
    assert task.n_features == 64
