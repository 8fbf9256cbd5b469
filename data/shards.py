"""The shard format (WebDataset tars, see docs/ARCHITECTURE.md), its writer, decoder and bad-sample accounting.

One sample = tar members sharing a key: ``KEY.mp4`` (video) or ``KEY.png`` (image),
``KEY.pose.npy`` (T, 133, 3) float32 keypoints, ``KEY.json`` metadata and optionally
``KEY.mask.npy`` (the person mask packed with ``np.packbits(axis=-1)``) and ``KEY.plate.png``
(the background plate: the scene without the person, synthetic data). Shards are written to a
temporary name and renamed when complete. Decoding never unpickles and never opens ``pipe:``
URLs; a sample that cannot be decoded raises :class:`BadSample`, which pipelines count with a
:class:`BadSampleCounter` and skip.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import tarfile
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from common.files import AtomicFile, atomic_write_json
from common.video import decode_video, encode_video

NUM_KEYPOINTS = 133
KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]+")
URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
KINDS = ("video", "image")
REQUIRED_META = {"identity": str, "split": str, "kind": str, "fps": (int, float), "width": int, "height": int, "num_frames": int, "text_boxes": list}
MANIFEST_NAME = "manifest.json"


@dataclass
class Sample:
    """One decoded sample: frames uint8 ``(T, H, W, 3)``, keypoints float32 ``(T, 133, 3)``."""

    key: str
    frames: np.ndarray
    keypoints: np.ndarray
    meta: dict = field(default_factory=dict)
    person_mask: np.ndarray | None = None  # bool (T, H, W)
    plate: np.ndarray | None = None  # uint8 (H, W, 3): the static scene without the person (synthetic data knows it)
    digest: str = ""  # of the encoded media and keypoints, set when read from a shard: regenerated data gets new latent-cache keys


class BadSample(Exception):
    """A sample that cannot be decoded: ``reason`` (a slug from :attr:`REASONS`), ``key``, shard ``url``.

    truncated: the tar ends inside a sample; unreadable_video: the mp4/png does not decode;
    missing_key: no key or a required member (json, pose.npy, mp4/png) is absent;
    frame_count_mismatch: video, keypoints, mask and ``num_frames`` disagree; bad_keypoints,
    bad_metadata, bad_mask, bad_plate: that member does not parse or has the wrong shape/type/range.
    """

    REASONS = ("truncated", "unreadable_video", "missing_key", "frame_count_mismatch", "bad_keypoints", "bad_metadata", "bad_mask", "bad_plate")

    def __init__(self, reason: str, key: str, url: str, detail: str = ""):
        """Raise ValueError for an unknown reason (counts are keyed by it)."""
        if reason not in self.REASONS:
            raise ValueError(f"unknown bad-sample reason {reason!r} (known: {', '.join(self.REASONS)})")
        super().__init__(reason, key, url, detail)
        self.reason, self.key, self.url, self.detail = reason, key, url, detail

    def __reduce__(self):
        """Pickle by the constructor arguments (webdataset may append to ``args``)."""
        return (BadSample, (self.reason, self.key, self.url, self.detail))

    def __str__(self) -> str:
        """Shard URL, sample key and the problem."""
        key = f"sample {self.key!r}" if self.key else "unknown sample"
        return f"{self.url}: {key}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


def _is_tar_read_error(exn: BaseException) -> bool:
    """Whether ``exn`` is what reading a truncated or corrupt tar raises."""
    return isinstance(exn, (tarfile.TarError, EOFError))


def _url_of(exn: BaseException) -> str:
    """The shard URL webdataset attached to a tar read error (``"?"`` when it is not there)."""
    for arg in reversed(exn.args):
        if isinstance(arg, str) and arg and not any(c.isspace() for c in arg):
            return arg
    match = re.search(r"name='([^']+)'", str(exn.args[0])) if exn.args else None
    return match.group(1) if match else "?"


class BadSampleCounter:
    """Counts of bad samples per reason, with a few examples (``url:key``) each; picklable and mergeable.

    ``handler`` is a webdataset ``handler=`` hook: it counts :class:`BadSample` and tar read
    errors (as ``truncated``), returns True (continue) and re-raises anything else.
    """

    def __init__(self, max_examples: int = 3):
        """Empty counts; keep up to ``max_examples`` example sample names per reason."""
        self.max_examples = max_examples
        self._lock = threading.Lock()
        self._counts: Counter = Counter()
        self._examples: dict[str, list[str]] = {}
        self._truncated_url: str | None = None  # URL of the truncation the handler saw last

    def __getstate__(self) -> dict:
        """Pickle without the lock."""
        with self._lock:
            return {"max_examples": self.max_examples, "counts": dict(self._counts), "examples": {k: list(v) for k, v in self._examples.items()}}

    def __setstate__(self, state: dict) -> None:
        """Restore from :meth:`__getstate__` with a fresh lock."""
        self.max_examples = state["max_examples"]
        self._lock = threading.Lock()
        self._counts = Counter(state["counts"])
        self._examples = {k: list(v) for k, v in state["examples"].items()}
        self._truncated_url = None

    def add(self, bad: BadSample) -> None:
        """Count one bad sample."""
        with self._lock:
            self._counts[bad.reason] += 1
            examples = self._examples.setdefault(bad.reason, [])
            if len(examples) < self.max_examples:
                examples.append(f"{bad.url}:{bad.key}" if bad.key else bad.url)

    def merge(self, other: BadSampleCounter) -> None:
        """Add another counter's counts and examples (e.g. from a worker process)."""
        state = other.__getstate__()
        with self._lock:
            self._counts.update(state["counts"])
            for reason, examples in state["examples"].items():
                mine = self._examples.setdefault(reason, [])
                mine.extend(examples[: max(0, self.max_examples - len(mine))])

    def as_dict(self) -> dict[str, int]:
        """Counts per reason (only reasons seen)."""
        with self._lock:
            return dict(self._counts)

    @property
    def total(self) -> int:
        """Number of bad samples counted."""
        with self._lock:
            return sum(self._counts.values())

    def examples(self, reason: str) -> list[str]:
        """Up to ``max_examples`` ``url:key`` strings counted under ``reason``."""
        with self._lock:
            return list(self._examples.get(reason, []))

    def summary(self) -> str:
        """One line: total and counts per reason with examples."""
        with self._lock:
            if not self._counts:
                return "bad samples: none"
            parts = [f"{reason}: {count} (e.g. {', '.join(self._examples[reason])})" for reason, count in sorted(self._counts.items())]
            return f"bad samples: {sum(self._counts.values())} skipped; " + "; ".join(parts)

    def reset(self) -> None:
        """Forget all counts (e.g. at the start of an epoch)."""
        with self._lock:
            self._counts.clear()
            self._examples.clear()
            self._truncated_url = None

    def handler(self, exn: BaseException) -> bool:
        """webdataset ``handler=`` hook: count bad samples and tar read errors, continue; re-raise the rest.

        webdataset may report one truncated shard twice (from the member read and from the next
        header) and then yield the sample it cut short; those follow-ups of a truncation of the
        same URL are part of its single ``truncated`` count.
        """
        if isinstance(exn, BadSample):
            bad = exn
        elif _is_tar_read_error(exn):
            bad = BadSample("truncated", "", _url_of(exn), str(exn.args[0]) if exn.args else type(exn).__name__)
        else:
            raise exn
        with self._lock:
            follow_up = self._truncated_url == bad.url and bad.reason in ("truncated", "missing_key")
            self._truncated_url = bad.url if bad.reason == "truncated" else None
        if not follow_up:
            self.add(bad)
        return True


