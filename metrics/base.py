"""Base classes: a mean over clips of a per-clip value, and the per-frame special case of it."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torchmetrics import Metric

from metrics.video import Annotations, check_pair, flatten_frames, frame_ranges, to_unit_float


class ClipMetric(Metric):
    """Mean over clips of a per-clip value; clips without a value (NaN) are skipped and counted.

    Subclasses implement :meth:`clip_values` and list in ``needs`` the :class:`Annotations`
    fields they read (``keypoints``, ``person_mask``, ``plate``). After each :meth:`update`, ``last_clip_values``
    holds that batch's per-clip values ``(B,)`` (NaN = skipped): the per-clip report mode.
    ``compute()`` returns the mean, or a dict ``{name: mean, <count>: n, ...}`` for the metrics
    that can skip (``skip_keys``).
    """

    name: str = ""
    needs: tuple[str, ...] = ()
    skip_keys: tuple[str, ...] = ()
    full_state_update = False
    is_differentiable = False

    def __init__(self, frame_chunk: int = 16, **kwargs) -> None:
        super().__init__(**kwargs)
        if frame_chunk < 1:
            raise ValueError(f"{self.name}: frame_chunk must be >= 1, got {frame_chunk}")
        self.frame_chunk = frame_chunk
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("clips", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("skipped_clips", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.last_clip_values: torch.Tensor | None = None

    def clip_values(self, generated: torch.Tensor, target: torch.Tensor, annotations: Annotations) -> torch.Tensor:
        """Per-clip values ``(B,)`` float64, NaN where a clip has none."""
        raise NotImplementedError

    def update(
        self,
        generated: torch.Tensor,
        target: torch.Tensor,
        keypoints: torch.Tensor | None = None,
        person_mask: torch.Tensor | None = None,
        plate: torch.Tensor | None = None,
        skip_unannotated: bool = False,
    ) -> None:
        """Add a batch of clips ``(B, 3, T, H, W)`` and their annotations (:class:`metrics.video.Annotations`).

        A missing annotation the metric ``needs`` raises, or with ``skip_unannotated`` skips (and
        counts) the batch's clips: a validation loop over data that lacks it.
        """
        check_pair(generated, target)
        annotations = Annotations(keypoints, person_mask, plate)
        annotations.check(target)
        if skip_unannotated and any(getattr(annotations, name) is None for name in self.needs):
            values = torch.full((target.shape[0],), float("nan"), dtype=torch.float64, device=self.total.device)
        else:
            annotations.require(self.needs, self.name)
            values = self.clip_values(generated, target, annotations).to(self.total.device)
        valid = ~values.isnan()
        self.total += values[valid].sum()
        self.clips += valid.sum()
        self.skipped_clips += (~valid).sum()
        self.last_clip_values = values

    def compute(self) -> torch.Tensor | dict[str, torch.Tensor]:
        """Mean over clips (NaN before any valid clip), plus skip counts where they apply."""
        mean = self.total / self.clips
        if not self.skip_keys:
            return mean
        return {self.name: mean, **{key: getattr(self, key) for key in self.skip_keys}}


class FrameMetric(ClipMetric):
    """A per-frame value, averaged over the frames of each clip, then over clips.

    Frames with no value (NaN, e.g. no face) are skipped and counted in ``skipped_frames``;
    a clip with no valid frame is skipped and counted in ``skipped_clips``.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("skipped_frames", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def frame_values(self, generated: torch.Tensor, target: torch.Tensor, annotations: Annotations) -> torch.Tensor:
        """Per-frame values ``(N,)`` of float ``(N, 3, H, W)`` frames in [0, 1] (annotations in frame form)."""
        raise NotImplementedError

    def clip_values(self, generated, target, annotations) -> torch.Tensor:
        """Mean over each clip's valid frames, processed ``frame_chunk`` frames at a time."""
        per_frame = torch.cat(list(self._frame_value_chunks(generated, target, annotations)), dim=1)
        invalid = per_frame.isnan()
        self.skipped_frames += invalid.sum().to(self.skipped_frames.device)
        return per_frame.nanmean(dim=1)  # (B,), NaN where every frame is invalid

    def _frame_value_chunks(self, generated, target, annotations) -> Iterator[torch.Tensor]:
        """Yield ``(B, t)`` float64 frame values chunk by chunk along time."""
        batch, frames = generated.shape[0], generated.shape[2]
        device = self.total.device
        for start, stop in frame_ranges(frames, self.frame_chunk):
            values = self.frame_values(
                flatten_frames(to_unit_float(generated[:, :, start:stop].to(device))),
                flatten_frames(to_unit_float(target[:, :, start:stop].to(device))),
                annotations.frames(start, stop, device),
            )
            yield values.double().view(batch, stop - start)
