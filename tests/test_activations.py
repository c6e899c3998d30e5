"""Activations: the batched device path gives the vectors of the plain per-patch path, and
the clip gradient is the derivative of the class logit."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.activations.extract import LayerTap, clip_outputs, pool, supervoxel_vectors
from pipeline.activations.patches import PatchSpec
from pipeline.activations.params import ActivateParams
from pipeline.activations.video import activate_video, requests_from_table
from pipeline.data.synthetic import SyntheticParams, render_video
from pipeline.models.registry import load_model
from tests.reference.patches import reference_patch
from pipeline.segmentation.supervoxels import SegmentParams, segment_clip


def _demo():
    model = load_model({"name": "demo"})
    clip = render_video(SyntheticParams(num_frames=36), "retreat", np.random.default_rng(3)).frames
    seg = segment_clip(clip, min_frames=16)
    return model, clip, seg


def test_supervoxel_vectors_match_the_per_patch_reference_path():
    """Reference: each patch on the host with numpy/PIL, one forward call per supervoxel's
    windows, vectors averaged. Batched device path: the same vectors."""
    model, clip, seg = _demo()
    spec = PatchSpec(16, 112, 112, model.spec.mean, model.spec.std)
    kept = seg.kept()
    table = {k: v[kept] for k, v in seg.table.items()}
    res = supervoxel_vectors(model.module, torch.from_numpy(clip), torch.from_numpy(seg.labels.astype(np.int64)),
                             requests_from_table(table), spec, model.layers, batch_size=3)
    assert res.owners == list(range(len(kept)))  # every kept supervoxel has windows here
    assert (res.windows == (table["t1"] - table["t0"]) // 16).all()
    mean = torch.tensor(spec.mean).view(3, 1, 1, 1)
    std = torch.tensor(spec.std).view(3, 1, 1, 1)
    with LayerTap(model.module, model.layers) as tap, torch.inference_mode():
        for j in range(0, len(kept), 7):  # a sample of supervoxels, all resolutions
            i = kept[j]
            box = tuple(int(seg.table[k][i]) for k in ("t0", "t1", "y0", "y1", "x0", "x1"))
            mask = seg.labels[seg.table["resolution"][i]] == seg.table["label"][i]
            patch = reference_patch(clip, mask, box, 112, 112)
            n = (box[1] - box[0]) // 16
            windows = torch.stack([torch.from_numpy(patch[w * 16:(w + 1) * 16]).float() for w in range(n)])
            x = ((windows.permute(0, 4, 1, 2, 3) / 255.0) - mean) / std
            model.module(x)
            for layer in model.layers:
                expected = pool(tap.outputs[layer]).mean(0).numpy()
                got = res.vectors[layer][j]
                assert np.abs(got - expected).max() <= 0.02 * np.abs(expected).max() + 1e-3, (layer, j)


def test_clip_gradient_is_the_directional_derivative_of_the_class_logit():
    """Finite differences: shifting the layer output by eps * v at every position changes the
    logit by eps * (positions) * (gradient . v)."""
    model, clip, _ = _demo()
    spec = PatchSpec(16, 112, 112, model.spec.mean, model.spec.std)
    clip = clip[:16]
    res = clip_outputs(model.module, torch.from_numpy(clip), spec, ["layer2"], gradient_class=2, batch_size=1)
    layer = dict(model.module.named_modules())["layer2"]
    v = torch.randn(64)
    from pipeline.models import clip_to_input

    x = clip_to_input(clip[None], spec.mean, spec.std)

    def logit_with_shift(eps: float) -> tuple[float, int]:
        shape = {}

        def hook(_m, _i, out):
            shape["n"] = out[0, 0].numel()
            return out + eps * v.view(1, -1, 1, 1, 1)

        h = layer.register_forward_hook(hook)
        with torch.no_grad():
            value = float(model.module(x)[0, 2])
        h.remove()
        return value, shape["n"]

    eps = 1e-3
    up, positions = logit_with_shift(eps)
    down, _ = logit_with_shift(-eps)
    numeric = (up - down) / (2 * eps)
    analytic = positions * float(np.dot(res.gradients["layer2"], v.numpy()))
    assert abs(numeric - analytic) <= 1e-2 * max(1.0, abs(analytic))
    assert res.gradient_class == 2 and res.windows == 1
    assert int(np.argmax(res.logits)) == 2  # the demo model recognises this retreat clip


def test_activate_video_covers_every_kept_supervoxel_and_the_clip():
    model, clip, seg = _demo()
    kept = seg.kept()
    table = {k: v[kept] for k, v in seg.table.items()}
    out = activate_video(model, "v", clip, seg.labels, table, "retreat", ActivateParams(batch_size=4),
                         torch.device("cpu"))
    assert list(out.supervoxel_ids) == list(table["supervoxel_id"])
    for layer in model.layers:
        assert out.supervoxel_vectors[layer].shape == (len(kept), 64)
        assert out.clip_vectors[layer].shape == (64,) and out.gradients[layer].shape == (64,)
    assert out.clip_windows == 2 and out.gradient_class == model.class_names.index("retreat")
    unlabeled = activate_video(model, "v", clip, seg.labels, table, "not-a-class", ActivateParams(batch_size=4),
                               torch.device("cpu"))
    assert unlabeled.gradients == {} and unlabeled.gradient_class is None


def test_batch_size_is_measured_on_the_device():
    model = load_model({"name": "demo"})
    spec = PatchSpec(16, 112, 112, model.spec.mean, model.spec.std)
    from pipeline.activations.extract import choose_batch_size

    best, timings = choose_batch_size(model.module, spec, model.layers, torch.device("cpu"),
                                      candidates=(1, 2, 4), max_call_seconds=5.0)
    assert list(timings) == [1, 2, 4] or len(timings) >= 2
    assert best in timings and timings[best] == min(timings.values())


def test_folding_batch_norms_keeps_the_model_and_its_hooked_layers():
    """prepare_model folds each Conv-BN pair into the convolution: same logits and hooked
    vectors to float rounding, same module names; a hooked convolution is left unfolded."""
    from torch import nn

    from pipeline.activations.video import fuse_conv_bn, prepare_model

    plain = load_model({"name": "demo"})
    fused = prepare_model(load_model({"name": "demo"}), torch.device("cpu"))
    norms = [n for n, m in fused.module.named_modules() if isinstance(m, nn.BatchNorm3d)]
    assert norms == []  # every Conv-BN pair of the demo model folded
    assert {n for n, _ in fused.module.named_modules()} == {n for n, _ in plain.module.named_modules()}
    plain.module.eval()
    x = torch.randn(3, 3, 16, 112, 112)
    layers = ["layer1", "layer2", "layer3"]
    with torch.no_grad(), LayerTap(plain.module, layers) as a, LayerTap(fused.module, layers) as b:
        torch.testing.assert_close(fused.module(x), plain.module(x), rtol=1e-4, atol=1e-4)
        for name in layers:
            torch.testing.assert_close(pool(b.outputs[name]), pool(a.outputs[name]), rtol=1e-4, atol=1e-5)
    kept = load_model({"name": "demo"}).module.eval()
    assert "stem.0.1" not in fuse_conv_bn(kept, keep=["stem.0.0"])  # the hooked conv keeps its own output
    assert isinstance(kept.stem[0][1], nn.BatchNorm3d) and isinstance(kept.stem[1][1], nn.Identity)
    assert isinstance(kept.layer1[1], nn.Identity)


def test_channels_last_gives_the_same_vectors_and_the_batches_follow_the_weights():
    """activate.channels_last (null: on every device, the CPU included): weights in
    channels_last_3d, every batch given in the same layout, and the supervoxel vectors equal
    the plain layout's (activate.channels_last=false) to rounding."""
    from pipeline.activations.extract import _memory_format, channels_last
    from pipeline.activations.video import prepare_model

    default = prepare_model(load_model({"name": "demo"}), torch.device("cpu"), channels_last=False)
    last = prepare_model(load_model({"name": "demo"}), torch.device("cpu"))
    assert not channels_last(default.module) and channels_last(last.module)
    x = torch.randn(2, 3, 16, 112, 112)
    assert _memory_format(x, last.module).is_contiguous(memory_format=torch.channels_last_3d)
    assert _memory_format(x, default.module) is x
    clip = render_video(SyntheticParams(size=112, num_frames=16), "advance", np.random.default_rng(3)).frames
    seg = segment_clip(clip, SegmentParams(n_segments=[15]), min_frames=16)
    requests = requests_from_table({k: v[seg.kept()] for k, v in seg.table.items()})
    s = default.spec
    spec = PatchSpec(s.window, s.height, s.width, tuple(s.mean), tuple(s.std))
    args = (torch.from_numpy(clip), torch.from_numpy(seg.labels.astype(np.int32)), requests, spec)
    a = supervoxel_vectors(default.module, *args, default.layers, 4)
    b = supervoxel_vectors(last.module, *args, last.layers, 4)
    assert a.owners == b.owners and len(a.owners) > 0
    for layer in default.layers:
        np.testing.assert_allclose(b.vectors[layer], a.vectors[layer], rtol=1e-4, atol=1e-5)