def _npy_bytes(array: np.ndarray) -> bytes:
    """An array as ``.npy`` bytes (never pickled)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _png_bytes(image: np.ndarray) -> bytes:
    """uint8 ``(H, W, 3)`` -> PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _check_writable(sample: Sample) -> None:
    """Raise ValueError when a sample does not follow the shard format."""
    where = f"sample {sample.key!r}"
    if not KEY_PATTERN.fullmatch(sample.key):
        raise ValueError(f"{where}: key must match [A-Za-z0-9_-]+")
    missing = [name for name in REQUIRED_META if name not in sample.meta]
    if missing:
        raise ValueError(f"{where}: metadata lacks {', '.join(missing)}")
    frames, keypoints, meta = sample.frames, sample.keypoints, sample.meta
    if meta["kind"] not in KINDS:
        raise ValueError(f"{where}: kind must be one of {KINDS}, got {meta['kind']!r}")
    if frames.ndim != 4 or frames.shape[1:] != (meta["height"], meta["width"], 3) or frames.dtype != np.uint8:
        raise ValueError(f"{where}: frames {frames.dtype} {frames.shape} do not match uint8 (T, {meta['height']}, {meta['width']}, 3)")
    if keypoints.shape != (len(frames), NUM_KEYPOINTS, 3) or len(frames) != meta["num_frames"]:
        raise ValueError(f"{where}: {len(frames)} frames, keypoints {keypoints.shape}, num_frames {meta['num_frames']} disagree")
    if meta["kind"] == "image" and len(frames) != 1:
        raise ValueError(f"{where}: an image sample has exactly one frame, got {len(frames)}")
    if sample.person_mask is not None and sample.person_mask.shape != frames.shape[:3]:
        raise ValueError(f"{where}: person mask {sample.person_mask.shape} does not match frames {frames.shape[:3]}")
    if sample.plate is not None and (sample.plate.shape != frames.shape[1:] or sample.plate.dtype != np.uint8):
        raise ValueError(f"{where}: plate {sample.plate.dtype} {sample.plate.shape} does not match uint8 frames {frames.shape[1:]}")


