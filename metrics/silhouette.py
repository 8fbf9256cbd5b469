"""Silhouette IoU: where the generated frame shows a person, found against the clip's background plate.

Only a synthetic benchmark can give it: the generator knows the static scene without the person
(the *plate*, stored with the shards) and the exact person mask. A pixel of a frame is foreground
where it differs from the plate by more than ``threshold`` in some channel (values in [0, 1]).
The truth's silhouette is the person mask; its pixels whose ground-truth colour is within
``threshold`` of the plate (a shirt the colour of the wall, a caption drawn over the person)
cannot be told apart from the background by any frame, so they count for neither side. The IoU of
a frame is then ``|generated fg AND mask| / |generated fg OR mask|`` over the remaining pixels: the
ground truth itself scores 1, the plate (an empty generation) 0.
"""

from __future__ import annotations

import torch

from metrics.base import FrameMetric


def foreground(frames: torch.Tensor, plate: torch.Tensor, threshold: float) -> torch.Tensor:
    """Bool ``(N, H, W)``: pixels of ``frames (N, 3, H, W)`` differing from ``plate`` by more than ``threshold`` in a channel."""
    return (frames - plate).abs().amax(dim=1) > threshold


def silhouette_iou(generated: torch.Tensor, target: torch.Tensor, person_mask: torch.Tensor, plate: torch.Tensor,
                   threshold: float) -> torch.Tensor:
    """IoU ``(N,)`` float64 of the generated foreground with the person mask; NaN where both are empty."""
    indistinct = person_mask & ~foreground(target, plate, threshold)  # person pixels that look like the plate
    predicted = foreground(generated, plate, threshold) & ~indistinct
    truth = person_mask & ~indistinct
    intersection = (predicted & truth).flatten(1).sum(dim=1, dtype=torch.float64)
    union = (predicted | truth).flatten(1).sum(dim=1, dtype=torch.float64)
    return intersection / union  # 0 / 0 = NaN: nothing to find and nothing found


class SilhouetteIoU(FrameMetric):
    """Per-frame silhouette IoU (:func:`silhouette_iou`), averaged over each clip's frames, then over clips.

    Needs the person mask and the background plate; frames with neither a person nor a generated
    foreground are skipped and counted.
    """

    name = "silhouette_iou"
    needs = ("person_mask", "plate")
    skip_keys = ("skipped_frames", "skipped_clips")
    higher_is_better = True

    def __init__(self, threshold: float = 0.1, **kwargs) -> None:
        super().__init__(**kwargs)
        if not 0 < threshold < 1:
            raise ValueError(f"silhouette_iou: threshold must be in (0, 1), got {threshold}")
        self.threshold = threshold

    def frame_values(self, generated, target, annotations) -> torch.Tensor:
        """Per-frame IoU."""
        return silhouette_iou(generated, target, annotations.person_mask, annotations.plate, self.threshold)