def test_bf16_vectors_and_gradients_follow_the_float32_ones():
    """activate.autocast: null resolves to bf16 where the device runs it natively; a bf16
    model's batches are bf16, and its supervoxel vectors, clip vectors, logits and gradients
    stay close to float32's (bf16 keeps 8 significant bits)."""
    from pipeline.activations.extract import resolve_autocast
    from pipeline.activations.video import prepare_model

    cpu = torch.device("cpu")
    assert resolve_autocast(True, cpu) is True and resolve_autocast(False, cpu) is False
    assert resolve_autocast(None, cpu) == (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    model = prepare_model(load_model({"name": "demo"}), cpu)
    clip = render_video(SyntheticParams(size=112, num_frames=16), "retreat", np.random.default_rng(5)).frames
    seg = segment_clip(clip, SegmentParams(n_segments=[15, 50]), min_frames=16)
    requests = requests_from_table({k: v[seg.kept()] for k, v in seg.table.items()})
    s = model.spec
    spec = PatchSpec(s.window, s.height, s.width, tuple(s.mean), tuple(s.std))
    args = (torch.from_numpy(clip), torch.from_numpy(seg.labels.astype(np.int32)), requests, spec, model.layers, 4)
    full, half = supervoxel_vectors(model.module, *args), supervoxel_vectors(model.module, *args, autocast=True)
    assert full.owners == half.owners and len(full.owners) > 5
    for layer in model.layers:
        a, b = full.vectors[layer], half.vectors[layer]
        assert np.abs(a - b).max() <= 0.03 * np.abs(a).max(), layer
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert cos.min() > 0.999, layer
    t_clip = torch.from_numpy(clip)
    c32 = clip_outputs(model.module, t_clip, spec, model.layers, gradient_class=1, batch_size=1)
    c16 = clip_outputs(model.module, t_clip, spec, model.layers, gradient_class=1, batch_size=1, autocast=True)
    assert np.argmax(c16.logits) == np.argmax(c32.logits)
    np.testing.assert_allclose(c16.logits, c32.logits, atol=0.05 * np.abs(c32.logits).max())
    for layer in model.layers:
        g, h = c32.gradients[layer], c16.gradients[layer]
        assert (g * h).sum() / np.linalg.norm(g) / np.linalg.norm(h) > 0.99, layer
