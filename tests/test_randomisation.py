"""The model-randomisation check: what is re-initialised, and that it changes the gradients."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models.demo import create_demo_convnet
from pipeline.scoring.randomisation import downstream_modules, randomised_copy
from pipeline.scoring.tcav import rank_change


class Branchy(nn.Module):
    """Registration order differs from execution order: `late` is registered first."""

    def __init__(self) -> None:
        super().__init__()
        self.late = nn.Linear(4, 2)
        self.early = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.late(torch.relu(self.early(x)))


def test_downstream_follows_execution_order_not_registration():
    model = create_demo_convnet()
    example = torch.zeros(1, 3, 8, 32, 32)
    assert downstream_modules(model, "layer2", example) == ["layer3.0", "layer3.1", "head"]
    assert downstream_modules(model, "layer3", example) == ["head"]
    assert downstream_modules(Branchy(), "early", torch.zeros(1, 3)) == ["late"]
    assert downstream_modules(Branchy(), "late", torch.zeros(1, 3)) == []


def test_randomised_copy_keeps_the_layer_and_changes_what_follows():
    torch.manual_seed(0)
    model = create_demo_convnet().eval()
    with torch.no_grad():  # as if trained: norms away from their initial values
        for m in model.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.2, 0.2), m.running_mean.uniform_(-0.1, 0.1)
    x = torch.randn(2, 3, 8, 32, 32)
    clone, names = randomised_copy(model, "layer2", x[:1], seed=3)
    again, _ = randomised_copy(model, "layer2", x[:1], seed=3)
    before, after = dict(model.named_parameters()), dict(clone.named_parameters())
    for name, p in before.items():
        same = torch.equal(p, after[name])
        assert same == (not name.startswith(("layer3.", "head."))), name
    for p, q in zip(clone.parameters(), again.parameters()):  # seeded
        assert torch.equal(p, q)
    assert names == ["layer3.0", "layer3.1", "head"]

    def grad_at_layer2(m: nn.Module) -> torch.Tensor:
        out = {}
        h = m.layer2.register_forward_hook(lambda _m, _i, o: out.setdefault("a", o))
        logits = m(x.requires_grad_(True))
        h.remove()
        return torch.autograd.grad(logits[:, 0].sum(), out["a"])[0]

    with torch.no_grad():  # the layer's activations do not move
        assert torch.equal(model.layer2(model.layer1(model.stem(x))), clone.layer2(clone.layer1(clone.stem(x))))
    assert not torch.allclose(grad_at_layer2(model), grad_at_layer2(clone))


def test_rank_change():
    assert rank_change([0.1, 0.5, 0.9], [0.2, 0.6, 1.0])["spearman"] == 1.0
    moved = rank_change([0.1, 0.5, 0.9], [0.9, 0.5, 0.1])
    assert moved["spearman"] == -1.0 and abs(moved["mean_abs_change"] - 0.5333) < 1e-3
