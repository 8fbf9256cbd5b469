"""V-MAE: a distance between VideoMAE features of paired generated and ground-truth windows.

EverAnimate reports "Video-MAE Distance (V-MAE, computed from VideoMAE features)" with values
between 0.02 and 0.07 that do not grow steadily with the horizon; its code does not compute it.
A Frechet score over 768-d features would be orders of magnitude larger and needs many samples,
so this is a paired distance: for each ``num_frames``-frame window (16 for VideoMAE-Base) at
``window_stride``, the cosine distance ``1 - cos(f_gen, f_gt)`` between mean-pooled last hidden
states, averaged over a clip's windows, then over clips. ``distance="l1"`` gives the mean absolute
feature difference instead (DisCo's ``MAE`` formula applied to these features). Clips shorter than
one window are skipped and counted.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from metrics import extractors
from metrics.base import ClipMetric
from metrics.video import clip_windows, to_uint8, window_batches


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``1 - cos`` per row of ``(S, D)`` features."""
    return 1.0 - F.cosine_similarity(a, b, dim=1)


def l1_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference per row of ``(S, D)`` features."""
    return (a - b).abs().mean(dim=1)


DISTANCES = {"cosine": cosine_distance, "l1": l1_distance}


class VMAE(ClipMetric):
    """V-MAE with ``transformers``' ``VideoMAEModel`` loaded from a local directory or cache."""

    name = "vmae"
    skip_keys = ("skipped_clips",)
    higher_is_better = False

    def __init__(
        self,
        model: str = "MCG-NJU/videomae-base-finetuned-kinetics",
        weights_dir: str | None = None,
        window_stride: int = 16,
        distance: str = "cosine",
        extractor=None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if distance not in DISTANCES:
            raise ValueError(f"vmae: distance must be one of {sorted(DISTANCES)}, got {distance!r}")
        if window_stride < 1:
            raise ValueError(f"vmae: window_stride must be >= 1, got {window_stride}")
        self.extractor = extractors.videomae(model, weights_dir) if extractor is None else extractor
        self.window_stride = window_stride
        self.distance = DISTANCES[distance]

    def clip_values(self, generated, target, annotations) -> torch.Tensor:
        """Mean window distance per clip, NaN for clips shorter than one window."""
        return torch.stack([self.clip_distance(g, t) for g, t in zip(generated, target)])

    def clip_distance(self, generated: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean distance over the windows of one ``(3, T, H, W)`` clip pair."""
        length = self.extractor.frames
        pairs = zip(
            window_batches(clip_windows(generated, length, self.window_stride), self.frame_chunk),
            window_batches(clip_windows(target, length, self.window_stride), self.frame_chunk),
        )
        distances = [self.distance(self.window_features(g), self.window_features(t)) for g, t in pairs]
        if not distances:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return torch.cat(distances).double().mean().cpu()

    def window_features(self, windows: torch.Tensor) -> torch.Tensor:
        """Float64 features of uint8 windows on the metric's device."""
        return self.extractor(to_uint8(windows.to(self.total.device))).double()
