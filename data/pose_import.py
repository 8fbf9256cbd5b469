"""Import keypoints users already have -> COCO-WholeBody ``(T, 133, 3)`` in pixels, confidences in [0, 1].

Formats (see docs/DATA_PREPARATION.md):
- ``.npy`` arrays (never unpickled unless they hold a DWPose dict, see below): ``(T, 133, 3)`` or
  ``(133, 3)`` (this layout), ``(T, 134, 3)`` (DWPose's candidate layout: OpenPose-18 body then
  feet, face, hands), ``(T, 18, 3)`` (OpenPose-18), ``(T, 25, 3)`` (OpenPose BODY_25); pixels.
  A last dimension of 2 (no confidences) means confidence 1 for points with x, y >= 0 and 0 for
  the rest (DWPose marks missing points with -1).
- DWPose pickles (``.pkl``/``.pickle``, or ``.npy`` holding an object): per frame either the
  ControlNet pose dict ``{"bodies": {"candidate", "subset"}, "hands", "faces"}`` (coordinates
  normalised to [0, 1]; optional ``hands_score``/``faces_score``) or ``{"keypoints", "scores"}`` /
  a ``(keypoints, scores)`` tuple as ``Wholebody`` returns them (pixels, 133 or 134 points, one
  row per person: the person with the highest mean score is kept). A list of those is a video.
  Pickles are read with an unpickler that only builds numpy arrays and plain containers, so a
  crafted file cannot run code.
- OpenPose JSON: one file per frame (``{"people": [{"pose_keypoints_2d", "face_keypoints_2d",
  "hand_left_keypoints_2d", "hand_right_keypoints_2d"}]}``, body as COCO-18 or BODY_25, the most
  confident person kept), a directory of them (sorted by the numbers in their names), pixels.
- DeepFashion pose-transfer annotations (``name:keypoints_y:keypoints_x`` CSV, OpenPose-18 order,
  -1 = missing): :func:`read_deepfashion_annotations`.

Every reader raises :class:`KeypointError` (a ValueError) naming the file and the problem;
:func:`check_keypoints` rejects keypoints that do not fit the video (frame count, out-of-frame or
normalised-looking coordinates) so a mismatched file never becomes a silently wrong sample.
"""

from __future__ import annotations

import csv
import io
import json
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np

from common.pose.convert import assemble_dwpose133, openpose18_to_dwpose133, openpose25_to_dwpose133
from common.pose.layout import FEET, NUM_KEYPOINTS

POSE_SUFFIXES = (".pose.npy", ".npy", ".pkl", ".pickle", ".json")
POSE_DIR_SUFFIXES = ("_openpose", ".openpose", "_keypoints")
SAFE_PICKLE_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"), ("collections", "OrderedDict"),
}
OUT_OF_FRAME_MARGIN = 0.1  # fraction of the frame size a confident point may lie outside
MAX_OUT_OF_FRAME = 0.2  # fraction of confident points allowed outside (with the margin)


