"""LPIPS with the ``lpips`` package: VGG trunk by default (One-to-All's LPIPS-VGG), AlexNet selectable."""

from __future__ import annotations

import torch

from metrics import extractors, weights
from metrics.base import FrameMetric

TRUNKS = {"vgg": weights.VGG16, "alex": weights.ALEXNET}


class LPIPS(FrameMetric):
    """LPIPS per frame on inputs scaled to [-1, 1], averaged over each clip's frames, then over clips.

    ``unit_inputs=True`` feeds [0, 1] frames unscaled, as DisCo's evaluation code does (a known
    quirk that changes the values): only for reproducing DisCo-based tables.
    """

    name = "lpips"
    higher_is_better = False

    def __init__(
        self,
        net: str = "vgg",
        unit_inputs: bool = False,
        weights_path: str | None = None,
        weights_dir: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if net not in TRUNKS:
            raise ValueError(f"lpips: net must be one of {sorted(TRUNKS)}, got {net!r}")
        self.unit_inputs = unit_inputs
        self.network = extractors.lpips_network(net, str(weights.locate(TRUNKS[net], weights_dir, weights_path)))

    def frame_values(self, generated, target, annotations) -> torch.Tensor:
        """Per-frame LPIPS distance."""
        if not self.unit_inputs:
            generated, target = generated * 2.0 - 1.0, target * 2.0 - 1.0
        return self.network(generated, in1=target).flatten()
