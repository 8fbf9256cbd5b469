"""Region weights (One-to-All Eq. 17): ROI tokens w_roi, text tokens 0, causal frame merge."""

import numpy as np
import pytest
import torch

from common.pose.layout import FACE, HEAD_BODY_POINTS, LEFT_HAND, RIGHT_HAND
from data.masks import box_masks, merge_latent_frames, pixel_masks, region_weights, roi_boxes

HEIGHT, WIDTH, FRAMES = 64, 96, 5  # tokens 4 x 6, latent frames 2
NUM = 133


def _place(keypoints, part, x_range, y_range, conf):
    """Spread the points of ``part`` over a small pixel range with confidence ``conf``."""
    indices = np.arange(NUM)[part] if isinstance(part, slice) else np.asarray(part)
    count = len(indices)
    keypoints[:, indices, 0] = np.linspace(*x_range, count)
    keypoints[:, indices, 1] = np.linspace(*y_range, count)[::-1]
    keypoints[:, indices, 2] = conf


def _keypoints():
    """Head in token (row 1, col 1), confident left hand in token (2, 3), right hand in (2, 5) with one weak point."""
    keypoints = np.zeros((FRAMES, NUM, 3), np.float32)
    _place(keypoints, FACE, (22, 26), (22, 26), 0.9)
    _place(keypoints, list(HEAD_BODY_POINTS), (22, 26), (22, 26), 0.9)
    _place(keypoints, LEFT_HAND, (52, 56), (38, 42), 0.9)
    _place(keypoints, RIGHT_HAND, (84, 88), (38, 42), 0.9)
    keypoints[:, RIGHT_HAND.start + 7, 2] = 0.5
    return keypoints


def test_known_boxes_give_roi_weight_text_zero_and_one_elsewhere():
    text = [[t, 66, 2, 70, 10] for t in range(FRAMES)]  # token (0, 4) in every frame
    weights = region_weights(_keypoints(), HEIGHT, WIDTH, text, w_roi=3.0)
    expected = torch.ones(2, 4, 6)
    expected[:, 1, 1] = 3.0  # head
    expected[:, 2, 3] = 3.0  # confident left hand
    expected[:, 0, 4] = 0.0  # text
    assert weights.dtype == torch.float32
    torch.testing.assert_close(weights, expected)


def test_hand_with_one_low_confidence_point_is_roi_only_below_that_threshold():
    strict = region_weights(_keypoints(), HEIGHT, WIDTH, roi_conf=0.8)
    lenient = region_weights(_keypoints(), HEIGHT, WIDTH, roi_conf=0.4)
    assert strict[0, 2, 5] == 1.0 and lenient[0, 2, 5] == 3.0


def test_text_touching_a_token_zeroes_it_and_text_beats_roi():
    text = [[0, 15.5, 20, 16.2, 24]]  # spans the border of token columns 0 and 1 in token row 1
    weights = region_weights(_keypoints(), HEIGHT, WIDTH, text)
    assert weights[0, 1, 0] == 0.0 and weights[0, 1, 1] == 0.0  # head token zeroed by text
    assert weights[1, 1, 1] == 3.0


def test_causal_frame_merge():
    keypoints = np.zeros((9, NUM, 3), np.float32)
    _place(keypoints[7:8], LEFT_HAND, (52, 56), (38, 42), 0.9)  # ROI on frame 7 only: latent 2 (frames 5-8)
    text = [[0, 0, 0, 4, 4], [4, 80, 48, 84, 52]]  # frame 0 -> latent 0, frame 4 -> latent 1 (frames 1-4)
    weights = region_weights(keypoints, HEIGHT, WIDTH, text)
    assert weights.shape == (3, 4, 6)
    assert weights[0, 0, 0] == 0.0 and weights[1:, 0, 0].eq(1.0).all()
    assert weights[1, 3, 5] == 0.0 and weights[0, 3, 5] == 1.0 and weights[2, 3, 5] == 1.0
    assert weights[2, 2, 3] == 3.0 and weights[:2, 2, 3].eq(1.0).all()
    assert weights.eq(1.0).sum() == 3 * 24 - 3


def test_merge_latent_frames_groups_of_four_after_the_first():
    masks = torch.zeros(9, 1, dtype=torch.bool)
    masks[1, 0] = True
    assert merge_latent_frames(masks)[:, 0].tolist() == [False, True, False]
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        merge_latent_frames(torch.zeros(6, 1, dtype=torch.bool))


def test_pixel_masks_for_visualisation():
    roi, text = pixel_masks(_keypoints(), HEIGHT, WIDTH, [[1, 10.2, 3, 12, 5]])
    assert roi.shape == text.shape == (FRAMES, HEIGHT, WIDTH) and roi.dtype == torch.bool
    assert text[1].sum() == 2 * 2 and text[1, 3:5, 10:12].all() and not text[0].any()
    assert roi[:, 24, 24].all() and roi[:, 40, 54].all() and not roi[:, 40, 86].any()


def test_box_masks_reject_frames_outside_the_clip():
    with pytest.raises(ValueError, match="frame 3"):
        box_masks([[3, 0, 0, 1, 1]], 2, 8, 8)


def test_absent_head_gives_no_box():
    assert roi_boxes(np.zeros((2, NUM, 3), np.float32)) == []
