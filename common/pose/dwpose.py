"""DWPose whole-body pose extraction with onnxruntime: a YOLOX person detector, then the RTMPose-style SimCC model.

Model files (ONNX, read from a local directory, never downloaded): ``yolox_l.onnx`` and
``dw-ll_ucoco_384.onnx`` from https://huggingface.co/yzd-v/DWPose (the DWPose repository,
https://github.com/IDEA-Research/DWPose, links the same files).

Facts from the public DWPose code (``ControlNet-v1-1-nightly/annotator/dwpose/onnxdet.py`` and
``onnxpose.py``/``cv_ox_pose.py``; controlnet_aux and UniAnimate-DiT carry copies):
- Detector: input ``(1, 3, 640, 640)`` float, the image resized by ``r = min(640 / H, 640 / W)``
  (bilinear) into the top-left corner of a canvas filled with 114, values 0-255, no
  normalisation. Output ``(1, 8400, 85)``: raw per-cell predictions of the three strides 8, 16,
  32 (80x80 + 40x40 + 20x20 cells, row-major), ``[dx, dy, log w, log h, objectness, 80 class
  scores]``; objectness and classes are already sigmoid-ed by the exported head. Decoding:
  centre = (d + cell index) * stride, size = exp(log size) * stride; score = objectness x class;
  class-wise NMS at IoU 0.45 on scores > 0.1; people are class 0 with score > 0.3; boxes / r.
- Pose model: input ``(1, 3, 384, 288)`` (H, W): the box grown by 1.25, widened to the 288:384
  aspect, cut out with an affine warp (no rotation), normalised with mean (123.675, 116.28,
  103.53) and std (58.395, 57.12, 57.375). Outputs ``simcc_x (1, 133, 576)`` and ``simcc_y
  (1, 133, 768)`` (split ratio 2.0): location = argmax / 2 in input pixels, score = the smaller
  of the two maxima (location -1 where it is <= 0), mapped back with
  ``location / input size * box scale + centre - box scale / 2``. DWPose treats scores > 0.3 as
  visible.
- Images are passed in the channel order DWPose's annotator passes them (RGB arrays here).

Input sizes are read from the sessions (as DWPose does), so smaller exports work too. Scores are
clipped to [0, 1] (the shard format's confidence range); points at or below ``keypoint_threshold``
become absent (all zeros).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from common.pose.layout import NUM_KEYPOINTS

DETECTOR_FILE = "yolox_l.onnx"
POSE_FILE = "dw-ll_ucoco_384.onnx"
DOWNLOAD_HINT = "download yolox_l.onnx and dw-ll_ucoco_384.onnx from https://huggingface.co/yzd-v/DWPose (linked from https://github.com/IDEA-Research/DWPose)"
YOLOX_STRIDES = (8, 16, 32)
PAD_VALUE = 114
POSE_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
POSE_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)
BOX_PADDING = 1.25
SIMCC_SPLIT_RATIO = 2.0
PERSON_CLASS = 0


def model_paths(model_dir: str | os.PathLike) -> tuple[Path, Path]:
    """(detector, pose model) paths in ``model_dir``; raises FileNotFoundError naming a missing file and where to get it."""
    model_dir = Path(model_dir)
    paths = (model_dir / DETECTOR_FILE, model_dir / POSE_FILE)
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"DWPose model file {path} not found: {DOWNLOAD_HINT} into {model_dir}")
    return paths


# ----------------------------------------------------------------------------- detector


def letterbox(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """uint8 ``(H, W, 3)`` -> detector input float32 ``(1, 3, h, w)`` (top-left, pad 114) and the resize ratio."""
    height, width = size
    ratio = min(height / image.shape[0], width / image.shape[1])
    new_w, new_h = int(image.shape[1] * ratio), int(image.shape[0] * ratio)
    canvas = np.full((height, width, 3), PAD_VALUE, dtype=np.uint8)
    canvas[:new_h, :new_w] = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    return canvas.transpose(2, 0, 1)[None].astype(np.float32), ratio


def decode_yolox(predictions: np.ndarray, size: tuple[int, int], strides: tuple[int, ...] = YOLOX_STRIDES) -> tuple[np.ndarray, np.ndarray]:
    """Raw grid predictions ``(N, 5 + C)`` of an ``size`` (h, w) input -> boxes ``(N, 4)`` x0 y0 x1 y1 and scores ``(N, C)``."""
    grids, cell_strides = [], []
    for stride in strides:
        ys, xs = np.mgrid[0 : size[0] // stride, 0 : size[1] // stride]
        grids.append(np.stack([xs.ravel(), ys.ravel()], axis=-1))
        cell_strides.append(np.full(xs.size, stride))
    grid, stride = np.concatenate(grids).astype(np.float32), np.concatenate(cell_strides)[:, None].astype(np.float32)
    if len(grid) != len(predictions):
        raise ValueError(f"detector output has {len(predictions)} cells, a {size[0]}x{size[1]} input with strides {strides} has {len(grid)}")
    centre = (predictions[:, :2] + grid) * stride
    half = np.exp(predictions[:, 2:4]) * stride / 2
    boxes = np.concatenate([centre - half, centre + half], axis=-1)
    return boxes, predictions[:, 4:5] * predictions[:, 5:]


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of the boxes ``(N, 4)`` kept by greedy non-maximum suppression, best score first.

    Areas use DWPose's ``+1`` pixel convention.
    """
    x0, y0, x1, y1 = boxes.T
    areas = (x1 - x0 + 1) * (y1 - y0 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        w = np.maximum(0.0, np.minimum(x1[best], x1[rest]) - np.maximum(x0[best], x0[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y1[best], y1[rest]) - np.maximum(y0[best], y0[rest]) + 1)
        inter = w * h
        order = rest[inter / (areas[best] + areas[rest] - inter) <= iou_threshold]
    return np.array(keep, dtype=np.int64)


def person_boxes(boxes: np.ndarray, scores: np.ndarray, ratio: float, nms_threshold: float = 0.45,
                 candidate_threshold: float = 0.1, score_threshold: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Decoded detector output -> person boxes ``(K, 4)`` in image pixels and their scores ``(K,)``."""
    person = scores[:, PERSON_CLASS]
    candidates = person > candidate_threshold
    boxes, person = boxes[candidates] / ratio, person[candidates]
    keep = nms(boxes, person, nms_threshold)
    boxes, person = boxes[keep], person[keep]
    confident = person > score_threshold
    return boxes[confident].reshape(-1, 4), person[confident]


# ----------------------------------------------------------------------------- pose model


def box_center_scale(box: np.ndarray, aspect: float, padding: float = BOX_PADDING) -> tuple[np.ndarray, np.ndarray]:
    """Box x0 y0 x1 y1 -> centre ``(2,)`` and scale ``(2,)`` (w, h) grown by ``padding`` and widened to ``aspect`` = w / h."""
    x0, y0, x1, y1 = box
    center = np.array([x0 + x1, y0 + y1], dtype=np.float64) / 2
    w, h = (x1 - x0) * padding, (y1 - y0) * padding
    scale = np.array([w, w / aspect]) if w > h * aspect else np.array([h * aspect, h])
    return center, scale


def crop_for_pose(image: np.ndarray, center: np.ndarray, scale: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The box region of ``image`` (H, W, 3) warped to the pose input ``size`` (h, w), normalised: ``(1, 3, h, w)``.

    Input pixel centre ``u`` samples the image at ``(u - w / 2) * scale_w / w + centre`` (pixel
    centres at integers, as cv2.warpAffine); PIL samples at pixel edges, hence the 0.5 shifts.
    """
    height, width = size
    k = scale[0] / width
    data = (k, 0.0, (-0.5 - width / 2) * k + center[0] + 0.5, 0.0, k, (-0.5 - height / 2) * k + center[1] + 0.5)
    crop = Image.fromarray(image).transform((width, height), Image.AFFINE, data, resample=Image.BILINEAR, fillcolor=(0, 0, 0))
    normalised = (np.asarray(crop, dtype=np.float32) - POSE_MEAN) / POSE_STD
    return normalised.transpose(2, 0, 1)[None].astype(np.float32)


def decode_simcc(simcc_x: np.ndarray, simcc_y: np.ndarray, split_ratio: float = SIMCC_SPLIT_RATIO) -> tuple[np.ndarray, np.ndarray]:
    """SimCC outputs ``(N, K, Wx)``, ``(N, K, Wy)`` -> locations ``(N, K, 2)`` in input pixels and scores ``(N, K)``."""
    x_loc, y_loc = simcc_x.argmax(-1), simcc_y.argmax(-1)
    scores = np.minimum(simcc_x.max(-1), simcc_y.max(-1))
    locations = np.stack([x_loc, y_loc], axis=-1).astype(np.float32)
    locations[scores <= 0] = -1
    return locations / split_ratio, scores.astype(np.float32)


def to_image_coordinates(locations: np.ndarray, center: np.ndarray, scale: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pose-input locations ``(K, 2)`` -> image pixels: ``location / (w, h) * scale + centre - scale / 2``."""
    input_wh = np.array([size[1], size[0]], dtype=np.float64)
    return locations / input_wh * scale + center - scale / 2


def finish_keypoints(xy: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Locations ``(133, 2)`` and raw scores ``(133,)`` -> keypoints ``(133, 3)``: scores clipped to [0, 1], weak points zeroed."""
    keypoints = np.concatenate([xy, np.clip(scores, 0.0, 1.0)[:, None]], axis=-1).astype(np.float32)
    keypoints[keypoints[:, 2] <= threshold] = 0.0
    return keypoints


# ----------------------------------------------------------------------------- people over time


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes ``(N, 4)`` with one box ``(4,)`` -> ``(N,)``."""
    w = np.clip(np.minimum(a[:, 2], b[2]) - np.maximum(a[:, 0], b[0]), 0, None)
    h = np.clip(np.minimum(a[:, 3], b[3]) - np.maximum(a[:, 1], b[1]), 0, None)
    inter = w * h
    area = lambda box: np.clip(box[..., 2] - box[..., 0], 0, None) * np.clip(box[..., 3] - box[..., 1], 0, None)  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-9)


def select_person(boxes: np.ndarray, scores: np.ndarray, previous: np.ndarray | None = None, min_iou: float = 0.3) -> int:
    """Index of the main person: the box overlapping ``previous`` most (IoU >= ``min_iou``), else the largest area x score."""
    if previous is not None:
        overlap = box_iou(boxes, previous)
        if overlap.max() >= min_iou:
            return int(overlap.argmax())
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return int(np.argmax(area * scores))


def smooth_keypoints(keypoints: np.ndarray, window: int) -> np.ndarray:
    """Confidence-weighted centred moving average of ``(T, 133, 3)`` positions over ``window`` frames.

    Only frames where a point is present contribute; absent points stay absent; confidences are
    unchanged. ``window`` <= 1 returns a copy.
    """
    keypoints = np.asarray(keypoints, dtype=np.float32)
    if window <= 1:
        return keypoints.copy()
    half = window // 2
    weight = keypoints[..., 2:3]  # (T, 133, 1)
    padded_w = np.pad(weight, ((half, half), (0, 0), (0, 0)))
    padded_xy = np.pad(keypoints[..., :2] * weight, ((half, half), (0, 0), (0, 0)))
    cum_w = np.cumsum(np.pad(padded_w, ((1, 0), (0, 0), (0, 0))), axis=0, dtype=np.float64)
    cum_xy = np.cumsum(np.pad(padded_xy, ((1, 0), (0, 0), (0, 0))), axis=0, dtype=np.float64)
    total_w = cum_w[2 * half + 1 :] - cum_w[: -2 * half - 1]
    total_xy = cum_xy[2 * half + 1 :] - cum_xy[: -2 * half - 1]
    out = keypoints.copy()
    present = keypoints[..., 2] > 0
    out[..., :2] = np.where(present[..., None], total_xy / np.maximum(total_w, 1e-12), keypoints[..., :2])
    return out


# ----------------------------------------------------------------------------- the extractor


@dataclass
class Detection:
    """One frame's result: keypoints ``(133, 3)`` of the selected person and its box (None when nobody was found)."""

    keypoints: np.ndarray
    box: np.ndarray | None


class DWPose:
    """Detector + whole-body pose model as onnxruntime sessions; ``video(frames)`` gives ``(T, 133, 3)``.

    ``threads`` sets onnxruntime's intra-op threads (1 per worker process when preparing data
    with several workers). ``providers`` defaults to CUDA when onnxruntime has it, else CPU.
    """

    def __init__(self, model_dir: str | os.PathLike | None = None, detector: str | os.PathLike | None = None,
                 pose: str | os.PathLike | None = None, threads: int = 0, providers: list[str] | None = None,
                 detection_threshold: float = 0.3, nms_threshold: float = 0.45, keypoint_threshold: float = 0.3):
        import onnxruntime as ort

        if detector is None or pose is None:
            if model_dir is None:
                raise ValueError(f"give the DWPose model directory (model_dir) or both model files; {DOWNLOAD_HINT}")
            detector, pose = model_paths(model_dir)
        for path in (detector, pose):
            if not Path(path).is_file():
                raise FileNotFoundError(f"DWPose model file {path} not found: {DOWNLOAD_HINT}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        available = ort.get_available_providers()
        providers = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.detector = ort.InferenceSession(os.fspath(detector), options, providers=providers)
        self.pose = ort.InferenceSession(os.fspath(pose), options, providers=providers)
        self.detector_size = tuple(int(v) for v in self.detector.get_inputs()[0].shape[2:])  # (h, w)
        self.pose_size = tuple(int(v) for v in self.pose.get_inputs()[0].shape[2:])  # (h, w)
        self.detection_threshold, self.nms_threshold = detection_threshold, nms_threshold
        self.keypoint_threshold = keypoint_threshold

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Person boxes ``(K, 4)`` and scores ``(K,)`` in an RGB uint8 image ``(H, W, 3)``."""
        tensor, ratio = letterbox(image, self.detector_size)
        raw = self.detector.run(None, {self.detector.get_inputs()[0].name: tensor})[0][0]  # (N, 85)
        boxes, scores = decode_yolox(raw, self.detector_size)
        return person_boxes(boxes, scores, ratio, self.nms_threshold, score_threshold=self.detection_threshold)

    def keypoints(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """Whole-body keypoints ``(133, 3)`` of the person in ``box`` (x0, y0, x1, y1)."""
        height, width = self.pose_size
        center, scale = box_center_scale(box, width / height)
        outputs = self.pose.run(None, {self.pose.get_inputs()[0].name: crop_for_pose(image, center, scale, self.pose_size)})
        named = dict(zip([o.name for o in self.pose.get_outputs()], outputs))
        simcc_x, simcc_y = named.get("simcc_x", outputs[0]), named.get("simcc_y", outputs[1])
        locations, scores = decode_simcc(simcc_x, simcc_y)
        if locations.shape[1] != NUM_KEYPOINTS:
            raise ValueError(f"the pose model predicts {locations.shape[1]} keypoints, the 133-point whole-body layout is expected")
        xy = to_image_coordinates(locations[0], center, scale, self.pose_size)
        return finish_keypoints(xy, scores[0], self.keypoint_threshold)

    def frame(self, image: np.ndarray, previous: np.ndarray | None = None) -> Detection:
        """The main person of one RGB frame (see :func:`select_person`); empty keypoints when nobody is detected."""
        boxes, scores = self.detect(image)
        if not len(boxes):
            return Detection(np.zeros((NUM_KEYPOINTS, 3), dtype=np.float32), None)
        box = boxes[select_person(boxes, scores, previous)]
        return Detection(self.keypoints(image, box), box)

    def video(self, frames: np.ndarray, smooth: int = 0) -> np.ndarray:
        """Keypoints ``(T, 133, 3)`` of the main person of RGB frames ``(T, H, W, 3)``, tracked by box overlap, optionally smoothed."""
        previous, out = None, []
        for image in frames:
            detection = self.frame(image, previous)
            previous = detection.box if detection.box is not None else previous
            out.append(detection.keypoints)
        keypoints = np.stack(out) if out else np.zeros((0, NUM_KEYPOINTS, 3), dtype=np.float32)
        return smooth_keypoints(keypoints, smooth)
