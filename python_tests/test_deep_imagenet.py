"""``condnum immunize imagenet`` end to end on generated ImageFolder data and tiny timm models.

Tiny models of each family (a one-block-per-stage ResNet, a 2-block ViT; d = 16) with
random weights saved to a file, 16x16 images in 3 classes: the command's whole code path
(data, weights, training, checkpoints, measurements, attacker, plots) in seconds on a CPU.
Needs torchvision and timm (skipped visibly without them).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

pytest.importorskip("torchvision", reason="the deep pipeline needs torchvision")
timm = pytest.importorskip("timm", reason="the deep pipeline needs timm")

from condnum.cli import main  # noqa: E402
from condnum.deep import models  # noqa: E402
from condnum.deep.config import PAPER_CONFIGS  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 16
D = 16
CLASSES = 3
#: The tiny ResNet uses leaky ReLU and keeps a 2x2 map in its last stage: a random ReLU
#: ResNet has units that are zero on every image, an exactly rank-deficient feature Gram,
#: which RIll rejects today ("k exceeds the number of eigenvalues"); pretrained ImageNet
#: features on real images do not.
TINY = {
    "resnet18": {
        "layers": [1, 1, 1, 1],
        "channels": [D] * 4,
        "stem_width": D,
        "zero_init_last": False,
        "act_layer": "leaky_relu",
        "output_stride": 8,
    },
    "vit_b_16": {"img_size": SIZE, "patch_size": 8, "embed_dim": D, "depth": 2, "num_heads": 2},
}
#: Settings that make the run tiny (the paper's config otherwise): 3 steps of 2 x 16 images.
FAST = ["--batch", "16", "--max-steps", "3", "--image-size", str(SIZE), "--workers", "0",
        "--rir-groups", "3", "--rir-group-size", "8", "--attack-epochs", "20",
        "--lr", "1e-3", "--lam-p", "1e-4", "--lam-h", "1e-4", "--no-progress"]  # fmt: skip
#: float32 training: the same steps by two routes agree to accumulated rounding.
SAME_STEPS_RTOL = 1e-5


def _images(root: Path, per_class: int, seed: int) -> None:
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    for c in range(CLASSES):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            # smooth random patterns (a 3x3 grid upsampled): pooled features of pixel noise
            # would be nearly equal for every image
            grid = torch.rand(1, 3, 3, 3, generator=g) * (c + 1) / CLASSES
            pixels = torch.nn.functional.interpolate(grid, size=SIZE, mode="bilinear")[0]
            Image.fromarray((255 * pixels).byte().permute(1, 2, 0).numpy()).save(
                root / f"class{c}" / f"{i}.png"
            )


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory) -> dict[str, Path]:
    """ImageNet-style and harmful-set folders: 12 train / 12 eval images per class."""
    root = tmp_path_factory.mktemp("deep_data")
    for split, seed in (("train", 0), ("val", 1)):
        _images(root / "imagenet" / split, 12, seed)
    for split, seed in (("train", 2), ("test", 3)):
        _images(root / "harmful" / split, 12, seed)
    return {"imagenet": root / "imagenet", "harmful": root / "harmful", "root": root}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    """Random initial weights (theta_0) of each tiny model, saved as state_dict files."""
    root = tmp_path_factory.mktemp("deep_weights")
    out = {}
    for arch, kwargs in TINY.items():
        torch.manual_seed(0)
        model = timm.create_model(models.ARCHS[arch].timm_name, num_classes=CLASSES, **kwargs)
        out[arch] = root / f"{arch}.pth"
        torch.save(model.state_dict(), out[arch])
    return out


def _args(arch: str, data_dirs, weights, out: Path, *extra: str) -> list[str]:
    return ["immunize", "imagenet", "--arch", arch, "--imagenet", str(data_dirs["imagenet"]),
            "--harmful", "cars", "--harmful-data", str(data_dirs["harmful"]),
            "--weights", str(weights[arch]), "--out", str(out),
            "--model-kwargs", json.dumps({**TINY[arch], "num_classes": CLASSES}),
            *FAST, *extra]  # fmt: skip


def _tiny(arch: str, path: Path) -> torch.nn.Module:
    return models.build_model(arch, path, model_kwargs={**TINY[arch], "num_classes": CLASSES})


@pytest.mark.parametrize("arch", sorted(TINY))
def test_command_end_to_end_writes_results_checkpoint_and_plots(arch, data_dirs, weights, tmp_path):
    out = tmp_path / "run"
    amp = "bf16" if arch == "vit_b_16" else "off"  # the GPU default (bf16 autocast) on a CPU
    assert main(_args(arch, data_dirs, weights, out, "--amp", amp)) == 0
    res = json.loads((out / "results.json").read_text())

    assert res["features_d"] == D and res["training"]["steps"] == 3
    assert len(res["training"]["history"]["r_ill"]) == 3
    assert res["config"]["lam_h"] == 1e-4 and res["config"]["amp"] == amp  # overridden
    # the rest is the paper's config
    assert res["config"]["epochs"] == PAPER_CONFIGS[f"{arch}-cars"].epochs
    for key in ("theta0", "immunized"):
        assert 0.0 <= res["imagenet_top1"][key] <= 1.0
        assert len(res["attack"]["test_accuracy"][key]) == 20
    assert set(res["wall_time_s"]) == {"train", "evaluate", "total"}
    # RIR as defined: the mean over groups of [k_H(I)/k_H(0)] / [k_P(I)/k_P(0)]
    for protocol, size in (("groups_of_100", 8), ("groups_of_2d", 2 * D)):
        for rule in ("paper", "relative"):
            r = res["rir"][protocol][rule]
            k = torch.tensor(r["group_kappas"], dtype=torch.float64)
            assert k.shape == (3, 4) and bool((k >= 1).all())
            i, ii = k[:, 1] / k[:, 0], k[:, 3] / k[:, 2]
            assert r["rir"] == pytest.approx(float((i / ii).mean()), rel=1e-12)
            assert r["i"] == pytest.approx(float(i.mean()), rel=1e-12)
            assert r["rule"] == rule
        assert res["eval_sizes"]["group_sizes"][protocol] == size
    assert res["RIR_theta0"] == res["rir"]["groups_of_100"]["paper"]["rir"]
    for name in ("attacker_accuracy.png", "training.png", "checkpoint.pt"):
        assert (out / name).stat().st_size > 0

    # the immunized checkpoint loads into the same architecture and is not theta_0
    theta_I, theta_0 = _tiny(arch, out / "immunized.pt"), _tiny(arch, weights[arch])
    last = models.ARCHS[arch].last_block
    changed = [k for k, v in theta_I.state_dict().items()
               if not torch.equal(v, theta_0.state_dict()[k])]  # fmt: skip
    assert changed and all(
        k.startswith(last.replace("-1", "1")) or k.startswith(models.ARCHS[arch].head)
        for k in changed
    ), changed  # only the last block and the head were trained


def test_resume_continues_exactly_where_the_checkpoint_left_off(data_dirs, weights, tmp_path):
    """Same batches, optimizer state and weights (random crops would draw afresh: off)."""
    arch = "vit_b_16"
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = ("--no-augment", "--checkpoint-every", "1")
    assert main(_args(arch, data_dirs, weights, straight, "--max-steps", "4", *common)) == 0
    assert main(_args(arch, data_dirs, weights, resumed, "--max-steps", "2", *common)) == 0
    assert (
        main(_args(arch, data_dirs, weights, resumed, "--max-steps", "4", "--resume", *common)) == 0
    )
    a = torch.load(straight / "immunized.pt", weights_only=True)
    b = torch.load(resumed / "immunized.pt", weights_only=True)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0)
    res = json.loads((resumed / "results.json").read_text())
    assert res["training"]["steps"] == 4 and len(res["training"]["history"]["loss"]) == 4
    # a checkpoint of other training settings is refused
    assert main(_args(arch, data_dirs, weights, resumed, "--lr", "1", "--resume")) == 2


def test_missing_data_and_weights_give_errors_naming_path_and_layout(
    data_dirs, weights, tmp_path, capsys, monkeypatch
):
    missing = tmp_path / "nowhere"
    args = _args("resnet18", data_dirs, weights, tmp_path / "o")
    assert main([missing.as_posix() if a == str(data_dirs["imagenet"]) else a for a in args]) == 2
    err = capsys.readouterr().err
    assert str(missing / "train") in err and "train/<wnid>" in err
    empty = tmp_path / "harmful_empty"
    (empty / "train").mkdir(parents=True)
    assert main([empty.as_posix() if a == str(data_dirs["harmful"]) else a for a in args]) == 2
    err = capsys.readouterr().err
    assert "malformed" in err and "DIR/train/<class>" in err

    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(FileNotFoundError, match="timm/resnet18.*--weights PATH"):
        models.build_model("resnet18")
    with pytest.raises(ValueError, match="does not fit the model"):
        models.build_model("resnet18", weights["vit_b_16"], model_kwargs=TINY["resnet18"])


def test_probe_deep_attacks_a_checkpoint_and_its_reference(data_dirs, weights, tmp_path):
    out = tmp_path / "probe"
    kwargs = json.dumps({**TINY["vit_b_16"], "num_classes": CLASSES})
    assert main(["probe-deep", "--arch", "vit_b_16", "--weights", str(weights["vit_b_16"]),
                 "--reference-weights", str(weights["vit_b_16"]), "--harmful", "country211",
                 "--harmful-data", str(data_dirs["harmful"]), "--out", str(out),
                 "--model-kwargs", kwargs, "--epochs", "5", "--image-size", str(SIZE),
                 "--workers", "0", "--no-progress"]) == 0  # fmt: skip
    res = json.loads((out / "probe.json").read_text())
    assert res["test_images"] == CLASSES * 12 and res["train_images"] == CLASSES * 12
    # the same weights on the same rows: the same curve
    assert res["test_accuracy"]["checkpoint"] == res["test_accuracy"]["reference"]
    assert len(res["test_accuracy"]["checkpoint"]) == 5


# --------------------------------------------------------------------------- torchrun / DDP

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, argv: list[str], codes: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD),
                      RANK=str(rank), LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    codes[rank] = main(argv)


def test_two_gloo_ranks_equal_one_process_on_the_global_batch(data_dirs, weights, tmp_path):
    """torchrun's environment, 2 CPU ranks of 8 + 8 images vs 1 process of 16: same steps."""
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    common = ("--max-steps", "2", "--no-augment")
    assert main(_args("vit_b_16", data_dirs, weights, single, *common)) == 0
    with mp.Manager() as manager:
        codes = manager.dict()
        mp.spawn(_rank, args=(_free_port(), _args("vit_b_16", data_dirs, weights, ddp, *common),
                              codes), nprocs=WORLD, join=True)  # fmt: skip
        assert dict(codes) == {0: 0, 1: 0}
    a = torch.load(single / "immunized.pt", weights_only=True)
    b = torch.load(ddp / "immunized.pt", weights_only=True)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=SAME_STEPS_RTOL, atol=1e-7)
    assert json.loads((ddp / "results.json").read_text())["world_size"] == WORLD