class KeypointError(ValueError):
    """A keypoint file that cannot be read or does not fit its video."""


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that only builds numpy arrays/dtypes/scalars and builtin containers."""

    def find_class(self, module: str, name: str) -> Any:
        """Allow only :data:`SAFE_PICKLE_GLOBALS`."""
        if (module, name) in SAFE_PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} (only numpy arrays and plain containers are read)")


def safe_load_pickle(data: bytes, name: str) -> Any:
    """Unpickle ``data`` with :class:`_SafeUnpickler`; raises KeypointError naming ``name``."""
    try:
        return _SafeUnpickler(io.BytesIO(data)).load()
    except Exception as exn:  # noqa: BLE001 - any failure to parse is a bad file
        raise KeypointError(f"{name}: cannot read the pickle ({exn})") from exn


def _with_confidence(array: np.ndarray) -> np.ndarray:
    """``(..., K, 2)`` -> ``(..., K, 3)``: confidence 1 where x, y >= 0, else 0 (and zeroed coordinates)."""
    present = (array >= 0).all(-1, keepdims=True)
    return np.concatenate([np.where(present, array, 0.0), present.astype(np.float32)], axis=-1)


def from_array(array: np.ndarray, name: str) -> np.ndarray:
    """A keypoint array in one of the supported layouts (module docstring) -> ``(T, 133, 3)`` float32."""
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[-1] not in (2, 3):
        raise KeypointError(f"{name}: expected keypoints (T, K, 3) or (T, K, 2), got shape {array.shape}")
    if array.shape[-1] == 2:
        array = _with_confidence(array)
    count = array.shape[1]
    if count == NUM_KEYPOINTS:
        return array.copy()
    if count == NUM_KEYPOINTS + 1:
        rest = np.concatenate([np.zeros_like(array[:, : FEET.start]), array[:, 18:]], axis=1)
        return openpose18_to_dwpose133(array[:, :18], rest)
    if count == 18:
        return openpose18_to_dwpose133(array)
    if count == 25:
        return openpose25_to_dwpose133(array)
    raise KeypointError(f"{name}: {count} keypoints per frame is not a known layout (133, 134, 18 or 25)")


def _best_person(keypoints: np.ndarray, scores: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Pick the row with the highest mean score from per-person ``(N, K, 2|3)`` arrays."""
    if keypoints.ndim == 3:
        quality = scores.mean(-1) if scores is not None else (keypoints[..., 2].mean(-1) if keypoints.shape[-1] == 3 else np.zeros(len(keypoints)))
        best = int(np.argmax(quality)) if len(keypoints) else 0
        return keypoints[best], None if scores is None else scores[best]
    return keypoints, scores


def _from_scored(keypoints: Any, scores: Any, name: str) -> np.ndarray:
    """``Wholebody`` output (keypoints ``([N,] K, 2)``, scores ``([N,] K)``) of one frame -> ``(133, 3)``."""
    keypoints = np.asarray(keypoints, dtype=np.float32)
    scores = None if scores is None else np.clip(np.asarray(scores, dtype=np.float32), 0.0, 1.0)
    keypoints, scores = _best_person(keypoints, scores)
    if scores is not None:
        if scores.shape != keypoints.shape[:-1]:
            raise KeypointError(f"{name}: scores {scores.shape} do not match keypoints {keypoints.shape}")
        keypoints = np.concatenate([keypoints[..., :2], scores[..., None]], axis=-1)
    return from_array(keypoints, name)[0]


def _from_controlnet(pose: dict, width: int, height: int, name: str) -> np.ndarray:
    """ControlNet DWPose dict of one frame (normalised coordinates) -> ``(133, 3)`` pixels."""
    try:
        candidate = np.asarray(pose["bodies"]["candidate"], dtype=np.float32).reshape(-1, 2)
        subset = np.asarray(pose["bodies"]["subset"], dtype=np.float32).reshape(-1, np.asarray(pose["bodies"]["subset"]).shape[-1])
        hands = np.asarray(pose.get("hands", np.zeros((0, 21, 2))), dtype=np.float32)
        faces = np.asarray(pose.get("faces", np.zeros((0, 68, 2))), dtype=np.float32)
    except (KeyError, TypeError, ValueError) as exn:
        raise KeypointError(f"{name}: not a DWPose pose dict ({exn})") from exn
    if subset.shape[-1] < 18 or not len(subset):
        return np.zeros((NUM_KEYPOINTS, 3), dtype=np.float32)
    person = int(np.argmax((subset[:, :18] >= 0).sum(-1)))
    index = subset[person, :18].astype(int)
    body = np.zeros((18, 3), dtype=np.float32)
    present = (index >= 0) & (index < len(candidate))
    body[present, :2] = candidate[index[present]]
    body[present, 2] = 1.0
    parts = [None, None, None]
    if len(faces) > person:
        parts[0] = _scored_part(faces[person], pose.get("faces_score"), person)
    if len(hands) >= 2 * (person + 1):  # hands are stacked [left of each person..., right of each person...]
        persons = len(hands) // 2
        parts[1] = _scored_part(hands[person], pose.get("hands_score"), person)
        parts[2] = _scored_part(hands[persons + person], pose.get("hands_score"), persons + person)
    keypoints = assemble_dwpose133(openpose18_to_dwpose133(body), *parts)
    present = keypoints[:, 2] > 0
    keypoints[present, 0] *= width
    keypoints[present, 1] *= height
    return keypoints