def encode_sample(sample: Sample) -> dict:
    """A sample -> the webdataset dict of member bytes (``__key__``, ``mp4``/``png``, ``pose.npy``, ``json``, ``mask.npy``, ``plate.png``)."""
    _check_writable(sample)
    raw = {
        "__key__": sample.key,
        "pose.npy": _npy_bytes(np.asarray(sample.keypoints, dtype=np.float32)),
        "json": json.dumps(sample.meta, sort_keys=True).encode("utf-8"),
    }
    if sample.meta["kind"] == "video":
        raw["mp4"] = encode_video(sample.frames, sample.meta["fps"])
    else:
        raw["png"] = _png_bytes(sample.frames[0])
    if sample.person_mask is not None:
        raw["mask.npy"] = _npy_bytes(np.packbits(sample.person_mask.astype(bool), axis=-1))
    if sample.plate is not None:
        raw["plate.png"] = _png_bytes(sample.plate)
    return raw


class ShardWriter:
    """Writes samples into ``{directory}/{prefix}-NNNNNN.tar``, ``max_samples`` per shard, atomically.

    Each shard is written through webdataset's TarWriter to a hidden temporary name and renamed
    when complete; ``paths`` lists the finished shards. Use as a context manager.
    """

    def __init__(self, directory: str | os.PathLike, prefix: str = "shard", max_samples: int = 64):
        """Create ``directory`` if needed; shards are ``{prefix}-NNNNNN.tar`` counting from 0."""
        if max_samples < 1:
            raise ValueError(f"max_samples must be at least 1, got {max_samples}")
        self.directory = Path(directory)
        self.prefix = prefix
        self.max_samples = max_samples
        self.paths: list[Path] = []
        self._tar: wds.TarWriter | None = None
        self._file = None
        self._pending = None
        self._count = 0
        self.directory.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> ShardWriter:
        """Enter: nothing is opened until the first sample."""
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        """Finish the open shard, or drop it when leaving on an exception."""
        if exc_type is None:
            self.close()
        else:
            self._abort()

    def _final_path(self) -> Path:
        """Path of the shard being written."""
        return self.directory / f"{self.prefix}-{len(self.paths):06d}.tar"

    def _open(self) -> None:
        """Start a new shard, written to a temporary name (:class:`common.files.AtomicFile`)."""
        self._pending = AtomicFile(self._final_path())
        self._file = open(self._pending.tmp, "wb")
        self._tar = wds.TarWriter(self._file, encoder=False, mtime=0.0)
        self._count = 0

    def _finish(self) -> None:
        """Close the current shard and rename it to its final name."""
        self._tar.close()
        self._file.close()
        self._pending.commit()
        self.paths.append(self._final_path())
        self._tar = self._file = self._pending = None

    def _abort(self) -> None:
        """Close and delete a partly written shard."""
        if self._tar is not None:
            self._tar.close()
            self._file.close()
            self._pending.discard()
            self._tar = self._file = self._pending = None

    def write(self, sample: Sample) -> None:
        """Encode and append one sample."""
        self.write_encoded(encode_sample(sample))

    def write_encoded(self, raw: dict) -> None:
        """Append one sample already encoded by :func:`encode_sample`."""
        if self._tar is None:
            self._open()
        self._tar.write(raw)
        self._count += 1
        if self._count >= self.max_samples:
            self._finish()

    def close(self) -> None:
        """Finish the open shard (if any)."""
        if self._tar is not None:
            self._finish()


