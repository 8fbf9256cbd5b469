"""Pose tools for inference: layout conversion, retargeting, pose-guided reference translation."""

import numpy as np
import pytest

from common.pose.convert import (
    OPENPOSE25_TO_COCO,
    dwpose133_to_openpose18,
    openpose18_to_dwpose133,
    openpose25_to_dwpose133,
)
from common.pose.layout import BODY, FEET, Body
from common.pose.retarget import BONES, NECK, bone_lengths, retarget, with_neck
from common.pose.translate import closest_orientation, translate_reference
from data.synthetic import SyntheticConfig, make_clip

CONFIG = SyntheticConfig(size=64, frames=9)


@pytest.fixture(scope="module")
def clips():
    """Two puppets of different proportions: (driving clip, reference clip)."""
    return make_clip(CONFIG, "train", 0), make_clip(CONFIG, "train", 1)


def random_pose(rng, frames=3):
    """Random full-confidence keypoints (T, 133, 3)."""
    kp = np.zeros((frames, 133, 3), dtype=np.float32)
    kp[..., :2] = rng.uniform(0, 100, (frames, 133, 2))
    kp[..., 2] = rng.uniform(0.4, 1.0, (frames, 133))
    return kp


def test_133_to_18_to_133_keeps_the_body_exactly():
    kp = random_pose(np.random.default_rng(0))
    back = openpose18_to_dwpose133(dwpose133_to_openpose18(kp), rest=kp)
    np.testing.assert_array_equal(back, kp)
    body_only = openpose18_to_dwpose133(dwpose133_to_openpose18(kp))
    np.testing.assert_array_equal(body_only[:, BODY], kp[:, BODY])
    assert not body_only[:, FEET.start :].any()


def test_18_to_133_to_18_keeps_all_points_when_the_neck_is_the_shoulder_midpoint():
    body = dwpose133_to_openpose18(random_pose(np.random.default_rng(1)))  # (T, 18, 3) with a consistent neck
    np.testing.assert_allclose(dwpose133_to_openpose18(openpose18_to_dwpose133(body)), body, rtol=0, atol=1e-5)
    assert body[0, 2, 0] == random_pose(np.random.default_rng(1))[0, Body.RIGHT_SHOULDER, 0]  # OpenPose 2 = right shoulder


def test_body25_maps_body_and_feet():
    body25 = np.arange(75, dtype=np.float32).reshape(25, 3) / 75
    out = openpose25_to_dwpose133(body25)
    for op_index, coco in enumerate(OPENPOSE25_TO_COCO):
        if coco is not None:
            np.testing.assert_array_equal(out[coco], body25[op_index])
    assert out[Body.LEFT_HIP, 0] == body25[12, 0] and out[FEET.start, 0] == body25[19, 0]
    with pytest.raises(ValueError, match="BODY_25"):
        openpose25_to_dwpose133(np.zeros((24, 3)))


def _directions_and_lengths(kp, threshold=0.3):
    """Unit directions (T, 133, 2), lengths (T, 133) and visibility of every bone."""
    ext = with_neck(kp)
    parents = np.array([p for p, _ in BONES])
    vectors = ext[..., :133, :2] - ext[..., parents, :2]
    lengths = np.linalg.norm(vectors, axis=-1)
    visible = (ext[..., :133, 2] > threshold) & (ext[..., parents, 2] > threshold)
    return vectors / np.maximum(lengths, 1e-9)[..., None], lengths, visible


@pytest.mark.parametrize("mode", ["ratio", "length"])
def test_retarget_keeps_bone_directions(clips, mode):
    driving, reference = clips
    out = retarget(driving.keypoints, reference.keypoints[0], mode=mode)
    d_dir, d_len, d_vis = _directions_and_lengths(driving.keypoints)
    o_dir, _, _ = _directions_and_lengths(out)
    both = d_vis & (d_len > 1e-3)
    cosine = (d_dir * o_dir).sum(-1)[both]
    assert both.sum() > 500 and cosine.min() > 1 - 1e-5
    np.testing.assert_array_equal(out[..., 2], driving.keypoints[..., 2])


def test_retarget_length_mode_matches_reference_bone_lengths(clips):
    driving, reference = clips
    ref = reference.keypoints[0]
    out = retarget(driving.keypoints, ref, mode="length")
    ref_len, ref_ok = bone_lengths(ref)
    out_len, _ = bone_lengths(out)
    _, d_len, d_vis = _directions_and_lengths(driving.keypoints)
    check = d_vis & ref_ok[None] & (d_len > 1e-3)
    assert check.sum() > 500
    np.testing.assert_allclose(out_len[check], np.broadcast_to(ref_len, out_len.shape)[check], rtol=1e-4, atol=1e-3)
    driving_len, _ = bone_lengths(driving.keypoints)
    upper_arm = Body.LEFT_ELBOW
    assert abs(driving_len[0, upper_arm] - ref_len[upper_arm]) > 0.5  # the puppets really differ


