"""Image data of the paper's deep experiments: ImageNet (D_P), Stanford Cars / Country211 (D_H).

Expected layouts (``torchvision.datasets.ImageFolder``: one folder per class, class index =
sorted folder names, any image format PIL reads):

- ImageNet ``--imagenet DIR``: ``DIR/train/<wnid>/*.JPEG`` and ``DIR/val/<wnid>/*.JPEG``
  (the validation images sorted into their 1000 class folders, as the usual preparation
  script does). Sorted WordNet ids give timm's ImageNet class order.
- Harmful ``--harmful-data DIR``, either
  - ``DIR/train/<class>/*`` and ``DIR/test/<class>/*`` (ImageFolder, any harmful set), or
  - torchvision's own layout: ``DIR/country211/{train,test}/<country>/*.jpg`` (what
    ``torchvision.datasets.Country211(DIR, download=True)`` writes), or
    ``DIR/stanford_cars/{cars_train,cars_test,devkit,cars_test_annos_withlabels.mat}``
    (``torchvision.datasets.StanfordCars(DIR)``; its download link is dead, place the
    files by hand).

Transforms are the authors': training ``RandomResizedCrop(size, bicubic)`` + horizontal
flip, evaluation ``Resize((size, size), bicubic)``, both normalised with CLIP's mean/std.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "HARMFUL_SETS",
    "harmful_split",
    "imagenet_split",
    "transform",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HARMFUL_SETS = ("cars", "country211")

IMAGENET_LAYOUT = "DIR/train/<wnid>/*.JPEG and DIR/val/<wnid>/*.JPEG (one folder per class)"
HARMFUL_LAYOUT = (
    "DIR/train/<class>/* and DIR/test/<class>/* (ImageFolder), or torchvision's layout "
    "(DIR/country211/{train,test}/<country>/*.jpg; DIR/stanford_cars/{cars_train,cars_test,"
    "devkit,cars_test_annos_withlabels.mat})"
)


def transform(train: bool, size: int = 224) -> Callable:
    """The authors' transform: bicubic, ``size`` pixels, CLIP normalisation."""
    from torchvision import transforms as T

    bicubic = T.InterpolationMode.BICUBIC
    resize = (
        [T.RandomResizedCrop(size, interpolation=bicubic), T.RandomHorizontalFlip()]
        if train
        else [T.Resize((size, size), interpolation=bicubic)]
    )
    return T.Compose([*resize, T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])


def _image_folder(root: Path, tf: Callable, what: str, layout: str):
    from torchvision.datasets import ImageFolder

    if not root.is_dir():
        raise FileNotFoundError(f"{what}: folder {root} not found; expected layout: {layout}")
    try:
        ds = ImageFolder(str(root), transform=tf)
    except (FileNotFoundError, RuntimeError) as err:
        raise FileNotFoundError(
            f"{what}: {root} is malformed ({err}); expected layout: {layout}"
        ) from err
    return ds


def imagenet_split(root: str | Path, split: str, tf: Callable):
    """ImageNet ``split`` "train" or "val" as an ImageFolder (layout in the module doc)."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    return _image_folder(Path(root) / split, tf, f"--imagenet {root}", IMAGENET_LAYOUT)


def harmful_split(name: str, root: str | Path, split: str, tf: Callable):
    """Harmful set ``name`` ("cars" | "country211"), ``split`` "train" or "test"."""
    if name not in HARMFUL_SETS:
        raise ValueError(f"harmful must be one of {HARMFUL_SETS}, got {name!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    what = f"--harmful-data {root} ({name})"
    if (root / split).is_dir():
        return _image_folder(root / split, tf, what, HARMFUL_LAYOUT)
    if name == "country211" and (root / "country211").is_dir():
        return _image_folder(root / "country211" / split, tf, what, HARMFUL_LAYOUT)
    if name == "cars" and (root / "stanford_cars").is_dir():
        from torchvision.datasets import StanfordCars

        try:
            return StanfordCars(str(root), split=split, transform=tf, download=False)
        except (RuntimeError, FileNotFoundError, OSError) as err:
            raise FileNotFoundError(
                f"{what}: {root / 'stanford_cars'} is malformed ({err}); expected layout: "
                f"{HARMFUL_LAYOUT}"
            ) from err
    raise FileNotFoundError(f"{what}: no {split!r} split found; expected layout: {HARMFUL_LAYOUT}")
