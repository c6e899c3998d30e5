"""The model-randomisation check (in the spirit of Adebayo et al., "Sanity Checks for
Saliency Maps", 2018): re-initialise every weight downstream of an explained layer, recompute
the class-logit gradients there, and score the same concepts with the same CAVs again.

The layer's activations (and so the concepts and CAVs) do not change, because nothing before
the layer is touched; only what the model does with them changes. An explanation whose concept
ranking survives this is not explaining the model's decision.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.activations.extract import clip_outputs
from pipeline.activations.video import to_device
from pipeline.data.ingest import read_ingested_clip


def downstream_modules(model: nn.Module, layer: str, example: torch.Tensor) -> list[str]:
    """Names of the modules holding weights that run after `layer` has produced its output,
    found by running `example` through the model and recording the order modules finish in
    (registration order is not execution order in general). The layer's own submodules are
    upstream of its output and never included."""
    order: list[str] = []
    handles = []
    modules = dict(model.named_modules())
    if layer not in modules:
        raise KeyError(f"no module named {layer!r} in the model")
    for name, module in modules.items():
        if name == layer or next(module.parameters(recurse=False), None) is not None \
                or next(module.buffers(recurse=False), None) is not None:
            handles.append(module.register_forward_hook(lambda _m, _i, _o, name=name: order.append(name)))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    if layer not in order:
        raise RuntimeError(f"layer {layer!r} did not run in the model's forward")
    after = order[order.index(layer) + 1:]
    inside = layer + "."
    return list(dict.fromkeys(n for n in after if n != layer and not n.startswith(inside)))


def randomised_copy(model: nn.Module, layer: str, example: torch.Tensor, seed: int = 0) -> tuple[nn.Module, list[str]]:
    """A copy of `model` with every module downstream of `layer` re-initialised (seeded):
    `reset_parameters()` where the module has one (convolutions, linear layers, norms, which
    also reset their running statistics), else a normal(0, 0.02) draw for each weight.
    Returns (the copy, the names re-initialised)."""
    clone = copy.deepcopy(model)
    names = downstream_modules(clone, layer, example)
    modules = dict(clone.named_modules())
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for name in names:
            module = modules[name]
            if hasattr(module, "reset_parameters"):
                state = torch.get_rng_state()
                torch.manual_seed(int(torch.randint(0, 2 ** 31 - 1, (1,), generator=gen)))
                module.reset_parameters()
                torch.set_rng_state(state)
            else:
                for p in module.parameters(recurse=False):
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    clone.eval()
    return clone, names


def randomised_gradients(host: Any, row: dict[str, Any], layers: list[str], seed: int) -> dict[str, np.ndarray]:
    """One video's class-logit gradient at each layer from a copy of the model whose every
    weight after that layer is re-initialised: {layer: vector}. Runs on a model actor (`host`,
    pipeline.orchestration.actors.ModelActor), which keeps each (layer, seed)'s copy."""
    k = host.class_index(row)
    t_clip = to_device(read_ingested_clip(row, host.clip_spec, host.limits).frames, host.device)
    out: dict[str, np.ndarray] = {}
    for layer in layers:
        key = ("randomised", layer, seed)
        if key not in host.cache:
            example = torch.zeros((1, 3, host.spec.window, host.spec.height, host.spec.width), device=host.device)
            host.cache[key] = randomised_copy(host.model.module, layer, example, seed)[0]
        res = clip_outputs(host.cache[key], t_clip, host.spec, [layer], k, host.params.batch_size,
                           host.params.autocast)
        out[layer] = res.gradients[layer]
    return out
