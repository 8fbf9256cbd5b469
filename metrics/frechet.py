"""Frechet distances between feature distributions: FID, FID-VID and FVD.

Each side (generated, target) keeps streamed moments in float64: the feature sum, the sum of outer
products and the count. They add up across batches and DDP processes, so the result does not
depend on how clips are split; mean and covariance are formed only in ``compute``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from torchmetrics import Metric
from torchmetrics.utilities import rank_zero_warn

from metrics import extractors, weights
from metrics.video import (
    check_pair,
    clip_windows,
    flatten_frames,
    frame_ranges,
    pad_to_multiple,
    to_uint8,
    window_batches,
)

COVARIANCE_DDOF = {"unbiased": 1, "biased": 0}  # N - 1 (np.cov: pytorch-fid, DisCo) or N (StyleGAN-V)


def frechet_distance(
    mean1: np.ndarray, cov1: np.ndarray, mean2: np.ndarray, cov2: np.ndarray, eps: float = 1e-6
) -> float:
    """``|m1 - m2|^2 + Tr(C1 + C2 - 2 sqrt(C1 C2))`` with scipy's matrix square root (as pytorch-fid/DisCo).

    A singular product gets ``eps`` added to both diagonals; an imaginary part above 1e-3 on the
    diagonal of the square root raises.
    """
    covmean = scipy.linalg.sqrtm(cov1 @ cov2)
    if not np.isfinite(covmean).all():
        offset = np.eye(cov1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((cov1 + offset) @ (cov2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"Frechet distance: imaginary component {np.abs(covmean.imag).max():.3g} in sqrt(C1 C2)")
        covmean = covmean.real
    diff = mean1 - mean2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(covmean))


def mean_and_covariance(total: torch.Tensor, outer: torch.Tensor, count: torch.Tensor, ddof: int):
    """Mean ``(D,)`` and covariance ``(D, D)`` (numpy float64) from streamed moments."""
    n = float(count)
    mean = total.cpu().numpy() / n
    covariance = (outer.cpu().numpy() - n * np.outer(mean, mean)) / (n - ddof)
    return mean, covariance


class FrechetMetric(Metric):
    """Frechet distance between the features of generated and of target samples.

    ``extractor`` is a callable from :mod:`metrics.extractors` (or any callable with ``dim`` and
    ``frames``); ``covariance`` is ``unbiased`` (N - 1) or ``biased`` (N).
    """

    name = ""
    higher_is_better = False
    is_differentiable = False
    full_state_update = False

    def __init__(self, extractor, covariance: str = "unbiased", frame_chunk: int = 16, **kwargs) -> None:
        super().__init__(**kwargs)
        if covariance not in COVARIANCE_DDOF:
            raise ValueError(f"{self.name}: covariance must be one of {sorted(COVARIANCE_DDOF)}, got {covariance!r}")
        self.extractor = extractor
        self.ddof = COVARIANCE_DDOF[covariance]
        self.frame_chunk = frame_chunk
        dim = extractor.dim
        for side in ("generated", "target"):
            self.add_state(f"{side}_sum", torch.zeros(dim, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_outer", torch.zeros(dim, dim, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def features(self, video: torch.Tensor) -> Iterator[torch.Tensor]:
        """Feature batches ``(n, D)`` of the samples in a ``(B, 3, T, H, W)`` video batch."""
        raise NotImplementedError

    def update(
        self,
        generated: torch.Tensor,
        target: torch.Tensor,
    ) -> None:
        """Add the samples of a batch of clip pairs (unpaired use: the sides are pooled separately)."""
        check_pair(generated, target)
        for side, video in (("generated", generated), ("target", target)):
            for batch in self.features(video):
                batch = batch.to(self.generated_sum.device, torch.float64)
                getattr(self, f"{side}_sum").add_(batch.sum(dim=0))
                getattr(self, f"{side}_outer").add_(batch.T @ batch)
                getattr(self, f"{side}_count").add_(batch.shape[0])

    def compute(self) -> torch.Tensor:
        """The Frechet distance; NaN (with a warning) while a side has fewer than 2 samples."""
        counts = (int(self.generated_count), int(self.target_count))
        if min(counts) < 2:
            rank_zero_warn(f"{self.name}: needs at least 2 samples per side, has {counts}; returning NaN")
            return torch.tensor(float("nan"), dtype=torch.float64)
        generated = mean_and_covariance(self.generated_sum, self.generated_outer, self.generated_count, self.ddof)
        target = mean_and_covariance(self.target_sum, self.target_outer, self.target_count, self.ddof)
        return torch.tensor(frechet_distance(*generated, *target), dtype=torch.float64)


FID_SAMPLES = ("frames", "per_clip")


class FID(FrechetMetric):
    """FID: torch-fidelity's InceptionV3 (2015-12-05 weights), 2048-d pool3 features of every frame.

    ``samples="frames"`` (default): all frames of all clips pooled into one distance.
    ``samples="per_clip"``: One-to-All's released evaluation (pytorch-fid on each clip's folder of
    frames against its ground truth's): one distance per clip pair, averaged over clips.
    """

    name = "fid"

    def __init__(
        self,
        weights_path: str | None = None,
        weights_dir: str | None = None,
        covariance: str = "unbiased",
        samples: str = "frames",
        extractor=None,
        **kwargs,
    ) -> None:
        if samples not in FID_SAMPLES:
            raise ValueError(f"fid: samples must be one of {FID_SAMPLES}, got {samples!r}")
        if extractor is None:
            extractor = extractors.inception(str(weights.locate(weights.INCEPTION, weights_dir, weights_path)))
        super().__init__(extractor, covariance, **kwargs)
        self.samples = samples
        self.add_state("clip_fid_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("clip_count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def features(self, video: torch.Tensor) -> Iterator[torch.Tensor]:
        """Inception features of every frame, ``frame_chunk`` frames at a time."""
        for start, stop in frame_ranges(video.shape[2], self.frame_chunk):
            chunk = video[:, :, start:stop].to(self.generated_sum.device)
            yield self.extractor(flatten_frames(to_uint8(chunk)))

    def update(self, generated: torch.Tensor, target: torch.Tensor) -> None:
        """``frames``: every frame a sample of one pooled distance; ``per_clip``: one distance per clip pair, averaged."""
        if self.samples == "frames":
            return super().update(generated, target)
        check_pair(generated, target)
        for clip_generated, clip_target in zip(generated, target):
            sides = [torch.cat(list(self.features(clip[None]))).double().cpu().numpy() for clip in (clip_generated, clip_target)]
            if len(sides[0]) < 2:
                raise ValueError(f"fid: samples=per_clip needs clips of at least 2 frames, got {len(sides[0])}")
            moments = [(side.mean(axis=0), np.atleast_2d(np.cov(side, rowvar=False, ddof=self.ddof))) for side in sides]
            self.clip_fid_sum += frechet_distance(*moments[0], *moments[1])
            self.clip_count += 1

    def compute(self) -> torch.Tensor:
        """The pooled distance, or the mean of the per-clip distances; NaN (with a warning) without enough samples."""
        if self.samples == "frames":
            return super().compute()
        if int(self.clip_count) == 0:
            rank_zero_warn("fid: samples=per_clip has no clip yet; returning NaN")
            return torch.tensor(float("nan"), dtype=torch.float64)
        return self.clip_fid_sum / self.clip_count


SAMPLES = ("windows", "clip_mean", "first_window", "whole_clip")


class VideoFrechetMetric(FrechetMetric):
    """A Frechet distance over clip features of ``extractor.frames``-frame windows.

    ``samples="windows"``: every window at ``window_stride`` is one sample (DisCo's evaluation cuts
    a 16-frame GIF at every frame: stride 1). ``samples="clip_mean"``: DisCo's per-video code: the
    clip is padded with its last frame to a multiple of the window, cut into consecutive windows,
    and their features averaged into one sample per clip. ``samples="first_window"``: the first
    window of each clip is its one sample (StyleGAN-V: one 16-frame clip per video).
    ``samples="whole_clip"``: the whole clip through the network as one sample (One-to-All's FVD).
    """

    def __init__(self, extractor, samples: str = "windows", window_stride: int = 16, **kwargs) -> None:
        if samples not in SAMPLES:
            raise ValueError(f"{self.name}: samples must be one of {SAMPLES}, got {samples!r}")
        if window_stride < 1:
            raise ValueError(f"{self.name}: window_stride must be >= 1, got {window_stride}")
        super().__init__(extractor, **kwargs)
        self.samples = samples
        self.window_stride = window_stride

    def features(self, video: torch.Tensor) -> Iterator[torch.Tensor]:
        """Window features (``windows``), or one feature per clip (the others)."""
        length = self.extractor.frames
        for clip in video:
            if self.samples == "windows":
                yield from self.window_features(clip_windows(clip, length, self.window_stride))
            elif self.samples == "first_window":
                if clip.shape[1] < length:
                    raise ValueError(f"{self.name}: samples=first_window needs clips of at least {length} frames, got {clip.shape[1]}")
                yield from self.window_features(clip_windows(clip, length, length)[:1])
            elif self.samples == "whole_clip":
                yield from self.window_features(clip[None])
            else:
                padded = pad_to_multiple(clip, length)
                per_window = torch.cat(list(self.window_features(clip_windows(padded, length, length))))
                yield per_window.mean(dim=0, keepdim=True)

    def window_features(self, windows: torch.Tensor) -> Iterator[torch.Tensor]:
        """Features of ``(S, 3, L, H, W)`` windows, about ``frame_chunk`` frames per forward."""
        for batch in window_batches(windows, self.frame_chunk):
            yield self.extractor(to_uint8(batch.to(self.generated_sum.device)))


class FIDVID(VideoFrechetMetric):
    """FID-VID (DisCo): Kinetics 3D ResNet-50 2048-d features of 16-frame windows at 112 x 112.

    Defaults to DisCo's per-video averaging (``samples="clip_mean"``); DisCo's published numbers
    come from 16-frame GIFs cut at every frame, i.e. ``samples="windows", window_stride=1``.
    """

    name = "fid_vid"

    def __init__(
        self,
        weights_path: str | None = None,
        weights_dir: str | None = None,
        samples: str = "clip_mean",
        window_stride: int = 16,
        covariance: str = "unbiased",
        extractor=None,
        **kwargs,
    ) -> None:
        if extractor is None:
            extractor = extractors.kinetics_resnet(str(weights.locate(weights.RESNET3D50, weights_dir, weights_path)))
        super().__init__(extractor, samples=samples, window_stride=window_stride, covariance=covariance, **kwargs)


FVD_NETWORKS = {"styleganv": "biased", "videogpt": "unbiased", "disco": "unbiased"}


class FVD(VideoFrechetMetric):
    """FVD: 400-d I3D logits of 16-frame windows at 224.

    ``network="styleganv"`` (default): StyleGAN-V's TorchScript I3D, covariance over N.
    ``network="videogpt"`` / ``"disco"``: the ``i3d_pretrained_400.pt`` state dict with VideoGPT's or
    DisCo's preprocessing and BatchNorm eps, covariance over N - 1. ``covariance=None`` takes the
    network's reference normaliser.
    """

    name = "fvd"

    def __init__(
        self,
        network: str = "styleganv",
        weights_path: str | None = None,
        weights_dir: str | None = None,
        samples: str = "windows",
        window_stride: int = 16,
        covariance: str | None = None,
        extractor=None,
        **kwargs,
    ) -> None:
        if network not in FVD_NETWORKS:
            raise ValueError(f"fvd: network must be one of {sorted(FVD_NETWORKS)}, got {network!r}")
        if extractor is None:
            extractor = fvd_extractor(network, weights_path, weights_dir)
        super().__init__(
            extractor,
            samples=samples,
            window_stride=window_stride,
            covariance=covariance or FVD_NETWORKS[network],
            **kwargs,
        )


def fvd_extractor(network: str, weights_path: str | Path | None, weights_dir: str | Path | None):
    """The I3D feature extractor of an FVD ``network`` choice."""
    if network == "styleganv":
        return extractors.i3d_torchscript(str(weights.locate(weights.I3D_TORCHSCRIPT, weights_dir, weights_path)))
    return extractors.i3d(str(weights.locate(weights.I3D_STATE_DICT, weights_dir, weights_path)), network)