def _load_npy(data: bytes) -> np.ndarray:
    """``.npy`` bytes -> array without unpickling."""
    return np.load(io.BytesIO(data), allow_pickle=False)


def _decode_meta(raw: dict, key: str, url: str) -> dict:
    """Parse and validate ``KEY.json``."""
    try:
        meta = json.loads(raw["json"])
    except (UnicodeDecodeError, json.JSONDecodeError) as exn:
        raise BadSample("bad_metadata", key, url, f"json does not parse: {exn}") from exn
    if not isinstance(meta, dict):
        raise BadSample("bad_metadata", key, url, "json is not an object")
    for name, kind in REQUIRED_META.items():
        if not isinstance(meta.get(name), kind) or isinstance(meta.get(name), bool):
            raise BadSample("bad_metadata", key, url, f"field {name!r} missing or not {kind}")
    if meta["kind"] not in KINDS or meta["width"] < 1 or meta["height"] < 1 or meta["num_frames"] < 1 or meta["fps"] <= 0:
        raise BadSample("bad_metadata", key, url, f"kind/size/frames/fps out of range: {meta['kind']!r}, {meta['width']}x{meta['height']}, {meta['num_frames']}, {meta['fps']}")
    if not all(isinstance(box, list) and len(box) == 5 for box in meta["text_boxes"]):
        raise BadSample("bad_metadata", key, url, "text_boxes must be [t, x0, y0, x1, y1] lists")
    return meta


def _decode_keypoints(raw: dict, key: str, url: str) -> np.ndarray:
    """Parse and validate ``KEY.pose.npy`` -> float32 ``(T, 133, 3)``."""
    try:
        keypoints = _load_npy(raw["pose.npy"])
    except (ValueError, OSError, EOFError) as exn:
        raise BadSample("bad_keypoints", key, url, f"pose.npy does not load: {exn}") from exn
    if keypoints.ndim != 3 or keypoints.shape[1:] != (NUM_KEYPOINTS, 3) or keypoints.dtype.kind != "f":
        raise BadSample("bad_keypoints", key, url, f"expected float (T, {NUM_KEYPOINTS}, 3), got {keypoints.dtype} {keypoints.shape}")
    if not np.isfinite(keypoints).all() or keypoints[..., 2].min(initial=0) < 0 or keypoints[..., 2].max(initial=0) > 1:
        raise BadSample("bad_keypoints", key, url, "non-finite values or confidences outside [0, 1]")
    return keypoints.astype(np.float32)


def _decode_frames(raw: dict, kind: str, key: str, url: str) -> np.ndarray:
    """Decode ``KEY.mp4`` / ``KEY.png`` -> uint8 ``(T, H, W, 3)``."""
    if kind == "video":
        try:
            return decode_video(raw["mp4"], f"{url}:{key}.mp4")
        except ValueError as exn:
            raise BadSample("unreadable_video", key, url, str(exn)) from exn
    try:
        with Image.open(io.BytesIO(raw["png"])) as image:
            return np.asarray(image.convert("RGB"))[None]
    except (OSError, ValueError, Image.DecompressionBombError) as exn:
        raise BadSample("unreadable_video", key, url, f"png does not decode: {exn}") from exn


def _decode_mask(data: bytes, frames: np.ndarray, key: str, url: str) -> np.ndarray:
    """Unpack ``KEY.mask.npy`` -> bool ``(T, H, W)`` matching the frames."""
    count, height, width = frames.shape[:3]
    try:
        packed = _load_npy(data)
    except (ValueError, OSError, EOFError) as exn:
        raise BadSample("bad_mask", key, url, f"mask.npy does not load: {exn}") from exn
    if packed.ndim == 3 and packed.shape[0] != count:
        raise BadSample("frame_count_mismatch", key, url, f"mask has {packed.shape[0]} frames, video {count}")
    if packed.dtype != np.uint8 or packed.shape != (count, height, math.ceil(width / 8)):
        raise BadSample("bad_mask", key, url, f"expected packed uint8 ({count}, {height}, {math.ceil(width / 8)}), got {packed.dtype} {packed.shape}")
    return np.unpackbits(packed, axis=-1, count=width).astype(bool)


