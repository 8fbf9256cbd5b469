"""COCO-WholeBody 133 layout: index ranges, OpenPose-18 / DWPose-134 conversion, part boxes."""

import numpy as np
import pytest

from common.pose import layout
from common.pose.layout import (
    BODY,
    FACE,
    FEET,
    LEFT_HAND,
    RIGHT_HAND,
    Body,
    face_box,
    hand_boxes,
    head_box,
    to_dwpose134,
    to_openpose18,
)


def _indexed_keypoints(batch=()):
    """Keypoints whose x is the index, y is 10x the index and confidence 0.9 (shape batch + (133, 3))."""
    keypoints = np.zeros(batch + (133, 3), np.float32)
    keypoints[..., 0] = np.arange(133)
    keypoints[..., 1] = 10 * np.arange(133)
    keypoints[..., 2] = 0.9
    return keypoints


def test_ranges_tile_the_133_points_in_architecture_order():
    parts = [BODY, FEET, FACE, LEFT_HAND, RIGHT_HAND]
    assert [p.stop - p.start for p in parts] == [17, 6, 68, 21, 21]
    assert [p.start for p in parts] == [0, 17, 23, 91, 112] and RIGHT_HAND.stop == layout.NUM_KEYPOINTS
    assert Body.LEFT_SHOULDER == 5 and Body.RIGHT_ANKLE == 16 and layout.Foot.RIGHT_HEEL == 22


def test_hand_edges_are_the_dwpose_edges():
    expected = [[0, 1], [1, 2], [2, 3], [3, 4], [0, 5], [5, 6], [6, 7], [7, 8], [0, 9], [9, 10],
                [10, 11], [11, 12], [0, 13], [13, 14], [14, 15], [15, 16], [0, 17], [17, 18], [18, 19], [19, 20]]
    assert [list(edge) for edge in layout.HAND_EDGES] == expected


def test_openpose18_order_and_neck():
    keypoints = _indexed_keypoints((2, 3))
    keypoints[..., Body.LEFT_SHOULDER, 2] = 0.4
    body = to_openpose18(keypoints)
    assert body.shape == (2, 3, 18, 3)
    coco_of = {0: Body.NOSE, 2: Body.RIGHT_SHOULDER, 4: Body.RIGHT_WRIST, 5: Body.LEFT_SHOULDER, 7: Body.LEFT_WRIST,
               8: Body.RIGHT_HIP, 13: Body.LEFT_ANKLE, 14: Body.RIGHT_EYE, 15: Body.LEFT_EYE, 16: Body.RIGHT_EAR, 17: Body.LEFT_EAR}
    for openpose, coco in coco_of.items():
        np.testing.assert_array_equal(body[..., openpose, :], keypoints[..., coco, :])
    np.testing.assert_allclose(body[0, 0, 1], [5.5, 55.0, 0.4])  # mid-shoulder, min confidence


def test_dwpose134_is_openpose_body_then_the_rest():
    keypoints = _indexed_keypoints()
    candidate = to_dwpose134(keypoints)
    assert candidate.shape == (134, 3)
    np.testing.assert_array_equal(candidate[layout.DWPOSE134_BODY], to_openpose18(keypoints))
    np.testing.assert_array_equal(candidate[layout.DWPOSE134_FACE], keypoints[FACE])
    np.testing.assert_array_equal(candidate[layout.DWPOSE134_RIGHT_HAND], keypoints[RIGHT_HAND])


def test_wrong_shape_is_rejected():
    with pytest.raises(ValueError, match="133, 3"):
        to_openpose18(np.zeros((18, 3)))


def _hands(left_conf=0.9, right_conf=0.9):
    """Left hand spread over x 10..30, y 40..60; right hand over x 100..110, y 5..25."""
    keypoints = np.zeros((133, 3), np.float32)
    keypoints[LEFT_HAND, 0] = np.linspace(10, 30, 21)
    keypoints[LEFT_HAND, 1] = np.linspace(40, 60, 21)
    keypoints[LEFT_HAND, 2] = left_conf
    keypoints[RIGHT_HAND, 0] = np.linspace(100, 110, 21)
    keypoints[RIGHT_HAND, 1] = np.linspace(5, 25, 21)
    keypoints[RIGHT_HAND, 2] = right_conf
    return keypoints


def test_hand_boxes_and_the_all_above_0_8_rule():
    keypoints = _hands()
    keypoints[RIGHT_HAND.start + 4, 2] = 0.79
    boxes, valid = hand_boxes(keypoints, margin=0.0)
    assert valid.tolist() == [True, False]
    np.testing.assert_allclose(boxes[0], [10, 40, 30, 60])
    np.testing.assert_allclose(boxes[1], [100, 5, 110, 25])  # a weak point does not move the box
    grown, _ = hand_boxes(keypoints)
    np.testing.assert_allclose(grown[0], [6, 36, 34, 64])  # 20% of the size on every side


def test_hand_boxes_batch_and_absent_hand():
    keypoints = np.stack([_hands(), _hands(right_conf=0.0)])
    boxes, valid = hand_boxes(keypoints)
    assert boxes.shape == (2, 2, 4) and valid.tolist() == [[True, True], [True, False]]
    np.testing.assert_array_equal(boxes[1, 1], 0.0)


def test_head_box_covers_face_and_ears_raised_for_hair():
    keypoints = np.zeros((133, 3), np.float32)
    keypoints[FACE, 0] = np.linspace(40, 60, 68)
    keypoints[FACE, 1] = np.linspace(30, 50, 68)
    keypoints[FACE, 2] = 0.9
    keypoints[list(layout.HEAD_BODY_POINTS), :] = [[50, 40, 0.9], [45, 35, 0.9], [55, 35, 0.9], [36, 38, 0.9], [64, 38, 0.9]]
    box, valid = head_box(keypoints, margin=0.0, extra_top=0.0)
    assert valid
    np.testing.assert_allclose(box, [36, 30, 64, 50])
    raised, _ = head_box(keypoints, margin=0.0, extra_top=0.5)
    np.testing.assert_allclose(raised, [36, 20, 64, 50])
    keypoints[FACE.start, 2] = 0.1
    assert not head_box(keypoints)[1] and not face_box(keypoints)[1]


def test_face_box_is_tight_and_zero_without_confident_points():
    keypoints = np.zeros((133, 3), np.float32)
    box, valid = face_box(keypoints)
    assert not valid and np.all(box == 0)
    keypoints[FACE] = [[20, 30, 1.0]] * 68
    keypoints[FACE.start + 10] = [25, 34, 1.0]
    np.testing.assert_allclose(face_box(keypoints)[0], [20, 30, 25, 34])
