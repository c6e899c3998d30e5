"""The model registry: names, checkpoints through the hub cache (offline), layer checks."""

from __future__ import annotations

import os

import pytest
import torch

from pipeline.models.registry import (REGISTRY, ModelConfigError, check_layers, load_model,
                                      save_checkpoint)


def _cfg(**kw):
    base = {"name": "demo", "path": None, "factory": None, "pretrained": False, "layers": [],
            "class_names": None, "window": 0, "height": 0, "width": 0, "mean": [], "std": []}
    return {**base, **kw}


def test_hub_model_loads_pretrained_weights_from_the_torch_cache_offline(tmp_path, monkeypatch):
    """A checkpoint placed where torch.hub caches it is loaded with pretrained=True, no network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    spec = REGISTRY["x3d_xs"]
    reference = spec.builder(num_classes=400)
    ckpt_dir = os.path.join(torch.hub.get_dir(), "checkpoints")
    os.makedirs(ckpt_dir)
    torch.save({"model_state": reference.state_dict()}, os.path.join(ckpt_dir, os.path.basename(spec.checkpoint_url)))
    # Any attempt to download would fail loudly.
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("network used")))
    loaded = load_model(_cfg(name="x3d_xs", pretrained=True))
    for (k, a), b in zip(reference.state_dict().items(), loaded.module.state_dict().values()):
        assert torch.equal(a, b), k
    assert loaded.layers == ["blocks.3", "blocks.4"]
    assert (loaded.spec.window, loaded.spec.height) == (4, 160)
    assert len(loaded.class_names) == 400 and loaded.class_names[0] == "abseiling"
    assert not loaded.module.training


def test_missing_pretrained_weights_name_the_cache_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("offline")))
    with pytest.raises(ModelConfigError, match="^pretrained = True: .*X3D_XS.pyth"):
        load_model(_cfg(name="x3d_xs", pretrained=True))


def test_every_registry_model_builds_with_its_recommended_layers():
    for name in ("x3d_xs", "x3d_m", "slow_r50", "i3d_r50", "c2d_r50", "r2plus1d_r50", "csn_r101",
                 "r3d_18", "mc3_18", "r2plus1d_18", "s3d"):
        spec = REGISTRY[name]
        module = spec.builder(num_classes=400)
        check_layers(module, spec.layers, name)


def test_layer_names_are_checked_with_close_matches():
    loaded = load_model(_cfg())
    with pytest.raises(ModelConfigError, match=r"^layers = .*'layer_2'.*Close matches: \['layer2'"):
        check_layers(loaded.module, ["layer_2"], "demo")
    with pytest.raises(ModelConfigError, match="Close matches"):
        load_model(_cfg(layers=["layers3"]))


def test_demo_checkpoint_round_trip_and_other_sources(tmp_path):
    demo = load_model(_cfg())
    assert demo.class_names == ["advance", "jitter", "retreat"]
    assert demo.layers == ["layer2", "layer3"]
    x = torch.randn(2, 3, 16, 112, 112)
    with torch.inference_mode():
        expected = demo.module(x)
    path = str(tmp_path / "m.pt")
    save_checkpoint(path, demo.module, "demo", demo.class_names, demo.spec)
    again = load_model(_cfg(name="checkpoint", path=path))
    with torch.inference_mode():
        assert torch.allclose(again.module(x), expected)
    ts = str(tmp_path / "m.ts")
    torch.jit.save(torch.jit.trace(demo.module, x[:1]), ts)
    scripted = load_model(_cfg(name="torchscript", path=ts, layers=["layer2"]))
    with torch.inference_mode():
        assert torch.allclose(scripted.module(x), expected, atol=1e-5)
    fac = load_model(_cfg(name="factory", factory="pipeline.models.demo:create_demo_convnet", layers=["layer3"]))
    assert fac.class_names == ["class_0", "class_1", "class_2"]


def test_bad_checkpoint_files_fail_clearly(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelConfigError, match="^path = "):
        load_model(_cfg(name="checkpoint", path=str(junk)))
    other = tmp_path / "sd.pt"
    torch.save({"weight": torch.zeros(2)}, other)
    with pytest.raises(ModelConfigError, match="not a project checkpoint"):
        load_model(_cfg(name="checkpoint", path=str(other)))


def test_a_checkpoint_of_an_older_demo_network_is_refused_before_any_work(tmp_path):
    """A project checkpoint whose weights do not fit the architecture of this version (the demo
    network before its stem and head changed): the config check names the path and where the
    weights differ; the main job stops before ingesting anything."""
    from torch import nn

    from pipeline.models.demo import create_conv_block, create_demo_convnet
    from pipeline.models.registry import check_model_config
    from tests.conftest import run_cli

    old = create_demo_convnet(num_classes=3)
    old.stem = create_conv_block(3, 16, (3, 7, 7), (1, 4, 4))  # the 7x7 stride-4 stem it had
    old.head = nn.Linear(64, 3)  # over the mean only
    path = tmp_path / "old.pt"
    save_checkpoint(str(path), old, "demo", ["advance", "jitter", "retreat"], REGISTRY["demo"])
    for check in (lambda: check_model_config(_cfg(name="checkpoint", path=str(path))),
                  lambda: load_model(_cfg(name="checkpoint", path=str(path)))):
        with pytest.raises(ModelConfigError, match="do not fit the 'demo' architecture .*head.weight"):
            check()
    res = run_cli("model=checkpoint", f"model.path={path}", f"run.output_dir={tmp_path / 'out'}",
                  f"dataset.root={tmp_path / 'corpus'}")
    assert res.returncode == 2 and "model.path" in res.stderr and "retrain it" in res.stderr
    assert not (tmp_path / "out" / "videos.parquet").exists() and not (tmp_path / "corpus").exists()