def _decode_plate(data: bytes, frames: np.ndarray, key: str, url: str) -> np.ndarray:
    """``plate.png`` bytes -> uint8 (H, W, 3) matching the frames."""
    try:
        plate = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    except (OSError, ValueError) as exn:
        raise BadSample("bad_plate", key, url, f"plate.png does not decode: {exn}") from None
    if plate.shape != frames.shape[1:]:
        raise BadSample("bad_plate", key, url, f"plate is {plate.shape[1]}x{plate.shape[0]}, frames are {frames.shape[2]}x{frames.shape[1]}")
    return plate


def decode_sample(raw: dict) -> Sample:
    """A webdataset dict (``__key__``, ``__url__``, extension -> bytes) -> validated :class:`Sample`.

    Raises :class:`BadSample` (missing_key, bad_metadata, bad_keypoints, unreadable_video,
    frame_count_mismatch, bad_mask, bad_plate) naming the shard URL and the key.
    """
    key, url = raw.get("__key__", ""), raw.get("__url__", "?")
    if not key:
        raise BadSample("missing_key", "", url, "sample has no __key__")
    missing = [member for member in ("json", "pose.npy") if member not in raw]
    if missing:
        raise BadSample("missing_key", key, url, f"no {', '.join(missing)} member")
    meta = _decode_meta(raw, key, url)
    media = "mp4" if meta["kind"] == "video" else "png"
    if media not in raw:
        raise BadSample("missing_key", key, url, f"{meta['kind']} sample has no {media} member")
    keypoints = _decode_keypoints(raw, key, url)
    frames = _decode_frames(raw, meta["kind"], key, url)
    if not len(frames) == len(keypoints) == meta["num_frames"]:
        raise BadSample("frame_count_mismatch", key, url, f"{len(frames)} frames, {len(keypoints)} keypoint frames, num_frames {meta['num_frames']}")
    if frames.shape[1:3] != (meta["height"], meta["width"]):
        raise BadSample("bad_metadata", key, url, f"frames are {frames.shape[2]}x{frames.shape[1]}, metadata says {meta['width']}x{meta['height']}")
    mask = _decode_mask(raw["mask.npy"], frames, key, url) if "mask.npy" in raw else None
    plate = _decode_plate(raw["plate.png"], frames, key, url) if "plate.png" in raw else None
    digest = hashlib.sha1(raw[media] + raw["pose.npy"]).hexdigest()[:12]
    return Sample(key=key, frames=frames, keypoints=keypoints, meta=meta, person_mask=mask, plate=plate, digest=digest)


def _check_local(path: str) -> None:
    """Refuse URLs (``pipe:`` runs shell commands) and name missing shards."""
    if URL_SCHEME.match(path):
        raise ValueError(f"{path}: only local shard paths are read here (no URLs, never pipe:)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"shard {path} does not exist")


def iter_shard_samples(paths: Iterable[str | os.PathLike], counter: BadSampleCounter | None = None) -> Iterator[Sample]:
    """Decoded samples of local shards in order (one process), skipping and counting bad ones."""
    counter = BadSampleCounter() if counter is None else counter
    paths = [os.fspath(path) for path in paths]
    for path in paths:
        _check_local(path)
    for raw in wds.tariterators.tarfile_samples([{"url": path} for path in paths], handler=counter.handler):
        try:
            yield decode_sample(raw)
        except BadSample as bad:
            counter.handler(bad)


def bucket_of(raw: Mapping) -> str:
    """The bucket ``"HxWxT"`` of an encoded sample, from its metadata (the manifest counts samples per bucket)."""
    meta = json.loads(raw["json"])
    return f"{meta['height']}x{meta['width']}x{meta['num_frames']}"


def parse_bucket(bucket: str) -> tuple[int, int, int]:
    """(height, width, frames) of a manifest bucket ``"HxWxT"``; raises ValueError naming it."""
    try:
        height, width, frames = (int(part) for part in bucket.split("x"))
    except ValueError:
        raise ValueError(f"manifest bucket {bucket!r} is not HxWxT") from None
    return height, width, frames


def write_manifest(directory: str | os.PathLike, info: dict) -> Path:
    """Write ``directory/manifest.json`` atomically; returns its path."""
    return atomic_write_json(Path(directory) / MANIFEST_NAME, info)


def read_manifest(directory: str | os.PathLike) -> dict:
    """Read ``directory/manifest.json``; a missing one raises FileNotFoundError saying how to make it."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"no dataset manifest at {path}: create the synthetic dataset with "
            f"`python -m data.synthetic out={directory}` or point the config at an existing dataset directory"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exn:
        raise ValueError(f"{path}: manifest is not valid JSON ({exn})") from exn