def _scored_part(points: np.ndarray, scores: Any, row: int) -> np.ndarray:
    """A ``(K, 2)`` part with -1 for missing points (+ optional score rows) -> ``(K, 3)``."""
    part = _with_confidence(points)
    if scores is not None and len(np.asarray(scores)) > row:
        part[:, 2] = np.where(part[:, 2] > 0, np.clip(np.asarray(scores, dtype=np.float32)[row], 0.0, 1.0), 0.0)
    return part


def _from_frame_object(item: Any, width: int, height: int, name: str) -> np.ndarray:
    """One frame of an unpickled DWPose result -> ``(133, 3)``."""
    if isinstance(item, dict) and "bodies" in item:
        return _from_controlnet(item, width, height, name)
    if isinstance(item, dict) and "keypoints" in item:
        return _from_scored(item["keypoints"], item.get("scores"), name)
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return _from_scored(item[0], item[1], name)
    if isinstance(item, np.ndarray):
        return from_array(item, name)[0]
    raise KeypointError(f"{name}: unknown DWPose frame object {type(item).__name__}")


def from_object(obj: Any, width: int, height: int, name: str) -> np.ndarray:
    """An unpickled DWPose result (one frame or a list of frames) -> ``(T, 133, 3)``."""
    if isinstance(obj, np.ndarray) and obj.dtype != object:
        return from_array(obj, name)
    if isinstance(obj, dict) and "keypoints" in obj and np.asarray(obj["keypoints"]).ndim == 3 and np.asarray(obj["keypoints"]).shape[1] in (133, 134) and "scores" not in obj:
        return from_array(np.asarray(obj["keypoints"]), name)
    if isinstance(obj, dict) and "keypoints" in obj and np.asarray(obj["keypoints"]).ndim == 3 and "scores" in obj and np.asarray(obj["scores"]).ndim == 2 and len(obj["keypoints"]) == len(obj["scores"]):
        return np.stack([_from_scored(k, s, name) for k, s in zip(obj["keypoints"], obj["scores"])])  # a video of one person
    if isinstance(obj, dict) or (isinstance(obj, tuple) and len(obj) == 2 and not isinstance(obj[0], dict)):
        return _from_frame_object(obj, width, height, name)[None]
    if isinstance(obj, np.ndarray):  # object array of frames
        obj = list(obj)
    if isinstance(obj, (list, tuple)):
        if not obj:
            raise KeypointError(f"{name}: empty list of frames")
        return np.stack([_from_frame_object(item, width, height, name) for item in obj])
    raise KeypointError(f"{name}: unknown DWPose result of type {type(obj).__name__}")


def _openpose_values(person: dict, key: str, count: int | tuple[int, ...], name: str) -> np.ndarray | None:
    """A flat ``[x, y, c, ...]`` list of an OpenPose person -> ``(K, 3)`` (None when absent or empty)."""
    values = person.get(key)
    if not values:
        return None
    array = np.asarray(values, dtype=np.float32)
    counts = count if isinstance(count, tuple) else (count,)
    if array.size % 3 or array.size // 3 not in counts:
        raise KeypointError(f"{name}: {key} has {array.size} values, expected 3 x {' or '.join(map(str, counts))}")
    return array.reshape(-1, 3)


