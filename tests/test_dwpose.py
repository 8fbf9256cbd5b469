"""DWPose with onnxruntime: post-processing on known outputs, and the whole path on tiny exported ONNX models.

The tiny models have the real models' signatures (detector: (1, 3, 640, 640) -> (1, 8400, 85) raw
YOLOX grid predictions; pose: ``input`` (1, 3, 384, 288) -> ``simcc_x`` (1, 133, 576) and
``simcc_y`` (1, 133, 768)) and compute known answers: the detector predicts, from every cell, the
box of the bright region (objectness = how much of the cell it covers); the pose model puts every
keypoint at the brightest column and row of its crop.
"""

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.pose.dwpose import (
    DETECTOR_FILE,
    POSE_FILE,
    DWPose,
    box_center_scale,
    crop_for_pose,
    decode_simcc,
    decode_yolox,
    finish_keypoints,
    letterbox,
    model_paths,
    nms,
    person_boxes,
    select_person,
    smooth_keypoints,
    to_image_coordinates,
)

PERSON_LEVEL = 160  # grey of the "person" rectangle; the letterbox pad (114) and the background stay below the detector's cut
DOT = (255, 255, 255)


class TinyDetector(torch.nn.Module):
    """(1, 3, 640, 640) in 0-255 -> (1, 8400, 85): every cell predicts the box of the pixels brighter than 0.55."""

    def __init__(self, size: int = 640, strides=(8, 16, 32)):
        super().__init__()
        self.strides = strides
        grids, cell_strides = [], []
        for stride in strides:
            ys, xs = torch.meshgrid(torch.arange(size // stride), torch.arange(size // stride), indexing="ij")
            grids.append(torch.stack([xs.flatten(), ys.flatten()], -1).float())
            cell_strides.append(torch.full((xs.numel(), 1), float(stride)))
        self.register_buffer("grid", torch.cat(grids))  # (8400, 2)
        self.register_buffer("stride", torch.cat(cell_strides))  # (8400, 1)
        ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
        self.register_buffer("xs", xs)
        self.register_buffer("ys", ys)

    def forward(self, image):
        """Raw YOLOX-style predictions [dx, dy, log w, log h, objectness, 80 classes]."""
        mask = torch.clamp((image.mean(1)[0] / 255 - 0.55) * 100, 0, 1)  # (H, W)
        total = mask.sum() + 1e-6
        cx, cy = (mask * self.xs).sum() / total + 0.5, (mask * self.ys).sum() / total + 0.5  # edge coordinates
        var_x = (mask * (self.xs + 0.5 - cx) ** 2).sum() / total
        var_y = (mask * (self.ys + 0.5 - cy) ** 2).sum() / total
        w, h = torch.sqrt(12 * var_x + 1), torch.sqrt(12 * var_y + 1)
        centre = torch.stack([cx, cy])[None] / self.stride - self.grid  # (8400, 2)
        size = torch.log(torch.stack([w, h])[None] / self.stride)
        objectness = torch.cat([F.avg_pool2d(mask[None, None], s).flatten() for s in self.strides])[:, None]
        classes = torch.cat([torch.ones_like(objectness), torch.zeros(objectness.shape[0], 79)], dim=1)
        return torch.cat([centre, size, objectness, classes], dim=1)[None]


class TinyPose(torch.nn.Module):
    """(1, 3, 384, 288) normalised -> simcc_x (1, 133, 576), simcc_y (1, 133, 768): all keypoints at the brightest column/row."""

    def forward(self, crop):
        """Column and row maxima of channel 0, two bins per pixel (split ratio 2)."""
        channel = crop[:, 0]
        cols, rows = channel.amax(1), channel.amax(2)  # (1, 288), (1, 384)
        simcc_x = torch.stack([cols, cols - 1e-3], -1).reshape(1, 1, -1).expand(1, 133, -1)
        simcc_y = torch.stack([rows, rows - 1e-3], -1).reshape(1, 1, -1).expand(1, 133, -1)
        return simcc_x, simcc_y


def export(model, shape, path, outputs):
    """Export a torch module to ONNX with the real models' input/output names."""
    torch.onnx.export(model.eval(), (torch.zeros(shape),), str(path), input_names=["input"], output_names=outputs,
                      opset_version=17, dynamo=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A directory with tiny yolox_l.onnx and dw-ll_ucoco_384.onnx."""
    directory = tmp_path_factory.mktemp("dwpose")
    export(TinyDetector(), (1, 3, 640, 640), directory / DETECTOR_FILE, ["output"])
    export(TinyPose(), (1, 3, 384, 288), directory / POSE_FILE, ["simcc_x", "simcc_y"])
    return directory


def person_image(height=200, width=160, box=(50, 40, 110, 160), dot=(83, 71)):
    """Black frame, grey person rectangle (x0, y0, x1, y1 edges), one white pixel at dot (x, y)."""
    image = np.zeros((height, width, 3), dtype=np.uint8)
    x0, y0, x1, y1 = box
    image[y0:y1, x0:x1] = PERSON_LEVEL
    image[dot[1], dot[0]] = DOT
    return image


def test_exported_models_have_the_real_signatures(model_dir):
    import onnxruntime as ort

    det = ort.InferenceSession(str(model_dir / DETECTOR_FILE), providers=["CPUExecutionProvider"])
    pose = ort.InferenceSession(str(model_dir / POSE_FILE), providers=["CPUExecutionProvider"])
    assert det.get_inputs()[0].shape == [1, 3, 640, 640] and det.get_outputs()[0].shape == [1, 8400, 85]
    assert pose.get_inputs()[0].shape == [1, 3, 384, 288]
    assert [(o.name, o.shape) for o in pose.get_outputs()] == [("simcc_x", [1, 133, 576]), ("simcc_y", [1, 133, 768])]


def test_detector_finds_the_person_box(model_dir):
    model = DWPose(model_dir, threads=1)
    boxes, scores = model.detect(person_image())
    assert len(boxes) == 1 and scores[0] > 0.9
    np.testing.assert_allclose(boxes[0], [50, 40, 110, 160], atol=1.0)


def test_keypoints_land_on_the_dot_in_image_pixels(model_dir):
    model = DWPose(model_dir, threads=1)
    result = model.frame(person_image(dot=(83, 71)))
    assert result.box is not None
    np.testing.assert_allclose(result.keypoints[:, 0], 83, atol=1.0)
    np.testing.assert_allclose(result.keypoints[:, 1], 71, atol=1.0)
    assert (result.keypoints[:, 2] == 1.0).all()


def test_video_tracks_the_dot_and_reports_empty_frames(model_dir):
    model = DWPose(model_dir, threads=1)
    frames = np.stack([person_image(dot=(70 + 5 * t, 60 + 10 * t)) for t in range(3)] + [np.zeros((200, 160, 3), np.uint8)])
    keypoints = model.video(frames)
    assert keypoints.shape == (4, 133, 3)
    np.testing.assert_allclose(keypoints[:3, 0, 0], [70, 75, 80], atol=1.0)
    np.testing.assert_allclose(keypoints[:3, 0, 1], [60, 70, 80], atol=1.0)
    assert not keypoints[3].any()  # nobody detected: all absent


def test_missing_model_names_the_file_and_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        model_paths(tmp_path)
    assert str(tmp_path / DETECTOR_FILE) in str(info.value) and "huggingface.co/yzd-v/DWPose" in str(info.value)
    with pytest.raises(FileNotFoundError, match="dw-ll_ucoco_384.onnx"):
        (tmp_path / DETECTOR_FILE).write_bytes(b"")
        DWPose(tmp_path)


# ----------------------------------------------------------------------------- post-processing on known outputs


def test_decode_simcc_takes_argmax_over_split_ratio_and_the_smaller_maximum():
    simcc_x = np.zeros((1, 2, 10), np.float32)
    simcc_y = np.zeros((1, 2, 12), np.float32)
    simcc_x[0, 0, 7], simcc_y[0, 0, 4] = 0.9, 0.6
    simcc_x[0, 1], simcc_y[0, 1] = -1.0, -1.0
    simcc_x[0, 1, 3], simcc_y[0, 1, 5] = -0.2, -0.1  # not visible: location -1
    locations, scores = decode_simcc(simcc_x, simcc_y, split_ratio=2.0)
    np.testing.assert_allclose(locations[0, 0], [3.5, 2.0])
    np.testing.assert_allclose(scores[0], [0.6, -0.2])
    np.testing.assert_allclose(locations[0, 1], [-0.5, -0.5])


def test_decode_yolox_grid_and_strides():
    size = (64, 64)  # cells: 8x8 + 4x4 + 2x2 = 84
    raw = np.zeros((84, 6), np.float32)
    raw[64 + 4 * 1 + 2] = [0.5, 0.25, np.log(2.0), 0.0, 0.8, 0.5]  # stride 16, cell (x=2, y=1)
    boxes, scores = decode_yolox(raw, size)
    # centre ((0.5 + 2) * 16, (0.25 + 1) * 16) = (40, 20); size (2 * 16, 1 * 16)
    np.testing.assert_allclose(boxes[64 + 6], [24, 12, 56, 28])
    assert scores[64 + 6, 0] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="cells"):
        decode_yolox(raw[:80], size)


def test_nms_and_person_filtering():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10]], np.float32)
    scores = np.array([[0.9, 0.0], [0.8, 0.0], [0.2, 0.0], [0.05, 0.9]], np.float32)  # last: another class
    np.testing.assert_array_equal(nms(boxes, scores[:, 0], 0.45), [0, 2])  # 1 and 3 overlap box 0
    kept, kept_scores = person_boxes(boxes, scores, ratio=0.5)
    np.testing.assert_allclose(kept, [[0, 0, 20, 20]])  # the overlapping one is suppressed, 0.2 < 0.3 dropped, rescaled by 1/ratio
    np.testing.assert_allclose(kept_scores, [0.9])


def test_crop_and_back_projection_are_inverse():
    image = np.zeros((100, 80, 3), np.uint8)
    image[30, 20] = 255
    center, scale = box_center_scale(np.array([10, 10, 50, 70]), aspect=288 / 384)
    assert scale[0] / scale[1] == pytest.approx(288 / 384) and scale[1] == pytest.approx(60 * 1.25)
    crop = crop_for_pose(image, center, scale, (384, 288))
    _, _, y, x = np.unravel_index(crop[0, :1].argmax(), crop[:, :1].shape)
    back = to_image_coordinates(np.array([[x, y]], np.float64), center, scale, (384, 288))
    np.testing.assert_allclose(back[0], [20, 30], atol=0.5)


def test_keypoint_threshold_clipping_and_letterbox():
    keypoints = finish_keypoints(np.ones((133, 2)), np.linspace(-0.5, 1.5, 133), threshold=0.3)
    assert keypoints[:, 2].max() == 1.0 and (keypoints[keypoints[:, 2] > 0, 2] > 0.3).all()
    assert not keypoints[keypoints[:, 2] == 0].any()
    tensor, ratio = letterbox(np.zeros((100, 50, 3), np.uint8), (640, 640))
    assert tensor.shape == (1, 3, 640, 640) and ratio == 6.4 and tensor[0, 0, 0, 0] == 0 and tensor[0, 0, 0, 639] == 114


def test_select_person_tracks_then_falls_back_to_the_largest():
    boxes = np.array([[0, 0, 10, 10], [20, 20, 60, 60]], np.float32)
    scores = np.array([0.9, 0.8], np.float32)
    assert select_person(boxes, scores) == 1
    assert select_person(boxes, scores, previous=np.array([1, 1, 11, 11])) == 0
    assert select_person(boxes, scores, previous=np.array([100, 100, 120, 120])) == 1


def test_smoothing_averages_present_points_only():
    keypoints = np.zeros((5, 133, 3), np.float32)
    keypoints[:, 0] = [[0, 0, 1], [3, 0, 1], [0, 0, 1], [3, 0, 1], [0, 0, 1]]
    keypoints[2, 1] = [9, 9, 1]  # present in one frame only: unchanged
    smoothed = smooth_keypoints(keypoints, 3)
    np.testing.assert_allclose(smoothed[1:4, 0, 0], [1, 2, 1])
    np.testing.assert_allclose(smoothed[2, 1], [9, 9, 1])
    assert not smoothed[[0, 1, 3, 4], 1].any()
    np.testing.assert_array_equal(smooth_keypoints(keypoints, 1), keypoints)


# ----------------------------------------------------------------------------- data.prepare with pose=dwpose


def test_prepare_extracts_poses_with_the_models(model_dir, tmp_path):
    from common.video import encode_video
    from data.prepare import PrepareConfig, prepare
    from data.shards import iter_shard_samples

    videos = tmp_path / "videos"
    videos.mkdir()
    frames = np.stack([person_image(dot=(70 + t, 60 + t)) for t in range(5)])
    (videos / "dot.mp4").write_bytes(encode_video(frames, 10.0))
    (videos / "empty.mp4").write_bytes(encode_video(np.zeros((5, 200, 160, 3), np.uint8), 10.0))
    report = prepare(PrepareConfig(out=str(tmp_path / "out"), videos=str(videos), pose="dwpose", dwpose_dir=str(model_dir),
                                   clip_frames=5, val_fraction=0, test_fraction=0, progress=False))
    assert report["video_clips"] == 1 and report["skipped"]["no_person"]["paths"] == ["empty.mp4#clip0"]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    samples = list(iter_shard_samples([tmp_path / "out" / p for p in manifest["splits"]["train"]["video"]["shards"]]))
    np.testing.assert_allclose(samples[0].keypoints[:, 0, 0], 70 + np.arange(5), atol=1.5)
    missing = tmp_path / "nomodels"
    with pytest.raises(FileNotFoundError, match="yolox_l.onnx"):
        prepare(PrepareConfig(out=str(tmp_path / "out2"), videos=str(videos), pose="dwpose", dwpose_dir=str(missing), progress=False))
    shutil.rmtree(tmp_path / "out")
