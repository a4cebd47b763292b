"""The paper's deep models (timm), their weights and the split into features and head.

``--arch resnet18`` is timm's ``resnet18`` (d = 512 features after global pooling);
``--arch vit_b_16`` is timm's ``vit_base_patch16_224`` (d = 768, the class token after the
final norm). The features ``Z`` are the penultimate layer
(``forward_head(forward_features(x), pre_logits=True)``), the head is the pretrained
ImageNet classifier (``get_classifier()``). Only the last block (ResNet18 ``layer4``, ViT
``blocks.11``) and the head are trained while immunizing, as in the paper.

Weights come from a local file (a ``state_dict`` saved by torch, ``.pth``/``.pt``/``.bin``,
or ``.safetensors``; a dict with a ``"model"`` or ``"state_dict"`` entry is unwrapped) or
from timm's local cache (the Hugging Face hub cache, read with downloads disabled).
Nothing is ever downloaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["ARCHS", "Arch", "FeatureModel", "build_model", "load_state", "trainable_parameters"]


@dataclass(frozen=True)
class Arch:
    """A paper architecture: its timm name, feature size and the modules trained."""

    timm_name: str
    features: int
    last_block: str  # module path of the block that is immunized
    head: str  # module path of the classifier


ARCHS: dict[str, Arch] = {
    "resnet18": Arch("resnet18", 512, "layer4", "fc"),
    "vit_b_16": Arch("vit_base_patch16_224", 768, "blocks.-1", "head"),
}


def _timm():
    try:
        import timm
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "condnum's deep-network pipeline needs timm and torchvision: "
            "pip install 'condnum[deep]' (or pip install timm torchvision)"
        ) from err
    return timm


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"--weights {path}: expected a state_dict, got {type(state).__name__}")
    return state


def _cached_weights(timm_name: str) -> Path | None:
    """The pretrained file of ``timm_name``'s default tag in the local HF cache, if there."""
    timm = _timm()
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(timm_name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        return None
    for name in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(hub_id, name)
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found)
    return None


def weights_hint(arch: str) -> str:
    """Where to get ``arch``'s ImageNet weights, for error messages and the README."""
    timm = _timm()
    name = ARCHS[arch].timm_name
    cfg = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    return (
        f"download the weights of timm's {name!r} (Hugging Face hub id {hub_id!r}: "
        f"https://huggingface.co/{hub_id}/resolve/main/model.safetensors) and pass the file "
        f"with --weights PATH, or fill timm's cache on a machine with network access with "
        f"python -c \"import timm; timm.create_model('{name}', pretrained=True)\" "
        f"(cache: $HF_HOME/hub, default ~/.cache/huggingface/hub)"
    )


def load_state(model: nn.Module, path: str | Path) -> None:
    """Load a state_dict file into ``model`` (strict: every key must match)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--weights {path}: no such file")
    missing, unexpected = model.load_state_dict(_read_state(path), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"--weights {path} does not fit the model: missing keys {missing[:5]}, "
            f"unexpected keys {unexpected[:5]} (was it saved from another architecture?)"
        )


def build_model(
    arch: str,
    weights: str | Path | None = None,
    *,
    model_kwargs: dict[str, Any] | None = None,
    num_classes: int | None = None,
) -> nn.Module:
    """timm model ``arch`` ("resnet18" | "vit_b_16") with weights from ``weights`` or the cache.

    ``model_kwargs`` go to ``timm.create_model`` (e.g. ``depth=2, embed_dim=32`` for a
    small ViT in tests); ``num_classes`` defaults to timm's (1000, ImageNet).

    Raises:
        ValueError: unknown ``arch`` or weights that do not fit.
        FileNotFoundError: no ``weights`` file and nothing in timm's cache (the message
            says what to download and where to put it).
    """
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {sorted(ARCHS)}, got {arch!r}")
    timm = _timm()
    kwargs = dict(model_kwargs or {})
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    model = timm.create_model(ARCHS[arch].timm_name, pretrained=False, **kwargs)
    path = Path(weights) if weights is not None else _cached_weights(ARCHS[arch].timm_name)
    if path is None:
        raise FileNotFoundError(f"no weights for --arch {arch}: {weights_hint(arch)}")
    load_state(model, path)
    return model


def _module(model: nn.Module, path: str) -> nn.Module:
    """``model.get_submodule`` that also accepts negative indices (``blocks.-1``)."""
    module = model
    for part in path.split("."):
        module = module[int(part)] if part.lstrip("-").isdigit() else getattr(module, part)
    return module


def trainable_parameters(
    model: nn.Module, arch: str
) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Freeze ``model`` except the last block and the head; return (block, head) parameters."""
    model.requires_grad_(False)
    block = _module(model, ARCHS[arch].last_block).requires_grad_(True)
    head = _module(model, ARCHS[arch].head).requires_grad_(True)
    return list(block.parameters()), list(head.parameters())


class FeatureModel(nn.Module):
    """``x -> (Z, logits)``: the penultimate features and the classifier's output.

    One module for one forward per step (what DDP and ``torch.compile`` want).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        Z = self.features(x)
        return Z, self.model.get_classifier()(Z)
