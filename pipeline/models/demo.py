"""The demo model: a small 3D ConvNet, trained on the synthetic corpus by
`python -m pipeline.train` and shipped in `pipeline/models/weights/demo.pt`.

Built like PyTorchVideo's builders: small `create_*` functions composed into a net whose
stages are named after what they are (`stem`, `layer1`..`layer3`, `head`), so the layers
to explain have readable names.
"""

from __future__ import annotations

import torch
from torch import nn


def create_conv_block(
    dim_in: int, dim_out: int, kernel: tuple[int, int, int], stride: tuple[int, int, int]
) -> nn.Sequential:
    """Conv3d -> BatchNorm3d -> ReLU, padded to keep the size up to the stride."""
    padding = tuple(k // 2 for k in kernel)
    return nn.Sequential(
        nn.Conv3d(dim_in, dim_out, kernel, stride=stride, padding=padding, bias=False),
        nn.BatchNorm3d(dim_out),
        nn.ReLU(inplace=True),
    )


class AvgMaxPool(nn.Module):
    """B x C x T x H x W -> B x 2C: the global mean and the global max of every channel.

    The max keeps a small actor's evidence, which a mean over the whole clip dilutes; the
    mean keeps a gradient at every position."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean((2, 3, 4)), x.amax((2, 3, 4))], dim=1)


class DemoConvNet(nn.Module):
    """Input B x 3 x T x H x W (normalised), output B x num_classes logits.

    The stem is two 3x3x3 convolutions of spatial stride 2 (a quarter of the resolution, as
    one 7x7 of stride 4 would give, without skipping the pixels of an object a few pixels
    across); later stages halve time and space; the head reads the mean and the max of each
    channel. On a corpus whose classes differ only in the motion of a 9-pixel actor among
    larger distractors it reaches 1.00 held-out, where a 7x7 stride-4 stem with a
    mean-pooled head stays at chance (README, "Training a model").
    """

    def __init__(self, num_classes: int = 3, width: int = 16) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(create_conv_block(3, w // 2, (3, 3, 3), (1, 2, 2)),
                                  create_conv_block(w // 2, w, (3, 3, 3), (1, 2, 2)))
        self.layer1 = create_conv_block(w, 2 * w, (3, 3, 3), (1, 2, 2))
        self.layer2 = create_conv_block(2 * w, 4 * w, (3, 3, 3), (2, 2, 2))
        self.layer3 = create_conv_block(4 * w, 4 * w, (3, 3, 3), (1, 1, 1))
        self.pool = AvgMaxPool()
        self.head = nn.Linear(2 * 4 * w, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.head(self.pool(x))


def create_demo_convnet(num_classes: int = 3, width: int = 16) -> DemoConvNet:
    return DemoConvNet(num_classes=num_classes, width=width)
