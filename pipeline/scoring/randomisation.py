"""The model-randomisation check (in the spirit of Adebayo et al., "Sanity Checks for
Saliency Maps", 2018): re-initialise every weight downstream of an explained layer, recompute
the class-logit gradients there, and score the same concepts with the same CAVs again.

The layer's activations (and so the concepts and CAVs) do not change, because nothing before
the layer is touched; only what the model does with them changes. An explanation whose concept
ranking survives this is not explaining the model's decision.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


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
