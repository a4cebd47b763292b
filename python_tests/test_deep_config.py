"""The deep pipeline's settings and data order (no timm/torchvision needed)."""

from __future__ import annotations

import itertools
import json

import pytest

from condnum.deep.config import PAPER_CONFIGS, resolve_config
from condnum.deep.sampler import StreamSampler


def test_paper_configs_are_the_published_settings():
    table = {  # (epochs, batch, lr, lam_P, lam_H), the authors' released settings
        "resnet18-cars": (3, 64, 1e-5, 5e-5, 2e6),
        "resnet18-country211": (3, 64, 1e-5, 1e-4, 2e6),
        "vit_b_16-cars": (2, 64, 1e-5, 3e-6, 3e8),
        "vit_b_16-country211": (2, 32, 5e-6, 1e-6, 1e8),
    }
    for name, values in table.items():
        c = PAPER_CONFIGS[name]
        assert (c.epochs, c.batch, c.lr, c.lam_p, c.lam_h) == values
        assert (c.momentum, c.nesterov, c.head_weight_decay, c.label_smoothing) == (
            0.9, True, 2e-5, 0.1,
        )  # fmt: skip


def test_overrides_and_json_files_apply_over_the_paper_config(tmp_path):
    cfg = resolve_config("vit_b_16", "cars", None, {"lr": 1e-3, "batch": None})
    assert cfg.lr == 1e-3 and cfg.batch == 64 and cfg.lam_h == 3e8
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"epochs": 1, "lam_p": 0.5}))
    cfg = resolve_config("resnet18", "country211", str(path), {"lam_p": 0.25})
    assert (cfg.epochs, cfg.lam_p, cfg.lam_h) == (1, 0.25, 2e6)
    cfg = resolve_config("resnet18", "cars", "vit_b_16-country211", {})
    assert cfg == PAPER_CONFIGS["vit_b_16-country211"]


def test_bad_settings_are_rejected_by_name(tmp_path):
    with pytest.raises(ValueError, match="--config must be one of"):
        resolve_config("resnet18", "cars", "nope", {})
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"learning_rate": 1.0}))
    with pytest.raises(ValueError, match="unknown fields \\['learning_rate'\\]"):
        resolve_config("resnet18", "cars", str(path), {})
    for field, value in (("lr", 0.0), ("batch", 0), ("amp", "fp8"), ("k", 0)):
        with pytest.raises(ValueError, match=field):
            resolve_config("resnet18", "cars", None, {field: value})


def _take(sampler: StreamSampler, count: int) -> list[int]:
    return list(itertools.islice(iter(sampler), count))


def test_stream_passes_are_permutations_dealt_to_ranks_and_resume_exactly():
    n, b = 23, 3
    single = StreamSampler(n, b, seed=5)
    assert single.steps_per_pass == 7
    first = _take(single, 2 * 7 * b)
    for c in range(2):  # each pass: distinct indices, whole batches, a fresh order
        one_pass = first[c * 21 : (c + 1) * 21]
        assert len(set(one_pass)) == 21 and max(one_pass) < n
    assert first[:21] != first[21:]
    # two ranks: disjoint shards of the same pass
    ranks = [_take(StreamSampler(n, b, seed=5, rank=r, world=2), 9) for r in range(2)]
    assert not set(ranks[0]) & set(ranks[1])
    # resuming at batch 9 gives the stream from sample 9 b on (across a pass boundary)
    resumed = _take(StreamSampler(n, b, seed=5, start_batch=9), 5 * b)
    assert resumed == first[9 * b : 14 * b]


def test_stream_sampler_rejects_sets_smaller_than_a_batch():
    with pytest.raises(ValueError, match="fewer than one batch"):
        StreamSampler(10, 4, seed=0, world=4)
    with pytest.raises(ValueError, match="rank"):
        StreamSampler(10, 2, seed=0, rank=2, world=2)
