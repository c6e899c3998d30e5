"""The activation stage's parameter set (method steps 3-4): how patches are built and run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from pipeline.params import require

RESAMPLING = ("bicubic", "bilinear")


@dataclass
class ActivateParams:
    """How supervoxel patches and whole clips go through the model (the science fields of the
    config group `activate`).

    batch_size: windows per forward call (0: the device's default, 4 on a CPU, 32 on a GPU).
    measure_batch: each model actor measures batch sizes 1, 2, 4, ... on its device and takes
        the fastest per window that fits in memory. Off by default: the choice depends on
        timing, and the batch size changes the model's floating-point sums, so outputs would
        differ from run to run in the last bits (enough to move a k-means boundary).
    fill: the mean pixel (0-255) put outside a supervoxel, and where the evaluation removes
        voxels. The reference uses 117.
    resampling: the patch resize kernel, bicubic (PIL's, as the reference) or bilinear.
    autocast: the model in bf16 (its patches' last pass built in bf16). None: where the device
        runs bf16 natively, a GPU with bf16 units or a CPU with AVX512-BF16 or AMX; True/False:
        always / never.
    gradients: class-logit gradients of whole clips (TCAV needs them).
    channels_last: weights and batches in channels_last_3d (None: on every device; False: the
        plain layout). On a 2-core Xeon CPU it made the demo's activate stage 1.47x faster.
    """

    batch_size: int = 0
    measure_batch: bool = False
    fill: float = 117.0
    resampling: str = "bicubic"
    autocast: Optional[bool] = None
    gradients: bool = True
    channels_last: Optional[bool] = None

    def check(self) -> None:
        """Raise ParameterError naming the first field out of range."""
        require(self.batch_size >= 0, "batch_size", self.batch_size, "must be >= 1, or 0 for automatic")
        require(self.resampling in RESAMPLING, "resampling", self.resampling, "must be bicubic or bilinear")
        require(0 <= self.fill <= 255, "fill", self.fill, "must be a pixel value in [0, 255]")