def from_openpose_frame(data: dict, name: str) -> np.ndarray:
    """One OpenPose JSON frame -> ``(133, 3)`` of its most confident person (zeros when nobody)."""
    people = data.get("people") if isinstance(data, dict) else None
    if people is None:
        raise KeypointError(f"{name}: not an OpenPose JSON frame (no 'people' list)")
    best, keypoints = -1.0, np.zeros((NUM_KEYPOINTS, 3), dtype=np.float32)
    for person in people:
        body = _openpose_values(person, "pose_keypoints_2d", (18, 25), name)
        if body is None:
            continue
        converted = openpose18_to_dwpose133(body) if len(body) == 18 else openpose25_to_dwpose133(body)
        face = _openpose_values(person, "face_keypoints_2d", (68, 70), name)
        left = _openpose_values(person, "hand_left_keypoints_2d", 21, name)
        right = _openpose_values(person, "hand_right_keypoints_2d", 21, name)
        converted = assemble_dwpose133(converted, face, left, right)
        if body[:, 2].sum() > best:
            best, keypoints = float(body[:, 2].sum()), converted
    return np.clip(keypoints, [-np.inf, -np.inf, 0.0], [np.inf, np.inf, 1.0]).astype(np.float32)


def natural_key(path: Path) -> list:
    """Sort key that orders ``frame2`` before ``frame10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _read_json(path: Path) -> Any:
    """Parse a JSON file; raises KeypointError naming it."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exn:
        raise KeypointError(f"{path}: not readable JSON ({exn})") from exn


def load_keypoints(path: str | Path, width: int, height: int) -> np.ndarray:
    """Read a keypoint file or OpenPose JSON directory -> ``(T, 133, 3)`` float32 (``width``/``height``: the source frame size)."""
    path = Path(path)
    name = str(path)
    if path.is_dir():
        files = sorted(path.glob("*.json"), key=natural_key)
        if not files:
            raise KeypointError(f"{name}: directory has no OpenPose .json files")
        return np.stack([from_openpose_frame(_read_json(file), str(file)) for file in files])
    try:
        data = path.read_bytes()
    except OSError as exn:
        raise KeypointError(f"{name}: cannot read ({exn})") from exn
    if path.suffix == ".json":
        obj = _read_json(path)
        if isinstance(obj, dict) and "people" in obj:
            return from_openpose_frame(obj, name)[None]
        if isinstance(obj, list) and obj and isinstance(obj[0], dict) and "people" in obj[0]:
            return np.stack([from_openpose_frame(frame, f"{name}[{i}]") for i, frame in enumerate(obj)])
        raise KeypointError(f"{name}: JSON is neither an OpenPose frame nor a list of them")
    if path.suffix in (".pkl", ".pickle"):
        return from_object(safe_load_pickle(data, name), width, height, name)
    if path.suffix == ".npy":
        try:
            return from_array(np.load(io.BytesIO(data), allow_pickle=False), name)
        except ValueError as exn:
            if "allow_pickle" not in str(exn):
                raise KeypointError(f"{name}: not a readable .npy ({exn})") from exn
        obj = _load_npy_object(data, name)
        return from_object(obj, width, height, name)
    raise KeypointError(f"{name}: unknown keypoint file type (expected {', '.join(POSE_SUFFIXES)} or a directory of OpenPose JSON)")


def _load_npy_object(data: bytes, name: str) -> Any:
    """An object ``.npy`` (a pickled DWPose result) read through the safe unpickler."""
    buffer = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buffer)
        readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in readers:
            raise ValueError(f"unsupported .npy format version {version}")
        shape, _, dtype = readers[version](buffer, max_header_size=1 << 20)
    except ValueError as exn:
        raise KeypointError(f"{name}: not a readable .npy ({exn})") from exn
    if dtype != np.dtype(object):
        raise KeypointError(f"{name}: unexpected .npy contents")
    obj = safe_load_pickle(buffer.read(), name)
    if shape == () and isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    return obj