def test_retarget_ratio_mode_scales_each_bone_by_one_ratio(clips):
    driving, reference = clips
    out = retarget(driving.keypoints, reference.keypoints[0], mode="ratio")
    d_len, d_ok = bone_lengths(driving.keypoints)
    o_len, _ = bone_lengths(out)
    ratio = np.where(d_ok & (d_len > 1), o_len / np.maximum(d_len, 1e-9), np.nan)  # (T, 133)
    measured = ~np.isnan(ratio).all(0)
    spread = np.nanmax(ratio[:, measured], 0) - np.nanmin(ratio[:, measured], 0)
    assert np.nanmax(spread) < 1e-3  # one ratio per bone over all frames


def test_retarget_puts_the_anchor_neck_on_the_reference_neck(clips):
    driving, reference = clips
    out = retarget(driving.keypoints, reference.keypoints[0])
    np.testing.assert_allclose(with_neck(out)[0, NECK, :2], with_neck(reference.keypoints[0])[NECK, :2], atol=1e-3)
    with pytest.raises(ValueError, match="shoulders"):
        retarget(driving.keypoints, np.zeros((133, 3)))


def test_translation_puts_reference_shoulders_on_the_anchor_frame(clips):
    driving, reference = clips
    image, ref_kp = reference.frames[0], reference.keypoints[0]
    height, width = 160, 200  # larger than the scaled reference: padding on the sides
    drive = driving.keypoints.copy()
    drive[..., :2] = drive[..., :2] * 1.2 + 5  # another scale and position
    result = translate_reference(image, ref_kp, drive, (height, width))
    shoulders = [Body.LEFT_SHOULDER, Body.RIGHT_SHOULDER]
    np.testing.assert_allclose(result.keypoints[shoulders, :2].mean(0), drive[result.anchor, shoulders, :2].mean(0), atol=1e-3)
    width_ref = np.linalg.norm(ref_kp[shoulders[0], :2] - ref_kp[shoulders[1], :2])
    width_drive = np.linalg.norm(drive[result.anchor, shoulders[0], :2] - drive[result.anchor, shoulders[1], :2])
    assert result.image.shape == (height, width, 3) and result.mask.shape == (height, width)
    assert 0.3 < result.scale < 3 and abs(result.scale - width_drive / width_ref) < 0.5 * result.scale
    assert result.mask.any() and (~result.mask).any() and not result.image[result.mask].any()


def test_translation_moves_image_content_with_the_keypoints():
    image = np.zeros((40, 30, 3), dtype=np.uint8)
    image[20, 10] = 255  # a dot at (x=10, y=20)
    ref = np.zeros((133, 3), dtype=np.float32)
    ref[Body.LEFT_SHOULDER] = (12, 20, 1)
    ref[Body.RIGHT_SHOULDER] = (8, 20, 1)
    drive = np.zeros((2, 133, 3), dtype=np.float32)
    drive[:, Body.LEFT_SHOULDER] = (40, 50, 1)
    drive[:, Body.RIGHT_SHOULDER] = (32, 50, 1)  # twice as wide, centred at (36, 50)
    result = translate_reference(image, ref, drive, (80, 70))
    assert result.scale == pytest.approx(2.0)
    y, x = np.unravel_index(result.image[..., 0].argmax(), result.image.shape[:2])
    assert abs(x - 36) <= 1 and abs(y - 50) <= 1
    assert result.mask[0, 0] and not result.mask[50, 36]


def test_closest_orientation_prefers_the_same_facing():
    ref = np.zeros((133, 3), dtype=np.float32)
    ref[Body.LEFT_SHOULDER] = (60, 50, 1)  # facing the camera: left shoulder on the image right
    ref[Body.RIGHT_SHOULDER] = (40, 50, 1)
    ref[Body.LEFT_HIP] = (55, 90, 1)
    ref[Body.RIGHT_HIP] = (45, 90, 1)
    back = ref.copy()
    back[[Body.LEFT_SHOULDER, Body.RIGHT_SHOULDER, Body.LEFT_HIP, Body.RIGHT_HIP]] = ref[[Body.RIGHT_SHOULDER, Body.LEFT_SHOULDER, Body.RIGHT_HIP, Body.LEFT_HIP]]
    assert closest_orientation(ref, np.stack([back, ref * [2, 2, 1], back])) == 1
