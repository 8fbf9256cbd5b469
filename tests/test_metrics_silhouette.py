"""Silhouette IoU against hand-counted cases: the truth scores 1, the plate 0, half a person 1/3."""

import math

import pytest
import torch

from metrics.silhouette import SilhouetteIoU, foreground, silhouette_iou


def scene(frames=3, height=16, width=20):
    """A plate, a person box over it and the clip batch (1, 3, T, H, W) showing it, float in [0, 1]."""
    plate = torch.full((1, 3, height, width), 0.5)
    plate[..., ::2] = 0.45  # texture below the threshold
    mask = torch.zeros(1, frames, height, width, dtype=torch.bool)
    mask[:, :, 4:12, 6:10] = True  # 8 x 4 = 32 person pixels per frame
    target = plate[:, :, None].expand(-1, -1, frames, -1, -1).clone()
    target[:, 0][mask] = 0.9
    return plate, mask, target


def test_the_ground_truth_scores_one_and_the_plate_zero():
    plate, mask, target = scene()
    metric = SilhouetteIoU()
    metric.update(target, target, person_mask=mask, plate=plate)
    assert metric.compute()["silhouette_iou"].item() == 1.0
    empty = plate[:, :, None].expand_as(target)
    metric = SilhouetteIoU()
    metric.update(empty, target, person_mask=mask, plate=plate)
    assert metric.compute()["silhouette_iou"].item() == 0.0


def test_half_a_person_shifted_by_its_width_counts_pixels():
    plate, mask, target = scene(frames=1)
    generated = plate[:, :, None].clone()
    generated[:, 0, 0, 4:12, 8:12] = 0.9  # 32 pixels, 16 of them on the person
    values = silhouette_iou(generated[:, :, 0], target[:, :, 0], mask[:, 0], plate, threshold=0.1)
    assert values.item() == pytest.approx(16 / (32 + 32 - 16))


def test_person_pixels_that_look_like_the_plate_count_for_neither_side():
    plate, mask, target = scene(frames=1)
    target[:, :, 0, 4:6, 6:10] = 0.5  # the top 8 person pixels have the plate's colour (a caption over the person)
    generated = target.clone()
    generated[:, :, 0, 4:6, 6:10] = 0.9  # drawing the person there is neither right nor wrong
    both = [silhouette_iou(g[:, :, 0], target[:, :, 0], mask[:, 0], plate, 0.1).item() for g in (target, generated)]
    assert both == [1.0, 1.0]


def test_a_frame_without_person_or_foreground_is_skipped_and_counted():
    plate, mask, target = scene(frames=2)
    mask[:, 1] = False
    target[:, :, 1] = plate
    metric = SilhouetteIoU()
    metric.update(target, target, person_mask=mask, plate=plate)
    result = metric.compute()
    assert result["silhouette_iou"].item() == 1.0 and result["skipped_frames"].item() == 1
    assert math.isnan(silhouette_iou(plate, plate, mask[:, 1], plate, 0.1).item())


def test_foreground_threshold_is_per_channel_and_uint8_plates_work():
    plate = torch.zeros(1, 3, 2, 2)
    frames = plate.clone()
    frames[0, 2, 0, 0] = 0.2
    assert foreground(frames, plate, 0.1).tolist() == [[[True, False], [False, False]]]
    _, mask, target = scene()
    metric = SilhouetteIoU()
    metric.update((target * 255).round().to(torch.uint8), (target * 255).round().to(torch.uint8), person_mask=mask,
                  plate=(scene()[0] * 255).round().to(torch.uint8))
    assert metric.compute()["silhouette_iou"].item() == 1.0
    with pytest.raises(ValueError, match="threshold"):
        SilhouetteIoU(threshold=0)
    with pytest.raises(ValueError, match=r"plate \(1, 3, 4, 4\) is not"):
        SilhouetteIoU().update(target, target, person_mask=mask, plate=torch.zeros(1, 3, 4, 4))
