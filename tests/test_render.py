"""DWPose-style pose maps: colours at known limbs, thresholds, parts, lightening, sizes, speed."""

import time

import numpy as np
import pytest
import torch

from common.pose.layout import FACE, LEFT_HAND, Body
from common.pose.render import pose_to_tensor, render_pose

SIZE = 256


def _arm(conf_elbow=1.0):
    """Only the right shoulder (50, 128) and right elbow (150, 128) present."""
    keypoints = np.zeros((133, 3), np.float32)
    keypoints[Body.RIGHT_SHOULDER] = [50, 128, 1.0]
    keypoints[Body.RIGHT_ELBOW] = [150, 128, conf_elbow]
    return keypoints


def test_shapes_and_empty_pose_is_black():
    empty = np.zeros((3, 133, 3), np.float32)
    frames = render_pose(empty, 64, 96)
    assert frames.shape == (3, 64, 96, 3) and frames.dtype == np.uint8 and frames.max() == 0
    assert render_pose(empty[0], 64, 96).shape == (64, 96, 3)
    with pytest.raises(ValueError, match="133, 3"):
        render_pose(np.zeros((18, 3)), 64, 64)


def test_limb_in_openpose_colour_at_60_percent_and_joints_in_full_colour():
    image = render_pose(_arm(), SIZE, SIZE)
    assert tuple(image[128, 100]) == (153, 102, 0)  # limb right shoulder -> right elbow: (255, 170, 0) x 0.6
    assert tuple(image[128, 50]) == (255, 170, 0)  # right shoulder joint colour
    assert tuple(image[128, 150]) == (255, 255, 0)  # right elbow joint colour
    assert tuple(image[140, 100]) == (0, 0, 0) and tuple(image[128, 200]) == (0, 0, 0)


def test_points_below_threshold_are_not_drawn():
    weak = render_pose(_arm(conf_elbow=0.2), SIZE, SIZE)
    assert tuple(weak[128, 100]) == (0, 0, 0) and tuple(weak[128, 150]) == (0, 0, 0)
    assert tuple(weak[128, 50]) == (255, 170, 0)
    lenient = render_pose(_arm(conf_elbow=0.2), SIZE, SIZE, conf_threshold=0.1)
    assert tuple(lenient[128, 100]) == (153, 102, 0)


def test_hand_edges_by_hue_points_blue_face_white_and_switches():
    keypoints = np.zeros((133, 3), np.float32)
    keypoints[LEFT_HAND.start] = [40, 200, 1.0]  # wrist
    keypoints[LEFT_HAND.start + 1] = [120, 200, 1.0]  # thumb base: edge 0, hue 0 = red
    keypoints[FACE.start] = [200, 50, 1.0]
    image = render_pose(keypoints, SIZE, SIZE)
    assert tuple(image[200, 80]) == (255, 0, 0)
    assert tuple(image[200, 40]) == (0, 0, 255) and tuple(image[200, 120]) == (0, 0, 255)
    assert tuple(image[50, 200]) == (255, 255, 255)
    no_face = render_pose(keypoints, SIZE, SIZE, draw_face=False)
    assert tuple(no_face[50, 200]) == (0, 0, 0) and tuple(no_face[200, 80]) == (255, 0, 0)
    assert render_pose(keypoints, SIZE, SIZE, draw_hands=False, draw_face=False).max() == 0


def test_draw_body_switch():
    assert render_pose(_arm(), SIZE, SIZE, draw_body=False).max() == 0


def test_lightened_blends_toward_white():
    image = render_pose(_arm(), SIZE, SIZE, lightened=True)
    expected = np.floor(np.array([153, 102, 0]) + (255 - np.array([153, 102, 0])) * 0.5)
    assert tuple(image[128, 100]) == tuple(expected.astype(int))
    assert tuple(image[128, 50]) == (255, 212, 127)


def test_stroke_width_scales_with_size_and_stays_visible_small():
    small = render_pose(_arm() * [64 / SIZE, 64 / SIZE, 1], 64, 64)
    assert small[32, 25].any()  # the limb is at least a pixel wide at 64 px
    large = render_pose(_arm() * [4, 4, 1], SIZE * 4, SIZE * 4)
    column = large[:, 400]
    assert 10 <= column.any(axis=-1).sum() <= 20  # stick width 4 at 512 px -> half-width 8 at 1024 px


def test_seventeen_frames_render_fast():
    rng = np.random.default_rng(0)
    keypoints = np.concatenate([rng.uniform(10, 246, (17, 133, 2)), np.ones((17, 133, 1))], axis=-1)
    best = min(_timed(keypoints) for _ in range(3))
    assert best < 0.5, f"17 frames at 256x256 took {best:.3f} s"


def _timed(keypoints):
    """Seconds to render ``keypoints`` at 256x256."""
    start = time.perf_counter()
    render_pose(keypoints, SIZE, SIZE)
    return time.perf_counter() - start


def test_pose_to_tensor_layout_and_range():
    frames = np.zeros((2, 4, 5, 3), np.uint8)
    frames[1, ..., 0] = 255
    tensor = pose_to_tensor(frames)
    assert tensor.shape == (3, 2, 4, 5) and tensor.dtype == torch.float32
    assert tensor[0, 1].eq(1).all() and tensor[1:].eq(-1).all() and tensor[:, 0].eq(-1).all()
    assert pose_to_tensor(frames[0]).shape == (3, 4, 5)
