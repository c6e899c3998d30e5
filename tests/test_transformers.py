"""Video transformers: what their layers really return is pooled as a hand computation says,
and a tiny run of each family (random weights) gives every supervoxel and clip its vectors and
every clip its class-logit gradients."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.activations.extract import LayerTap, pool
from pipeline.io import read_parts
from pipeline.models.registry import REGISTRY, check_layers, load_model, skeleton
from tests.conftest import run_job_here

TRANSFORMERS = ("mvit_v1_b", "mvit_v2_s", "swin3d_t", "mvit_base_16x4")


def test_pooling_by_hand():
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 1 + 2 * 3 * 4, 5, generator=gen)  # a class token, then a 2 x 3 x 4 grid
    by_hand = torch.stack([sum(tokens[b, 1 + i] for i in range(24)) / 24 for b in range(2)])
    assert torch.allclose(pool(tokens, "tokens", (2, 3, 4)), by_hand, atol=1e-6)
    assert torch.allclose(pool(tokens[:, 1:], "tokens", (2, 3, 4)), by_hand, atol=1e-6)  # no class token
    assert torch.allclose(pool(tokens, "tokens"), tokens.mean(1))  # no grid: every token
    last = torch.randn(2, 2, 3, 4, 5, generator=gen)  # [B, T, H, W, C]
    by_hand = torch.stack([sum(last[b, t, y, x] for t in range(2) for y in range(3) for x in range(4)) / 24
                           for b in range(2)])
    assert torch.allclose(pool(last, "channels_last"), by_hand, atol=1e-6)
    first = last.permute(0, 4, 1, 2, 3)  # the same values as [B, C, T, H, W]
    assert torch.allclose(pool(first), by_hand, atol=1e-6)
    with pytest.raises(ValueError, match=r"\[B, N, C\]"):
        pool(last, "tokens")


def test_an_mvit_block_is_tapped_as_its_tokens_without_the_class_token():
    loaded = load_model({"name": "mvit_v2_s", "pretrained": False})
    assert loaded.spec.layout == "tokens"
    x = torch.randn(1, 3, 16, 224, 224, generator=torch.Generator().manual_seed(1))
    seen = {}
    block = dict(loaded.module.named_modules())["blocks.15"]
    handle = block.register_forward_hook(lambda _m, _i, out: seen.update(out=out))
    with LayerTap(loaded.module, ["blocks.15"], "tokens") as tap, torch.inference_mode():
        loaded.module(x)
        got = tap.pooled("blocks.15")
    handle.remove()
    tokens, grid = seen["out"]
    assert tuple(grid) == (8, 7, 7) and tokens.shape == (1, 1 + 8 * 7 * 7, 768)
    assert torch.allclose(got, tokens[:, 1:].sum(1) / (8 * 7 * 7), atol=1e-5)


def test_every_transformer_builds_with_its_recommended_layers():
    for name in TRANSFORMERS:
        spec = REGISTRY[name]
        module = skeleton(spec.builder, num_classes=400)
        check_layers(module, spec.layers, name)
        assert spec.layout in ("tokens", "channels_last") and spec.height == spec.width == 224


@pytest.mark.parametrize("name", TRANSFORMERS)
def test_the_recommended_layers_give_what_the_registry_says(name):
    """On the meta device (shapes only): stage 3's end has 384 channels on an 8 x 14 x 14 grid,
    stage 4's 768 on 8 x 7 x 7, as tokens after a class token or channels last."""
    spec = REGISTRY[name]
    module = skeleton(spec.builder, num_classes=400).to("meta")
    seen = {}
    modules = dict(module.named_modules())
    for layer in spec.layers:
        modules[layer].register_forward_hook(lambda _m, _i, out, layer=layer: seen.update({layer: out}))
    with torch.no_grad():
        module(torch.empty(1, 3, 16, 224, 224, device="meta"))
    for layer, (width, side) in zip(spec.layers, ((384, 14), (768, 7))):
        out = seen[layer]
        if spec.layout == "tokens":
            tokens, grid = out
            assert tuple(grid) == (8, side, side) and tuple(tokens.shape) == (1, 1 + 8 * side * side, width)
        else:
            assert tuple(out.shape) == (1, 8, side, side, width)


def test_a_layout_can_be_set_for_any_model():
    assert load_model({"name": "demo"}).spec.layout == "channels_first"
    assert load_model({"name": "demo", "layout": "channels_last"}).spec.layout == "channels_last"


def test_placed_checkpoint_loads_through_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no network in tests")))
    spec = REGISTRY["swin3d_t"]
    torch.manual_seed(3)
    placed = spec.builder(num_classes=400).state_dict()
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(placed, cache / os.path.basename(spec.checkpoint_url))
    loaded = load_model({"name": "swin3d_t", "pretrained": True})
    for key in ("patch_embed.proj.weight", "features.6.1.mlp.0.weight", "head.weight"):
        assert torch.equal(loaded.module.state_dict()[key], placed[key])
    assert len(loaded.class_names) == 400 and loaded.layers == ["features.4", "features.6"]


@pytest.fixture(scope="module")
def kinetics_named_corpus(tmp_path_factory):
    """A synthetic video in each of two folders named after Kinetics-400 classes, so the
    random-weight models' class logits have a target (the gradients)."""
    from pipeline.data.synthetic import SyntheticParams, ensure_corpus

    base = tmp_path_factory.mktemp("tf")
    ensure_corpus(str(base / "corpus"), SyntheticParams(videos_per_class=1, seed=31))
    root = base / "folder"
    for src, dst in (("advance", "abseiling"), ("retreat", "archery")):
        shutil.copytree(base / "corpus" / src, root / dst, ignore=shutil.ignore_patterns("*.parquet", "*.json"))
    return base, root


@pytest.mark.parametrize("name, widths, extra", [
    ("mvit_v2_s", (384, 768), []),
    ("swin3d_t", (384, 768), ["model.window=16"]),  # it takes any number of frames
    ("mvit_base_16x4", (384, 768), []),
])
def test_a_tiny_run_of_each_family(kinetics_named_corpus, local_ray, name, widths, extra):
    base, root = kinetics_named_corpus
    out = base / f"run-{name}"
    run_job_here(f"run.output_dir={out}", "dataset=folder", f"dataset.root={root}", f"model={name}",
                 "model.pretrained=false", "segment.n_segments=[4]", "activate.batch_size=4",
                 "run.stages=[ingest,segment,activate]", *extra)
    sv = read_parts(str(out / "supervoxels")).to_pandas()
    kept = sv[sv.status == "kept"]
    act = pd.concat([read_parts(str(out / part)).to_pandas() for part in ("activations", "clip_activations")])
    for layer, width in zip(REGISTRY[name].layers, widths):
        rows = act[act.layer == layer]
        assert set(zip(rows.video_id, rows.supervoxel_id)) == (
            set(zip(kept.video_id, kept.supervoxel_id)) | {(v, -1) for v in kept.video_id.unique()})
        vectors = np.stack(rows.vector.to_numpy())
        assert vectors.shape[1] == width and np.isfinite(vectors).all() and vectors.std(0).max() > 0
        clips = rows[rows.supervoxel_id == -1]
        gradients = np.stack(clips.gradient.to_numpy())
        assert gradients.shape == (2, width) and np.isfinite(gradients).all() and np.abs(gradients).sum() > 0
    stage = json.load(open(out / "run.json"))["stages"]["activate"]
    assert stage["videos_activated"] == 2
