"""``MetricSuite``: the configured set of metrics behind one update/compute/reset.

Config (the ``metrics`` Hydra group, conf/metrics/)::

    names: [psnr, ssim]        # which metrics, by the names in METRICS
    weights_dir: weights/metrics
    frame_chunk: 16            # frames per network forward / per float chunk of a clip
    ssim: {mode: gaussian}     # per-metric options: keyword arguments of the metric class

Under DDP every metric syncs its sums in ``compute``: one process and several give the same numbers.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchmetrics import Metric

from metrics.base import ClipMetric
from metrics.frechet import FID, FIDVID, FVD
from metrics.perceptual import LPIPS
from metrics.pixel import PSNR, SSIM, BackgroundPSNR, FacePSNR, MaskedPSNR, MaskedSSIM
from metrics.silhouette import SilhouetteIoU
from metrics.video import ANNOTATIONS
from metrics.vmae import VMAE

METRICS: dict[str, type[Metric]] = {
    "psnr": PSNR,
    "ssim": SSIM,
    "psnr_mask": MaskedPSNR,
    "ssim_mask": MaskedSSIM,
    "psnr_background": BackgroundPSNR,
    "fpsnr": FacePSNR,
    "silhouette_iou": SilhouetteIoU,
    "lpips": LPIPS,
    "fid": FID,
    "fid_vid": FIDVID,
    "fvd": FVD,
    "vmae": VMAE,
}


def build_metric(name: str, options: Mapping, weights_dir: str | None, frame_chunk: int) -> Metric:
    """One metric by name with its options; unknown names or options raise naming the choices."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; known: {sorted(METRICS)}")
    kwargs = {"frame_chunk": frame_chunk, **options}
    if "weights_dir" in inspect.signature(METRICS[name]).parameters:  # the metrics with feature networks
        kwargs.setdefault("weights_dir", weights_dir)
    try:
        return METRICS[name](**kwargs)
    except (TypeError, ValueError) as error:  # unknown or invalid options
        raise ValueError(f"metric {name!r} with options {dict(options)}: {error}") from error


class MetricSuite(nn.Module):
    """Named metrics updated together on video batches ``(B, 3, T, H, W)`` (see :mod:`metrics.video`)."""

    def __init__(self, metrics: Mapping[str, Metric]) -> None:
        super().__init__()
        self.metrics = nn.ModuleDict(metrics)

    @classmethod
    def from_config(cls, cfg: Mapping | DictConfig) -> MetricSuite:
        """Build the suite a ``metrics`` config node describes (see the module docstring)."""
        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
        weights_dir = cfg.get("weights_dir")
        frame_chunk = cfg.get("frame_chunk", 16)
        metrics = {name: build_metric(name, cfg.get(name) or {}, weights_dir, frame_chunk) for name in cfg["names"]}
        return cls(metrics)

    @property
    def needs(self) -> dict[str, list[str]]:
        """``{annotation: [metric names]}`` of the annotations ``update`` needs (keypoints, person_mask, plate)."""
        needs = {name: [key for key, m in self.metrics.items() if name in getattr(m, "needs", ())] for name in ANNOTATIONS}
        return {name: keys for name, keys in needs.items() if keys}

    def update(
        self,
        generated: torch.Tensor,
        target: torch.Tensor,
        keypoints: torch.Tensor | None = None,
        person_mask: torch.Tensor | None = None,
        plate: torch.Tensor | None = None,
        skip_unannotated: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Update every metric; return the per-clip values ``{name: (B,)}`` of the per-clip metrics.

        generated, target: ``(B, 3, T, H, W)`` float in [0, 1] or uint8. keypoints: the target's
        ``(B, T, 133, 3)`` in pixels (F-PSNR). person_mask: ``(B, T, H, W)`` bool (masked PSNR and
        SSIM, silhouette IoU). plate: ``(B, 3, H, W)`` the background without the person, in the
        videos' range (silhouette IoU). A metric whose annotation is missing raises, or with
        ``skip_unannotated`` counts the clips as skipped.
        """
        per_clip = {}
        for name, metric in self.metrics.items():
            if isinstance(metric, ClipMetric):
                metric.update(generated, target, keypoints, person_mask, plate, skip_unannotated=skip_unannotated)
            else:
                metric.update(generated, target)
            if isinstance(metric, ClipMetric):
                per_clip[name] = metric.last_clip_values
        return per_clip

    def compute(self) -> dict[str, float]:
        """``{name: value}``; metrics that skip frames or clips add ``{name}_skipped_...`` counts."""
        results = {}
        for name, metric in self.metrics.items():
            value = metric.compute()
            if isinstance(value, dict):
                results[name] = float(value[metric.name])
                results.update({f"{name}_{key}": float(n) for key, n in value.items() if key != metric.name})
            else:
                results[name] = float(value)
        return results

    def reset(self) -> None:
        """Reset every metric."""
        for metric in self.metrics.values():
            metric.reset()