def check_keypoints(keypoints: np.ndarray, num_frames: int, width: int, height: int, name: str, threshold: float = 0.3) -> np.ndarray:
    """Raise KeypointError unless ``(T, 133, 3)`` keypoints fit a ``num_frames`` x ``height`` x ``width`` video; returns them as float32."""
    keypoints = np.asarray(keypoints, dtype=np.float32)
    if keypoints.ndim != 3 or keypoints.shape[1:] != (NUM_KEYPOINTS, 3):
        raise KeypointError(f"{name}: keypoints have shape {keypoints.shape}, expected ({num_frames}, {NUM_KEYPOINTS}, 3)")
    if len(keypoints) != num_frames:
        raise KeypointError(f"{name}: {len(keypoints)} keypoint frames for a video of {num_frames} frames")
    if not np.isfinite(keypoints).all():
        raise KeypointError(f"{name}: non-finite keypoint values")
    if keypoints[..., 2].min(initial=0) < 0 or keypoints[..., 2].max(initial=0) > 1:
        raise KeypointError(f"{name}: confidences outside [0, 1]")
    confident = keypoints[..., 2] > threshold
    if confident.sum() >= 10 and max(width, height) >= 16:
        xy = keypoints[confident][:, :2]
        if np.abs(xy).max() <= 1.5:
            raise KeypointError(f"{name}: coordinates look normalised to [0, 1]; pixels of the {width}x{height} source are expected")
        margin_x, margin_y = OUT_OF_FRAME_MARGIN * width, OUT_OF_FRAME_MARGIN * height
        outside = (xy[:, 0] < -margin_x) | (xy[:, 0] > width + margin_x) | (xy[:, 1] < -margin_y) | (xy[:, 1] > height + margin_y)
        if outside.mean() > MAX_OUT_OF_FRAME:
            raise KeypointError(f"{name}: {outside.mean():.0%} of the confident keypoints lie outside the {width}x{height} frame (keypoints of another video or resolution?)")
    return keypoints


def find_sidecar(source: Path, root: Path, poses_root: Path | None = None) -> Path | None:
    """The keypoint file of a source video/frame folder: ``STEM{.pose.npy,.npy,.pkl,.pickle,.json}`` or ``STEM_openpose/``.

    ``STEM`` is the source path without its suffix, beside it or, with ``poses_root``, at the
    same relative path under ``poses_root``.
    """
    relative = source.relative_to(root)
    base = (poses_root / relative) if poses_root is not None else source
    stem = base.with_suffix("") if base.suffix and not source.is_dir() else base
    for suffix in POSE_SUFFIXES:
        candidate = stem.with_name(stem.name + suffix)
        if candidate.is_file():
            return candidate
    for suffix in POSE_DIR_SUFFIXES:
        candidate = stem.with_name(stem.name + suffix)
        if candidate.is_dir():
            return candidate
    return None


def read_deepfashion_annotations(path: str | Path) -> dict[str, np.ndarray]:
    """DeepFashion pose-transfer annotations ``name:keypoints_y:keypoints_x`` -> {image name: ``(133, 3)``}.

    The lists hold 18 OpenPose-order coordinates each, -1 for a missing point.
    """
    path = Path(path)
    out = {}
    try:
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle, delimiter=":"):
                ys, xs = json.loads(row["keypoints_y"]), json.loads(row["keypoints_x"])
                if len(ys) != 18 or len(xs) != 18:
                    raise KeypointError(f"{path}: {row['name']} has {len(ys)}/{len(xs)} coordinates, expected 18")
                body = np.zeros((18, 3), dtype=np.float32)
                for i, (x, y) in enumerate(zip(xs, ys)):
                    if x >= 0 and y >= 0:
                        body[i] = (x, y, 1.0)
                out[row["name"]] = openpose18_to_dwpose133(body)
    except (OSError, KeyError, json.JSONDecodeError, csv.Error, TypeError) as exn:
        raise KeypointError(f"{path}: not a DeepFashion annotation file name:keypoints_y:keypoints_x ({exn})") from exn
    return out
